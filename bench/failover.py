"""Failover benchmark, Layer2 and VIP mode side by side: HTTP outage seen by a client when the
node answering for an IP fails.

    sudo .venv/bin/python bench/failover.py [--runs 20] [--modes layer2,vip]

Uses the lab with OpenELB installed by `openelb lab demo` (or installs it): the seed's
`layer2-svc` and `vip-svc`. A prober in the client namespace opens a new TCP connection and sends
an HTTP GET every 10 ms; for each failure kind the answering node (Layer2 owner, VRRP master) is
hit while probing, and the outage is the gap from the last success before the failure to the
first success after it. Kinds: SIGKILL of its speaker (the lab's kubelet restarts it, as for a
DaemonSet pod), its link going down, a power-off (both at once) and a graceful stop (SIGTERM).
Targets (issue 4): p50 <= 300 ms and p99 <= 1 s on SIGKILL and link loss, <= 100 ms on graceful
stop. Also printed: create-to-first-ARP-answer latency for new Layer2 Services.

In VIP mode a SIGKILL alone leaves the address in the node's kernel (it still answers and
forwards: no outage, and the restarted speaker removes it); power-off is the failure that counts.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from lightkube.resources.core_v1 import Service
from report import print_outages

from openelb.kube.client import sync_client
from openelb.lab import install, lab, netns, topology, workloads
from openelb.lab.components import Paths
from openelb.lab.plan import LabPlan

PROBER = str(Path(__file__).with_name("prober.py"))


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


def speaker_pid(plan: LabPlan, node: str) -> int | None:
    """The speaker Pod's process on `node` (hostNetwork: it runs in the node's namespace; the lab's
    kubelet restarts it when it exits, as a DaemonSet pod's container)."""
    for pid in netns.netns_pids(plan.node(node).netns):
        with contextlib.suppress(OSError):
            if b"openelb\x00speaker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    return None


def outage(successes: list[float]) -> float:
    """One failure per run: the outage is the longest gap between two successful probes (ms)."""
    if len(successes) < 2:
        return float("inf")
    return max(b - a for a, b in itertools.pairwise(successes)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--creates", type=int, default=10, help="Services for create-to-first-ARP latency")
    parser.add_argument("--modes", default="layer2,vip", help="comma-separated: layer2, vip")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (the lab)")
    paths = Paths(lab.state_dir())
    plan = lab.load_plan(paths) if lab.is_healthy(paths) else lab.up(3)
    assert plan is not None
    client = sync_client(paths.kubeconfig("admin"), field_manager="openelb-bench")
    install.install(client)
    seed = Path(__file__).resolve().parents[1] / "examples" / "seed"
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
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
    for mode in modes:
        ip = workloads.external_ip(client, "default", f"{mode}-svc")
        workloads.poll("an ARP answer", lambda ip=ip: arp_owner(client_ns, ip, macs), 30)
        for kind in ("sigkill", "link-down", "power-off", "graceful"):
            results[f"{mode} {kind}"] = failover_runs(plan, ip, macs, kind, args.runs)
    if "layer2" in modes:
        create_to_first_arp(client, client_ns, macs, args.creates)
    print()
    print_outages("failure", results)
    print("targets: p50 <= 300 ms, p99 <= 1000 ms (SIGKILL, link loss, power-off); <= 100 ms graceful")


def failover_runs(plan: LabPlan, ip: str, macs: dict[str, str], kind: str, runs: int) -> list[float]:
    """Outages (ms) of `runs` failures of one kind of the node answering for `ip`."""
    client_ns = plan.client.netns
    outages: list[float] = []
    for run in range(runs):
        workloads.poll("a stable owner", lambda: arp_owner(client_ns, ip, macs), 30)
        subprocess.run(
            netns.exec_argv(client_ns, ["curl", "-s", "--max-time", "1", f"http://{ip}/"]),
            capture_output=True,
            check=False,
        )
        owner = path_owner(client_ns, ip, macs) or arp_owner(client_ns, ip, macs)
        assert owner is not None
        node = plan.node(owner)
        prober = subprocess.Popen(
            netns.exec_argv(client_ns, [sys.executable, PROBER, ip, "3.0"]), stdout=subprocess.PIPE, text=True
        )
        time.sleep(1.0)
        if kind in ("sigkill", "power-off", "graceful"):
            pid = speaker_pid(plan, owner)
            if pid:
                os.kill(pid, signal.SIGTERM if kind == "graceful" else signal.SIGKILL)
        if kind in ("link-down", "power-off"):
            topology.set_node_link(plan, node, up=False)
        probed, _ = prober.communicate(timeout=30)
        outages.append(outage(json.loads(probed)["oks"]))
        if kind in ("link-down", "power-off"):
            topology.set_node_link(plan, node, up=True)
        time.sleep(3.0)  # container restart / link back, then a single owner again
        print(f"  {ip} {kind:9} run {run + 1:>2}/{runs}: outage {outages[-1]:7.0f} ms", flush=True)
    return outages


def create_to_first_arp(client: Any, client_ns: str, macs: dict[str, str], creates: int) -> None:
    first_arp = []
    for i in range(creates):
        want = f"198.18.0.{201 + i}"
        svc = workloads.service(
            f"arp-{i}",
            "default",
            "layer2-openelb",
            type_="LoadBalancer",
            dual_stack=False,
            annotations={"lb.kubesphere.io/v1alpha1": "openelb", "eip.openelb.kubesphere.io/v1alpha1": want},
        )
        t0 = time.monotonic()
        workloads.apply(client, svc)
        workloads.poll(f"ARP for {want}", lambda w=want: arp_owner(client_ns, w, macs, 0.05), 20, interval=0.0)
        first_arp.append((time.monotonic() - t0) * 1000)
        client.delete(Service, f"arp-{i}", namespace="default")

    if first_arp:
        fa = sorted(first_arp)
        print(
            f"create-to-first-ARP-answer: p50 {statistics.median(fa):.0f} ms, max {fa[-1]:.0f} ms ({len(fa)} Services)"
        )


if __name__ == "__main__":
    main()
