"""The `openelb` command line: argument parsing only; each subcommand calls one entry function."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from openelb import __version__, goflags


def _openelb_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from openelb.api import names

    c = sub.add_parser("controller", help="IPAM controller, admission webhook and metrics")
    c.add_argument("--kubeconfig", help="default: $KUBECONFIG, then the in-cluster service account")
    c.add_argument("--namespace", help="namespace of the leader Lease and webhook Secret (env OPENELB_NAMESPACE)")
    c.add_argument("--lb-class", default=names.DEFAULT_LB_CLASS, help="spec.loadBalancerClass served")
    c.add_argument(
        "--serve-unannotated",
        action="store_true",
        help="also serve LoadBalancer Services with neither class nor OpenELB annotation",
    )
    goflags.add_bool(c, "--leader-elect", True, "Lease-based leader election (bare --leader-elect: true)")
    c.add_argument("--metrics-addr", default="0.0.0.0:50052")
    c.add_argument("--webhook-addr", default="0.0.0.0:9443", help="empty to disable the webhook")
    c.add_argument("--webhook-port", type=int, help="Go OpenELB's: the webhook on all addresses at this port")
    c.add_argument(
        "--webhook-cert-dir",
        help="a certificate mounted here (tls.crt, tls.key) is served as is (default: controller-runtime's "
        "/tmp/k8s-webhook-server/serving-certs, as Go OpenELB); else one is made in --webhook-secret",
    )
    c.add_argument("--readiness-addr", help="Go OpenELB's (unused there too); accepted")
    goflags.add_klog(c)
    c.add_argument("--webhook-ip", action="append", default=[], help="extra IP SAN for the webhook certificate")
    c.add_argument("--webhook-service", default="openelb-controller", help="the Service in front of the webhook")
    c.add_argument("--webhook-secret", default="openelb-admission", help="Secret holding the webhook certificate")
    c.add_argument("--webhook-config", default="openelb-admission", help="ValidatingWebhookConfiguration to patch")
    c.add_argument("--workers", type=int, default=16, help="concurrent reconciles (API round trips overlap)")
    c.add_argument("--field-manager", default="openelb-controller", help=argparse.SUPPRESS)
    c.add_argument(
        "--node-proxy-image", default=None,
        help="image of NodeProxy's proxy Pods (default: env OPENELB_IMAGE, else docker.io/openelb/openelb-python)",
    )  # fmt: skip
    c.add_argument(
        "--memberlist-secret", default=names.MEMBERLIST_SECRET,
        help="Secret with the speakers' heartbeat key, created with a random key if missing ('' = never)",
    )  # fmt: skip
    sub.add_parser("crds", help="print the CustomResourceDefinitions (YAML)")
    st = sub.add_parser("status", help="pools, Services, IPs, announcing nodes, pending reasons")
    st.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    st.add_argument("--kubeconfig")
    st.add_argument("--lb-class", default=names.DEFAULT_LB_CLASS)
    sub.add_parser("forward", help="NodeProxy's proxy: relay this node's ports to a Service (`forward --help`)")
    sp = sub.add_parser("speaker", help="announce owned IPs from this node (Layer2: ARP/NDP; BGP)")
    sp.add_argument("--node-name", default=os.environ.get("NODE_NAME"), help="this node (env NODE_NAME)")
    sp.add_argument("--kubeconfig")
    goflags.add_bool(sp, "--enable-layer2", True, "Layer2 mode (ARP/NDP)")
    goflags.add_bool(sp, "--enable-bgp", True, "BGP mode (BgpConf/BgpPeer)")
    goflags.add_bool(
        sp, "--enable-keepalived-vip", True,
        "VIP mode (VRRPv3, in-process: no keepalived runs; Go OpenELB's flag, default false there)",
    )  # fmt: skip
    sp.add_argument("--bind-addr", default="0.0.0.0", help="address of the heartbeat socket (Go: memberlist's)")  # noqa: S104
    sp.add_argument("--secret", help="heartbeat key(s), one per line, when MEMBER_LIST_SECRET is unset")
    sp.add_argument(
        "--secret-name",
        help="Secret (in OPENELB_NAMESPACE) with the heartbeat keys, read at start and polled for rotation; "
        "used when neither MEMBER_LIST_SECRET nor --secret is given",
    )
    sp.add_argument("--secret-poll", type=float, default=10.0, help="seconds between reads of --secret-name")
    sp.add_argument(
        "--api-hosts", default="",
        help="serve GoBGP's gRPC API, read-only, here (Go OpenELB: `:50051`, every address; "
        "`127.0.0.1:50051` for the probe and kubectl exec only); empty: off",
    )  # fmt: skip
    sp.add_argument(
        "--daemonset", default=os.environ.get("OPENELB_DAEMONSET", ""),
        help="the speakers' DaemonSet (env OPENELB_DAEMONSET; the chart sets it): when it is gone at "
        "shutdown (an uninstall), BGP sessions close without graceful restart, so routers withdraw at "
        "once instead of keeping the routes for restartTime; empty: graceful restart as configured",
    )  # fmt: skip
    sp.add_argument("--log-path", help="Go OpenELB's keepalived log file; accepted (no keepalived runs)")
    sp.add_argument("--keepalived-args", help="Go OpenELB's extra keepalived args; accepted (no keepalived runs)")
    goflags.add_klog(sp)
    sp.add_argument("--bgp-status-interval", type=float, default=30.0, help="seconds between BGP status writes")
    sp.add_argument("--bind-port", type=int, default=7946, help="UDP port of speaker heartbeats")
    sp.add_argument("--heartbeat-interval", type=float, default=0.05, help="seconds between heartbeats")
    sp.add_argument("--dead-after", type=float, default=0.2, help="seconds without heartbeat = dead")
    sp.add_argument("--metrics-addr", default="0.0.0.0:50053", help="Prometheus metrics; empty to disable")
    sp.add_argument(
        "--check-interval", type=float, default=600.0,
        help="seconds between full recomputes compared with the incremental plan (0: never)",
    )  # fmt: skip


def _configure_logging(args: argparse.Namespace, notes: list[str]) -> None:
    import logging

    from openelb.runtime import LOG_FORMAT

    logging.basicConfig(level=goflags.log_level(args), format=LOG_FORMAT)
    log = logging.getLogger("openelb.flags")
    for note in notes + goflags.klog_notes(args):
        log.info("%s", note)


def controller_options(args: argparse.Namespace) -> tuple[Any, list[str]]:
    """The controller's options from its arguments (ours and Go OpenELB's), and the notes on
    Go flags that have no effect here."""
    from openelb.controller.main import ControllerOptions

    notes = []
    webhook_addr = args.webhook_addr
    if args.webhook_port is not None:
        webhook_addr = f"0.0.0.0:{args.webhook_port}"
    if args.readiness_addr:
        notes.append(
            f"--readiness-addr={args.readiness_addr}: accepted (unused in Go OpenELB too); "
            "/readyz is served on --metrics-addr"
        )
    opts = ControllerOptions(
        kubeconfig=args.kubeconfig,
        lb_class=args.lb_class,
        serve_unannotated=args.serve_unannotated,
        leader_elect=args.leader_elect,
        metrics_addr=args.metrics_addr,  # `:50052`, as Go writes it, is all addresses (runtime.split_addr)
        webhook_addr=webhook_addr,
        webhook_ips=tuple(args.webhook_ip),
        webhook_service=args.webhook_service,
        webhook_secret=args.webhook_secret,
        webhook_config=args.webhook_config,
        workers=args.workers,
        memberlist_secret=args.memberlist_secret,
        field_manager=args.field_manager,
    )
    if args.webhook_cert_dir is not None:
        opts.webhook_cert_dir = args.webhook_cert_dir
    image = args.node_proxy_image or os.environ.get("OPENELB_IMAGE")
    if image:
        opts.node_proxy_image = image
    if args.namespace:
        opts.namespace = args.namespace
    return opts, notes


def _run_controller(args: argparse.Namespace) -> int:
    from openelb.controller.main import main

    opts, notes = controller_options(args)
    _configure_logging(args, notes)
    main(opts)
    return 0


def speaker_options(args: argparse.Namespace) -> tuple[Any, list[str]]:
    from openelb.api import names
    from openelb.kube.memberlist import parse_keys
    from openelb.speaker.main import SpeakerOptions

    notes = []
    for flag, value in (("--log-path", args.log_path), ("--keepalived-args", args.keepalived_args)):
        if value:
            notes.append(f"{flag}={value}: accepted; no keepalived runs (VIP mode is VRRP in the speaker)")

    keys = parse_keys(os.environ.get("MEMBER_LIST_SECRET") or args.secret or "")
    if not keys and not args.secret_name:
        keys = (names.PUBLISHED_HEARTBEAT_KEY.encode(),)  # Go OpenELB's default; warned of at start
    opts = SpeakerOptions(
        node=args.node_name,
        kubeconfig=args.kubeconfig,
        keys=keys,
        secret_name=None if keys else args.secret_name,
        secret_poll=args.secret_poll,
        api_hosts=args.api_hosts,
        namespace=os.environ.get("OPENELB_NAMESPACE") or names.DEFAULT_NAMESPACE,
        port=args.bind_port,
        bind_addr=args.bind_addr,
        interval=args.heartbeat_interval,
        dead_after=args.dead_after,
        enable_layer2=args.enable_layer2,
        enable_vip=args.enable_keepalived_vip,
        enable_bgp=args.enable_bgp,
        bgp_status_interval=args.bgp_status_interval,
        metrics_addr=args.metrics_addr,  # `:50052`, as Go writes it, is all addresses (runtime.split_addr)
        check_interval=args.check_interval,
        daemonset=args.daemonset,
    )
    return opts, notes


def _run_speaker(args: argparse.Namespace) -> int:
    from openelb.speaker.main import main

    if not args.node_name:
        print("openelb speaker: --node-name or NODE_NAME is required", file=sys.stderr)
        return 2
    opts, notes = speaker_options(args)
    _configure_logging(args, notes)
    main(opts)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="openelb", description="OpenELB: load balancer IPs for bare-metal Kubernetes")
    p.add_argument("--version", action="version", version=f"openelb {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _openelb_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["forward"]:  # its own flags, parsed by its own module (no Kubernetes imports)
        from openelb.nodeproxy import forward

        sys.exit(forward.main(argv[1:]))
    if argv[:1] == ["lab"]:
        sys.exit("openelb: the lab is its own command now (package openelb-lab): openelb-lab " + " ".join(argv[1:]))
    args = parser().parse_args(argv)
    try:
        if args.command == "controller":
            sys.exit(_run_controller(args))
        if args.command == "speaker":
            sys.exit(_run_speaker(args))

        if args.command == "status":
            from openelb import status as status_view
            from openelb.controller.servicepolicy import Policy
            from openelb.kube.client import sync_client

            snapshot = status_view.collect(sync_client(args.kubeconfig), Policy(args.lb_class))
            print(status_view.render(snapshot, args.output))
        if args.command == "crds":
            from openelb.api.crds import render

            print(render(), end="")
    except KeyboardInterrupt:
        sys.exit(130)
    except KeyError as exc:
        print(f"openelb: error: {exc}", file=sys.stderr)
        sys.exit(2)


def _go_version(name: str) -> bool:
    """Go OpenELB's `openelb-controller version` / `openelb-speaker version` subcommand."""
    if sys.argv[1:] == ["version"]:
        print(f"{name} version {__version__} (OpenELB reimplemented in Python)")
        return True
    return False


def controller_main() -> None:
    """`openelb-controller ARGS`: Go OpenELB's executable name (`command: [openelb-controller]` in
    its deploy/openelb.yaml), the same as `openelb controller ARGS`."""
    if not _go_version("openelb-controller"):
        main(["controller", *sys.argv[1:]])


def speaker_main() -> None:
    """`openelb-speaker ARGS`: Go OpenELB's executable name, the same as `openelb speaker ARGS`."""
    if not _go_version("openelb-speaker"):
        main(["speaker", *sys.argv[1:]])
