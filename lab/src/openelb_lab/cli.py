"""`openelb-lab`: the lab's own command line (the product's `openelb` has no lab in it)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from openelb_lab import lab
from openelb_lab.binaries import MissingBinaries
from openelb_lab.components import Paths
from openelb_lab.lab import LabError
from openelb_lab.netns import LabCommandError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="openelb-lab", description="a local Kubernetes lab for OpenELB: control plane + emulated nodes in netns"
    )
    cmds = p.add_subparsers(dest="lab_cmd", required=True)
    up = cmds.add_parser("up", help="start the lab (idempotent)")
    up.add_argument("--nodes", type=int, default=3, help="number of emulated nodes (default 3)")
    up.add_argument("--proxy-mode", choices=("nftables", "iptables"), default="nftables")
    up.add_argument(
        "--full-nodes", type=int, default=3,
        help="nodes beyond this many are light: Node + namespace on the LAN + agent, no kube-proxy, no Pods",
    )  # fmt: skip
    up.add_argument(
        "--runtime", choices=("image", "checkout"), default=None,
        help="OpenELB's Pods run the OCI image under runc (default: what users run), or this "
        "checkout's Python (no image build, for quick iterations on the code); default: "
        "$OPENELB_LAB_RUNTIME, else image",
    )  # fmt: skip
    cmds.add_parser("down", help="stop and remove everything the lab created")
    st = cmds.add_parser("status", help="show components and nodes")
    st.add_argument("-o", "--output", choices=("text", "json"), default="text")
    cmds.add_parser("kubeconfig", help="print the path of the admin kubeconfig")
    ex = cmds.add_parser("exec", help="run a command in a lab host's namespace: exec HOST -- CMD...")
    ex.add_argument("host", help="node-N, client, router or remote")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    demo = cmds.add_parser(
        "demo",
        help="the seed walkthrough: NodePort check, OpenELB from deploy/openelb.yaml, Layer2 and BGP, ping, curl",
    )
    demo.add_argument("--namespace", default="demo", help="namespace of the NodePort check")
    agent = cmds.add_parser("agent", help=argparse.SUPPRESS)
    agent.add_argument("--node", required=True)
    return p


def run(args: argparse.Namespace) -> int:
    cmd = args.lab_cmd
    if cmd == "up":
        lab.up(args.nodes, args.proxy_mode, full_nodes=args.full_nodes, runtime=args.runtime)
    elif cmd == "down":
        lab.down()
    elif cmd == "status":
        st = lab.status()
        if args.output == "json":
            print(json.dumps(st, indent=2))
        else:
            print(lab.format_status(st))
        return 0 if st.get("up") else 3
    elif cmd == "kubeconfig":
        print(Paths(lab.state_dir()).kubeconfig("admin"))
    elif cmd == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        lab.exec_in(args.host, argv)
    elif cmd == "demo":
        from openelb_lab import demo

        return demo.run(args.namespace)
    elif cmd == "agent":
        from openelb_lab import agent

        agent.main(lab.state_dir(), args.node)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        sys.exit(run(args))
    except KeyboardInterrupt:
        sys.exit(130)
    except (LabError, MissingBinaries, LabCommandError, KeyError) as exc:
        print(f"openelb-lab: error: {exc}", file=sys.stderr)
        sys.exit(2)
