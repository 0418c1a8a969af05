"""Failover benchmark, Layer2 and VIP mode side by side: HTTP outage seen by a client when the
node answering for an IP fails.

    sudo .venv/bin/python bench/failover.py [--runs 20] [--modes layer2,vip]

Uses the lab with OpenELB installed by `openelb-lab demo` (or installs it): the seed's
`layer2-svc` and `vip-svc`. A prober in the client namespace opens a new TCP connection and sends
an HTTP GET every 10 ms; for each failure kind the answering node (Layer2 owner, VRRP master) is
hit while probing, and the outage is the gap from the last success before the failure to the
first success after it. Kinds: SIGKILL of its speaker (the lab's kubelet restarts it, as for a
DaemonSet pod), its link going down, a power-off (both at once) and a graceful stop (SIGTERM).
Targets (issue 4): p50 <= 300 ms and p99 <= 1 s on SIGKILL and link loss, <= 100 ms on graceful
stop. Also printed: create-to-first-ARP-answer latency for new Layer2 Services.

In VIP mode a SIGKILL alone leaves the address in the node's kernel (it still answers and
forwards: no outage, and the restarted speaker removes it); power-off is the failure that counts.

`--peer metallb` then measures MetalLB's Layer2 mode the same way in the same run (`bench/metallb.py`:
built from the Go module proxy on first use, run out of cluster with its defaults): OpenELB's
speakers are stopped first (their DaemonSet removed, so never two load balancers answer), MetalLB
serves a Service over the same Pods, the same four failures hit its answering node with the same
prober, and afterwards MetalLB is removed and OpenELB's manifest applied again. The prober keeps
probing while the Service fails (up to 30 s), so slow failovers are measured, not cut off.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Service

from handover import speaker_pid, stop_openelb_speakers
from openelb.kube.client import sync_client
from openelb_lab import install, lab, netns, topology, workloads
from openelb_lab.components import Paths
from openelb_lab.plan import LabPlan
from report import print_comparison, print_outages

PROBER = str(Path(__file__).with_name("prober.py"))
PROBE_MIN, PROBE_MAX = 3.0, 30.0  # seconds: the prober's window, stretched while the Service fails
METALLB_POOL = "198.18.0.240-198.18.0.250"  # outside every seed Eip
KINDS = ("sigkill", "link-down", "power-off", "graceful")


def arp_owner(client_ns: str, ip: str, macs: dict[str, str], wait: float = 1.0) -> str | None:
    out = subprocess.run(
        netns.exec_argv(client_ns, ["arping", "-c", "1", "-w", str(wait), "-I", "eth0", ip]),
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    for word in out.replace("(", " ").split():
        if word.lower() in macs:
            return macs[word.lower()]
    return None


def path_owner(client_ns: str, ip: str, macs: dict[str, str]) -> str | None:
    """The node the client actually sends to: its neighbour entry for `ip` (every node's
    kube-proxy forwards the IP, so only the client's neighbour table decides the path)."""
    out = subprocess.run(
        netns.exec_argv(client_ns, ["ip", "neigh", "show", ip]), capture_output=True, text=True, check=False
    ).stdout.split()
    if "lladdr" in out and out[-1] in ("REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT"):
        return macs.get(out[out.index("lladdr") + 1].lower())
    return None


def arp_owners(client_ns: str, ip: str, macs: dict[str, str]) -> set[str]:
    """Every node that answered three ARP requests for `ip` (two after a partition heals is the
    split brain a failover benchmark must not start from)."""
    out = subprocess.run(
        netns.exec_argv(client_ns, ["arping", "-c", "3", "-w", "2", "-I", "eth0", ip]),
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    words = out.replace("(", " ").replace("[", " ").replace("]", " ").split()
    return {macs[w.lower()] for w in words if w.lower() in macs}


def outage(probed: dict[str, list[float]], injected: float) -> float:
    """The outage of one failure (ms): from the last successful probe started before it was in
    place to the first successful probe started after; infinite when none succeeded inside the prober's window.
    Failures after that first success are left out: with a Pod behind the cut node (and no
    node-lifecycle controller in the lab to drop it) a share of later probes fails whatever the
    load balancer does."""
    oks = probed["oks"]
    before = [t for t in oks if t <= injected]
    after = [t for t in oks if t > injected]
    if not before or not after:
        return float("inf")
    return (after[0] - before[-1]) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--creates", type=int, default=10, help="Services for create-to-first-ARP latency")
    parser.add_argument("--modes", default="layer2,vip", help="comma-separated: layer2, vip")
    parser.add_argument("--peer", choices=["metallb"], help="also measure this peer's Layer2 mode, after ours")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (the lab)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # run the finally blocks: links back up
    paths = Paths(lab.state_dir())
    plan = lab.load_plan(paths) if lab.is_healthy(paths) else lab.up(3)
    assert plan is not None
    client = sync_client(paths.kubeconfig("admin"), field_manager="openelb-bench")
    install.install(client)
    seed = Path(__file__).resolve().parents[1] / "examples" / "seed"
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.peer and "layer2" not in modes:
        sys.exit("--peer compares Layer2 mode: include layer2 in --modes")
    manifests = ["layer2-deployment.yaml"]
    manifests += ["layer2-eip.yaml", "layer2-svc.yaml"] if "layer2" in modes else []
    manifests += ["vip-eip.yaml", "vip-svc.yaml"] if "vip" in modes else []
    for name in manifests:
        for doc in yaml.safe_load_all((seed / name).read_text()):
            if doc["kind"] != "Eip":
                doc["metadata"].setdefault("namespace", "default")
            workloads.apply(client, doc)
    macs: dict[str, str] = {}
    for node in plan.nodes:
        out = subprocess.run(
            netns.exec_argv(node.netns, ["cat", "/sys/class/net/eth0/address"]),
            capture_output=True,
            text=True,
            check=True,
        )
        macs[out.stdout.strip().lower()] = node.name
    client_ns = plan.client.netns
    results: dict[str, list[float]] = {}
    first_arp: dict[str, list[float]] = {}
    for mode in modes:
        ip = workloads.external_ip(client, "default", f"{mode}-svc")
        workloads.poll("an ARP answer", lambda ip=ip: arp_owner(client_ns, ip, macs), 30)
        for kind in KINDS:
            results[f"{mode} {kind}"] = failover_runs(
                plan, ip, macs, kind, args.runs, pid_of=lambda node: speaker_pid(plan, node)
            )
    if "layer2" in modes:
        first_arp["openelb"] = create_to_first_arp(client, client_ns, macs, args.creates, make=openelb_service)
    if args.peer == "metallb":
        peer, peer_arp = metallb_runs(client, plan, paths.kubeconfig("admin"), macs, args)
        results.update(peer)
        first_arp["metallb"] = peer_arp
    print()
    print_outages("failure", results)
    print("targets: p50 <= 300 ms, p99 <= 1000 ms (SIGKILL, link loss, power-off); <= 100 ms graceful")
    for name, vals in first_arp.items():
        if vals:
            fa = sorted(vals)
            print(f"create-to-first-ARP-answer {name}: p50 {statistics.median(fa):.0f} ms, max {fa[-1]:.0f} ms "
                  f"({len(fa)} Services)")  # fmt: skip
    if args.peer:
        print()
        print_comparison(
            "layer2 failure",
            {k: (results[f"layer2 {k}"], results[f"{args.peer} {k}"]) for k in KINDS},
            ("openelb", args.peer),
        )


def metallb_runs(
    client: Any, plan: LabPlan, kubeconfig: Path, macs: dict[str, str], args: argparse.Namespace
) -> tuple[dict[str, list[float]], list[float]]:
    """MetalLB's Layer2 mode under the same failures, then OpenELB's speakers back."""
    from metallb import MetalLB, build, service, version  # noqa: PLC0415 - bench-only

    bins = build()
    print(f"MetalLB {version(bins)}: stopping OpenELB's speakers, starting MetalLB (its defaults, untuned)")
    stop_openelb_speakers(client, plan)
    results: dict[str, list[float]] = {}
    first_arp: list[float] = []
    try:
        with MetalLB(client, plan, kubeconfig, [METALLB_POOL], speakers=True, bins=bins) as mlb:
            workloads.apply(client, service("metallb-svc", "default", "layer2-openelb"))
            ip = workloads.external_ip(client, "default", "metallb-svc")
            workloads.poll("MetalLB's ARP answer", lambda: arp_owner(plan.client.netns, ip, macs), 60)
            for kind in KINDS:
                results[f"metallb {kind}"] = failover_runs(plan, ip, macs, kind, args.runs, pid_of=mlb.speaker_pid)
            client.delete(Service, "metallb-svc", namespace="default")

            def metallb_service(i: int, want: str) -> dict[str, Any]:
                svc = service(f"arp-{i}", "default", "layer2-openelb")
                svc["metadata"]["annotations"] = {"metallb.io/loadBalancerIPs": want}
                return svc

            base = int(METALLB_POOL.split("-", maxsplit=1)[0].rsplit(".", 1)[1])
            first_arp = create_to_first_arp(
                client, plan.client.netns, macs, min(args.creates, 10), make=metallb_service, first=base + 1
            )
            print(f"MetalLB speaker restarts by the runner: {mlb.restarts or 'none'}")
    finally:
        with contextlib.suppress(ApiError):
            client.delete(Service, "metallb-svc", namespace="default")
        print("MetalLB removed; OpenELB's manifest applied again")
        install.install(client)
    return results, first_arp


def failover_runs(
    plan: LabPlan, ip: str, macs: dict[str, str], kind: str, runs: int, *, pid_of: Callable[[str], int | None]
) -> list[float]:
    """Outages (ms) of `runs` failures of one kind of the node answering for `ip`; `pid_of(node)`
    is the answering implementation's speaker on that node."""
    client_ns = plan.client.netns
    outages: list[float] = []
    for run in range(runs):
        workloads.poll("a single owner", lambda: len(arp_owners(client_ns, ip, macs)) == 1, 120, interval=1.0)
        subprocess.run(
            netns.exec_argv(client_ns, ["curl", "-s", "--max-time", "1", f"http://{ip}/"]),
            capture_output=True,
            check=False,
        )
        owner = path_owner(client_ns, ip, macs) or arp_owner(client_ns, ip, macs)
        assert owner is not None
        node = plan.node(owner)
        prober = subprocess.Popen(
            netns.exec_argv(client_ns, [sys.executable, PROBER, ip, str(PROBE_MIN), str(PROBE_MAX)]),
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        try:
            if kind in ("sigkill", "power-off", "graceful"):
                pid = pid_of(owner)
                if pid:
                    os.kill(pid, signal.SIGTERM if kind == "graceful" else signal.SIGKILL)
            if kind in ("link-down", "power-off"):
                topology.set_node_link(plan, node, up=False)
            # Taken once the failure is in place (CLOCK_MONOTONIC: the prober's clock too): a probe
            # started after it cannot have used the failed path.
            injected = time.monotonic()
            probed, _ = prober.communicate(timeout=PROBE_MAX + 30)
        finally:  # also when the run is interrupted: a node left cut off would skew every later run
            if kind in ("link-down", "power-off"):
                topology.set_node_link(plan, node, up=True)
            if prober.poll() is None:
                prober.kill()
        outages.append(outage(json.loads(probed), injected))
        time.sleep(3.0)  # container restart / link back, then a single owner again
        print(f"  {ip} {kind:9} run {run + 1:>2}/{runs}: outage {outages[-1]:7.0f} ms", flush=True)
    return outages


def openelb_service(i: int, want: str) -> dict[str, Any]:
    return workloads.service(
        f"arp-{i}",
        "default",
        "layer2-openelb",
        type_="LoadBalancer",
        dual_stack=False,
        annotations={"lb.kubesphere.io/v1alpha1": "openelb", "eip.openelb.kubesphere.io/v1alpha1": want},
    )


def create_to_first_arp(
    client: Any,
    client_ns: str,
    macs: dict[str, str],
    creates: int,
    *,
    make: Callable[[int, str], dict[str, Any]],
    first: int = 201,
) -> list[float]:
    """Milliseconds from sending a Service's create to the first ARP answer for the IP it asked for."""
    first_arp = []
    for i in range(creates):
        want = f"198.18.0.{first + i}"
        t0 = time.monotonic()
        workloads.apply(client, make(i, want))
        workloads.poll(f"ARP for {want}", lambda w=want: arp_owner(client_ns, w, macs, 0.05), 20, interval=0.0)
        first_arp.append((time.monotonic() - t0) * 1000)
        client.delete(Service, f"arp-{i}", namespace="default")
    return first_arp


if __name__ == "__main__":
    main()
