"""BGP benchmarks (issue 5).

    sudo .venv/bin/python bench/bgp.py routes   [--count 10000]
    sudo .venv/bin/python bench/bgp.py failover [--runs 20] [--runs-without-bfd 5]

`routes`: two network namespaces joined by a veth, BIRD 2 in one, the speaker's BGP engine in the
other. With the session Established, 10,000 /32s are announced (one ADD-PATH path each) and then
withdrawn; the figure is the time until BIRD holds (drops) all of them, polled with birdc.
Baseline in the same run: ExaBGP 5 (the Python BGP daemon) announcing and withdrawing the same
routes through its API in bulk (500 prefixes per command). Also printed: the speaker's RSS with the
routes announced. Target: <= 0.5 s each way.

`failover`: the lab with OpenELB installed (`openelb-lab demo`): BIRD in the router namespace routes
the BGP Service over every node (ECMP, flows hashed on ports). A prober on the `remote` host opens
a new connection every 10 ms; a node's link is cut, and the outage is the time from the cut until
the last failed probe. With BFD 100 ms x 3 (target p99 <= 0.5 s), then without BFD, where the
router notices only at the hold timer (9 s here, BgpPeer.spec.timers; 90 s by default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod, Service
from lightkube.types import PatchType

from openelb.kube.client import sync_client
from openelb.kube.resources import BgpPeer
from openelb.protocols.bgp.session import parse_prefix
from openelb.speaker.bgp import config as cfgmod
from openelb.speaker.bgp.backend import InProcessBackend
from openelb_lab import install, lab, router, topology, workloads
from openelb_lab.components import Paths
from openelb_lab.plan import LabPlan, NodePlan
from report import print_outages

SPK, RTR = "obench-spk", "obench-rtr"
SPK_IP, RTR_IP = "192.0.2.1", "192.0.2.2"


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=check).stdout


def prefixes(count: int) -> list[str]:
    base = int.from_bytes(bytes([198, 18, 128, 0]), "big")
    return [".".join(str(b) for b in (base + i).to_bytes(4, "big")) for i in range(count)]


# ---- routes: the speaker side (runs inside the SPK namespace) ---------------------------------


async def speaker_role(count: int) -> None:
    g = cfgmod.global_config({"as": 65001, "listenPort": -1}, SPK_IP, {})
    peer = cfgmod.peer_config("r", {"conf": {"neighborAddress": RTR_IP, "peerAs": 65000}})
    backend = InProcessBackend({4: SPK_IP})
    await backend.configure(g, {peer.address: peer})
    while not any(s.state == "ESTABLISHED" for s in backend.status()):  # noqa: ASYNC110 - a bench
        await asyncio.sleep(0.01)
    before = rss_kib()
    routes = {parse_prefix(ip): (SPK_IP,) for ip in prefixes(count)}
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    for command in ("announce", "withdraw"):
        assert (await reader.readline()).decode().strip() == command
        t0 = time.monotonic()
        backend.set_routes(routes if command == "announce" else {})
        rss = rss_kib()
        print(json.dumps({"t0": t0, "rss_kib": rss, "before_kib": before}), flush=True)
    await reader.readline()
    await backend.close(False)


def rss_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))


# ---- routes: the harness ----------------------------------------------------------------------


def netns_up() -> None:
    sh("ip", "netns", "add", SPK)
    sh("ip", "netns", "add", RTR)
    sh("ip", "link", "add", "bspk", "netns", SPK, "type", "veth", "peer", "name", "brtr", "netns", RTR)
    sh("ip", "-n", SPK, "addr", "add", f"{SPK_IP}/24", "dev", "bspk")
    sh("ip", "-n", RTR, "addr", "add", f"{RTR_IP}/24", "dev", "brtr")
    for ns, dev in ((SPK, "bspk"), (RTR, "brtr")):
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "set", dev, "up")


def netns_down() -> None:
    for ns in (SPK, RTR):
        for pid in sh("ip", "netns", "pids", ns, check=False).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "netns", "del", ns, check=False)


def start_bird(workdir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    conf, sock = workdir / "bird.conf", workdir / "bird.ctl"
    conf.write_text(
        f"router id {RTR_IP};\nprotocol device {{}}\n"
        f"protocol bgp spk {{ local {RTR_IP} as 65000; neighbor {SPK_IP} as 65001; passive on;\n"
        "  ipv4 { import all; export none; add paths rx; }; }\n"
    )
    proc = subprocess.Popen(["ip", "netns", "exec", RTR, "bird", "-f", "-c", str(conf), "-s", str(sock)])
    for _ in range(200):
        if sock.exists():
            break
        time.sleep(0.02)
    return proc, sock


def bird_count(sock: Path) -> int:
    out = sh("birdc", "-s", str(sock), "show", "route", "count", check=False)
    for line in out.splitlines():
        words = line.split()
        if "routes" in words and words[0].isdigit():
            return int(words[0])
    return 0


def wait_count(sock: Path, wanted: int, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bird_count(sock) == wanted:
            return time.monotonic()
        time.sleep(0.002)
    raise TimeoutError(f"BIRD never held {wanted} routes")


def run_ours(sock: Path, count: int) -> dict[str, float]:
    child = subprocess.Popen(
        ["ip", "netns", "exec", SPK, sys.executable, __file__, "speaker-role", "--count", str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin and child.stdout
    try:
        assert child.stdout.readline().strip() == "ready"
        out: dict[str, float] = {}
        for command, wanted in (("announce", count), ("withdraw", 0)):
            child.stdin.write(command + "\n")
            child.stdin.flush()
            info = json.loads(child.stdout.readline())
            out[command] = wait_count(sock, wanted) - info["t0"]
            if command == "announce":
                out["rss_mib"] = info["rss_kib"] / 1024
                out["rss_routes_mib"] = (info["rss_kib"] - info["before_kib"]) / 1024
        child.stdin.write("done\n")
        child.stdin.flush()
        child.wait(10)
        return out
    finally:
        if child.poll() is None:
            child.kill()


EXABGP_API = r"""
import sys, time
prefixes, fifo = open(sys.argv[1]).read().split(","), sys.argv[2]
for command in ("announce", "withdraw"):
    with open(fifo) as f:
        f.readline()  # the harness says go
    for i in range(0, len(prefixes), 500):
        nlri = " ".join(p + "/32" for p in prefixes[i : i + 500])
        sys.stdout.write(f"{command} attributes next-hop __NH__ nlri {nlri}\n")
    sys.stdout.flush()
while True:
    time.sleep(1)
"""


def open_fifo(fifo: Path, timeout: float = 30) -> int:
    """Open the feeder's FIFO for writing once the feeder reads it (never block forever)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError("the ExaBGP feeder process did not start") from None
            time.sleep(0.01)


def run_exabgp(sock: Path, count: int, workdir: Path) -> dict[str, float]:
    exabgp = Path(sys.executable).parent / "exabgp"
    fifo = workdir / "go"
    os.mkfifo(fifo)
    api = workdir / "api.py"
    api.write_text(EXABGP_API.replace("__NH__", SPK_IP))
    plist = workdir / "prefixes"
    plist.write_text(",".join(prefixes(count)))
    conf = workdir / "exabgp.conf"
    conf.write_text(
        f"process feeder {{ run {sys.executable} {api} {plist} {fifo}; encoder text; }}\n"
        f"neighbor {RTR_IP} {{ router-id {SPK_IP}; local-address {SPK_IP}; local-as 65001; peer-as 65000;\n"
        "  api { processes [ feeder ]; } }\n"
    )
    env = {**os.environ, "exabgp_daemon_user": "root", "exabgp_daemon_drop": "false", "exabgp_log_enable": "false"}
    stamps = workdir / "stamps"
    with stamps.open("w") as err:
        proc = subprocess.Popen(["ip", "netns", "exec", SPK, str(exabgp), str(conf)], env=env, stderr=err, stdout=err)
    try:
        deadline = time.monotonic() + 60
        while "Established" not in sh("birdc", "-s", str(sock), "show", "protocols", "spk", check=False):
            if time.monotonic() > deadline:
                raise TimeoutError("ExaBGP session not Established")
            time.sleep(0.05)
        out: dict[str, float] = {}
        for command, wanted in (("announce", count), ("withdraw", 0)):
            fd = open_fifo(fifo)
            t0 = time.monotonic()
            os.write(fd, b"go\n")
            os.close(fd)
            out[command] = wait_count(sock, wanted) - t0
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


def routes(count: int) -> None:
    netns_down()
    netns_up()
    bird: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="openelb-bench-bgp-") as tmp:
            for name, runner in (("openelb", "ours"), ("exabgp 5 (baseline)", "exabgp")):
                workdir = Path(tmp) / runner
                workdir.mkdir()
                bird, sock = start_bird(workdir)
                print(f"[{name}] announcing and withdrawing {count} routes to BIRD ...", flush=True)
                res = run_ours(sock, count) if runner == "ours" else run_exabgp(sock, count, workdir)
                rss = ""
                if "rss_mib" in res:
                    rss = f", speaker RSS {res['rss_mib']:.1f} MiB ({res['rss_routes_mib']:.1f} MiB for the routes)"
                print(f"[{name}] announce {res['announce']:.3f} s, withdraw {res['withdraw']:.3f} s{rss}", flush=True)
                bird.terminate()
                bird.wait(10)
                bird = None
        print("target: <= 0.5 s until BIRD holds / drops all routes")
    finally:
        if bird is not None:
            bird.kill()
        netns_down()


# ---- failover through the router ---------------------------------------------------------------

PROBER = str(Path(__file__).with_name("prober.py"))


METALLB_BGP_POOL = "198.18.2.240-198.18.2.250"  # routed by the router only; outside every Eip


def cut_runs(  # noqa: PLR0917 - one call per implementation, all of it varies
    plan: LabPlan, ip: str, victims: list[NodePlan], label: str, n_runs: int, seconds: float, ready: Callable[[], bool]
) -> list[float]:
    """Cut a victim node's link while the remote host probes `ip`: the outage is the time from
    the cut until the last failed probe. Each run starts once every node is a next hop again
    and `ready()` (sessions, BFD) holds."""
    outages = []
    for run in range(n_runs):
        workloads.poll("every node a next hop", lambda: router.kernel_next_hops(plan, ip) == hops(plan), 120, 0.05)
        workloads.poll("sessions ready", ready, 120)
        node = victims[run % len(victims)]
        prober = subprocess.Popen(
            ["ip", "netns", "exec", plan.remote.netns, sys.executable, PROBER, ip, str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        cut = time.monotonic()
        try:
            topology.set_node_link(plan, node, up=False)
            out = json.loads(prober.communicate(timeout=seconds + 30)[0])
        finally:  # a node left cut off would skew every later run
            topology.set_node_link(plan, node, up=True)
            if prober.poll() is None:
                prober.kill()
        late = [f for f in out["fails"] if f >= cut]
        outages.append((max(late) - cut + 0.01) * 1000 if late else 0.0)
        print(f"  {label}: run {run + 1:>2}/{n_runs}: {node.name} cut, outage {outages[-1]:6.0f} ms", flush=True)
    return outages


def v4_holds(bird: router.Bird) -> set[int]:
    """The hold times of the IPv4 sessions (the BgpPeer the benchmark edits; `_v6` is another)."""
    return {t for name, t in bird.hold_times().items() if not name.endswith("_v6")}


def hops(plan: LabPlan) -> set[str]:
    return {str(n.lan_v4) for n in plan.nodes}


def failover(runs: int, runs_without_bfd: int, peer: str | None = None) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # run the finally blocks: links back up
    paths = Paths(lab.state_dir())
    plan = lab.load_plan(paths)
    if plan is None or not lab.is_healthy(paths):
        sys.exit("the lab is not up with OpenELB: run scripts/demo (or openelb-lab up && openelb-lab demo)")
    client = sync_client(paths.kubeconfig("admin"), field_manager="openelb-bench")
    ip = workloads.external_ip(client, "default", "bgp-svc")
    bird = router.Bird.attach(plan, paths.state)
    # A node that also runs a backend pod loses that pod with its link, and kube-proxy keeps
    # sending to it until its endpoint goes: no load balancer hides that. Cut nodes without one.
    busy = {p.spec.nodeName for p in client.list(Pod, namespace="default", labels={"app": "bgp-openelb"}) if p.spec}
    victims = [n for n in plan.nodes if n.name not in busy]
    if not victims:
        sys.exit("every node runs a bgp-openelb pod: scale the lab to more nodes than replicas")
    results: dict[str, list[float]] = {}
    for label, bfd, n_runs in (("BFD 100 ms x 3", True, runs), ("no BFD, hold 9 s", False, runs_without_bfd)):
        spec = {"bfd": {"enabled": bfd}, "timers": {"config": {"holdTime": "90" if bfd else "9"}}}
        client.patch(BgpPeer, "router", {"spec": spec}, patch_type=PatchType.MERGE)
        bird.reconfigure(router.BirdOptions(bfd_ms=100 if bfd else 0))

        def ready(bfd: bool = bfd) -> bool:
            # Every session Established with the hold time under test: after the edit the
            # speakers restart their sessions, and a cut before that measures the old timers.
            up = all(bird.established().values()) and v4_holds(bird) == {90 if bfd else 9}
            return up and (not bfd or sum(v == "Up" for v in bird.bfd_sessions().values()) >= len(plan.nodes))

        results[label] = cut_runs(plan, ip, victims, label, n_runs, 3.0 if bfd else 15.0, ready)
    if peer == "metallb":
        results["metallb, hold 9 s"] = metallb_runs(client, plan, paths, bird, victims, n_runs=runs_without_bfd)
    client.patch(BgpPeer, "router", {"spec": {"bfd": {"enabled": True}, "timers": None}}, patch_type=PatchType.MERGE)
    bird.reconfigure(router.BirdOptions(bfd_ms=100))
    print()
    print_outages("router notices by", results)
    print("target: p99 <= 500 ms with BFD")
    if peer:
        ours = sorted(results["BFD 100 ms x 3"])[len(results["BFD 100 ms x 3"]) // 2]
        same = sorted(results["no BFD, hold 9 s"])[len(results["no BFD, hold 9 s"]) // 2]
        theirs = sorted(results["metallb, hold 9 s"])[len(results["metallb, hold 9 s"]) // 2]
        print(
            f"metallb p50 / openelb p50: {theirs / ours:.1f}x (openelb with BFD), {theirs / same:.1f}x (both without)"
        )


def metallb_runs(
    client: Any, plan: LabPlan, paths: Paths, bird: router.Bird, victims: list[NodePlan], *, n_runs: int
) -> list[float]:
    """MetalLB's native BGP mode (no BFD) to the same BIRD, the same node cuts; hold time 9 s as
    ours without BFD (its default is 90 s). OpenELB's speakers are removed first, restored after."""
    from handover import stop_openelb_speakers  # noqa: PLC0415 - bench-only
    from metallb import MetalLB, build, service, version  # noqa: PLC0415

    bins = build()
    print(f"MetalLB {version(bins)} native BGP: stopping OpenELB's speakers, starting MetalLB")
    stop_openelb_speakers(client, plan)
    bird.reconfigure(router.BirdOptions(bfd_ms=0, ipv6=False))
    peer = {
        "myASN": router.NODES_AS,
        "peerASN": router.ROUTER_AS,
        "peerAddress": plan.router.lan_v4,
        "holdTime": "9s",
    }
    try:
        with MetalLB(client, plan, paths.kubeconfig("admin"), [METALLB_BGP_POOL], speakers=True, bins=bins,
                     bgp_peer=peer):  # fmt: skip
            workloads.apply(client, service("metallb-bgp", "default", "bgp-openelb"))
            ip = workloads.external_ip(client, "default", "metallb-bgp")
            return cut_runs(
                plan,
                ip,
                victims,
                "metallb, hold 9 s",
                n_runs,
                15.0,
                lambda: all(bird.established().values()) and v4_holds(bird) == {9},
            )
    finally:
        with contextlib.suppress(ApiError):
            client.delete(Service, "metallb-bgp", namespace="default")
        bird.reconfigure(router.BirdOptions(bfd_ms=100))
        print("MetalLB removed; OpenELB's manifest applied again")
        install.install(client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("routes")
    r.add_argument("--count", type=int, default=10000)
    s = sub.add_parser("speaker-role")
    s.add_argument("--count", type=int, default=10000)
    f = sub.add_parser("failover")
    f.add_argument("--runs", type=int, default=20)
    f.add_argument("--runs-without-bfd", type=int, default=5)
    f.add_argument("--peer", choices=["metallb"], help="then MetalLB's native BGP mode, the same cuts")
    args = parser.parse_args()
    if args.what == "speaker-role":
        asyncio.run(speaker_role(args.count))
        return
    if os.geteuid() != 0:
        sys.exit("run as root (network namespaces)")
    if args.what == "routes":
        routes(args.count)
    else:
        failover(args.runs, args.runs_without_bfd, args.peer)


if __name__ == "__main__":
    main()
