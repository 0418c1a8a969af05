"""Speakers at scale in the lab: many nodes, 10,000 Services, churn, then idle cost and failover.

    sudo .venv/bin/python bench/speaker_scale.py [--nodes 50] [--services 10000] [--churn 300] [--runs 10]

Brings up a lab with `--nodes` nodes, of which the first 3 are full and the rest light (a Node
object kept Ready, tainted so no Pod lands there, and a namespace on the LAN: no kube-proxy and no
Pods, so a light node answers ARP but forwards no Service traffic). Starts the controller and one
speaker per node (the speakers of light nodes are as real as the others), then:

1. creates `--services` LoadBalancer Services, 60 % in a Layer2 pool and 40 % in a BGP pool,
   10 % of them externalTrafficPolicy Local with hand-made EndpointSlices on random nodes;
2. churns for `--churn` seconds: 20 Service changes/s (a label, as deployments do) and 2
   EndpointSlice changes/s (a Local Service's endpoint moves to another node), and reports the
   speakers' peer expirations and owner moves in that window (an expiration is a failure that
   did not happen; owner moves can come only from the Local endpoints that moved), and the
   heartbeat lateness p99 over all speakers;
3. an idle window: CPU and RSS of each speaker with nothing changing;
4. `--runs` power-offs of the owner of a Layer2 IP (speaker SIGKILLed and link down), seen by an
   ARP probe from the client every 10 ms: the time until another node's MAC answers.

The pure per-event costs with the full-recompute baseline are `bench/speaker.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random  # workload choices, not crypto
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightkube import AsyncClient
from lightkube.resources.core_v1 import Service
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import PatchType

from openelb.api import crds, names
from openelb.kube.client import async_client, sync_client
from openelb_lab import lab, workloads
from openelb_lab.components import Paths
from openelb_lab.plan import LabPlan

NS = "scale"
L2_POOL, BGP_POOL = "198.18.32.0/19", "198.18.16.0/20"  # beside the LAN and the pod networks
COUNTERS = (
    "openelb_speaker_peers_expired_total",
    "openelb_speaker_owner_moves_total",
    "openelb_speaker_ownership_gained_total",
    "openelb_speaker_announcer_writes_total",
)


T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[scale +{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def in_netns(netns: str, *argv: str, timeout: float = 10) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    return out.stdout


class Speaker:
    def __init__(self, node: str, netns: str, kubeconfig: Path) -> None:
        self.node, self.netns, self.kubeconfig = node, netns, kubeconfig
        self.log = Path(f"/tmp/openelb-bench-scale-{node}.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log.write_bytes(b"")
        self.start()

    def start(self) -> None:
        self.starts = self.log.stat().st_size  # `ready` reads only what this start wrote
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-m", "openelb", "speaker",
                f"--kubeconfig={self.kubeconfig}", "--enable-bgp=true"]  # fmt: skip
        env = {**os.environ, "NODE_NAME": self.node}
        self.proc = subprocess.Popen(argv, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def ready(self) -> bool:
        with self.log.open("rb") as f:
            f.seek(self.starts)
            return b"ready (heartbeat port" in f.read()

    def pids(self) -> list[int]:
        """The speaker and its heartbeat process."""
        assert self.proc is not None
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [self.proc.pid, *(int(p) for p in kids.read_text().split())] if kids.exists() else [self.proc.pid]

    def cpu(self) -> float:
        """CPU seconds of the speaker and its heartbeat process together."""
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def memory_mb(self, kind: str) -> float:
        """`Rss` or `Pss` of the speaker and its heartbeat process together (PSS shares the
        interpreter's pages between them instead of counting them twice)."""
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith(f"{kind}:"):
                        total += int(line.split()[1]) / 1024
        return total


def scrape(lab_plan: LabPlan) -> dict[str, dict[str, float]]:
    """Every speaker's metrics (name → value; histogram buckets keyed with their bound)."""
    out: dict[str, dict[str, float]] = {}
    for n in lab_plan.nodes:
        text = in_netns(lab_plan.client.netns, "curl", "-s", "--max-time", "3", f"http://{n.lan_v4}:50053/metrics")
        vals: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            key, value = line.rsplit(" ", 1)
            with contextlib.suppress(ValueError):
                vals[key] = float(value)
        out[n.name] = vals
    return out


def lateness_p99(metrics: dict[str, dict[str, float]], before: dict[str, dict[str, float]]) -> float:
    """p99 of heartbeat lateness over all speakers in a window, from the histogram buckets."""
    name = "openelb_speaker_heartbeat_lateness_seconds_bucket"
    buckets: dict[float, float] = {}
    for node, vals in metrics.items():
        for key, v in vals.items():
            if key.startswith(name):
                le = key.split('le="', 1)[1].split('"', 1)[0]
                bound = float("inf") if le == "+Inf" else float(le)
                buckets[bound] = buckets.get(bound, 0.0) + v - before.get(node, {}).get(key, 0.0)
    total = buckets.get(float("inf"), 0.0)
    for bound in sorted(buckets):
        if total and buckets[bound] >= 0.99 * total:
            return bound
    return float("nan")


def service_body(i: int, pool: str, local: bool) -> dict[str, Any]:
    ann = {names.ANNOTATION_LB: names.LB_VALUE, names.ANNOTATION_POOL: pool}
    body = workloads.service(f"s{i:05d}", NS, "scale", type_="LoadBalancer", dual_stack=False, annotations=ann)
    body["spec"].pop("selector")
    body["spec"]["allocateLoadBalancerNodePorts"] = False
    if local:
        body["spec"]["externalTrafficPolicy"] = "Local"
    return body


def slice_body(svc: str, nodes: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{svc}-bench", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": svc, "endpointslice.kubernetes.io/managed-by": "bench"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [f"198.18.{64 + (k % 3) + 1}.{10 + k}"], "nodeName": n,
                       "conditions": {"ready": True}} for k, n in enumerate(nodes)],
    }  # fmt: skip


async def create(kubeconfig: str, count: int, nodes: list[str], rng: random.Random) -> list[str]:
    async with contextlib.aclosing(_Client(kubeconfig)) as c:
        return await _create(c.client, count, nodes, rng)


class _Client:
    """An AsyncClient made and closed inside one `asyncio.run`."""

    def __init__(self, kubeconfig: str) -> None:
        self.client = async_client(kubeconfig)

    async def aclose(self) -> None:
        await self.client.close()


async def _create(client: AsyncClient, count: int, nodes: list[str], rng: random.Random) -> list[str]:
    sem = asyncio.Semaphore(16)
    local_services: list[str] = []
    done = 0

    async def one(i: int) -> None:
        nonlocal done
        pool = "l2" if i % 10 < 6 else "bgp"
        local = i % 10 in (0, 6)
        async with sem:
            await client.create(Service.from_dict(service_body(i, pool, local)), namespace=NS)
            if local:
                name = f"s{i:05d}"
                await client.create(EndpointSlice.from_dict(slice_body(name, rng.sample(nodes, 2))), namespace=NS)
                local_services.append(name)
        done += 1
        if done % 1000 == 0:
            say(f"created {done:,}/{count:,} Services")

    await asyncio.gather(*(one(i) for i in range(count)))
    return local_services


async def churn(kubeconfig: str, seconds: float, services: int, local: list[str], nodes: list[str]) -> tuple[int, int]:
    async with contextlib.aclosing(_Client(kubeconfig)) as c:
        return await _churn(c.client, seconds, services, local, nodes)


async def _churn(
    client: AsyncClient, seconds: float, services: int, local: list[str], nodes: list[str]
) -> tuple[int, int]:
    """(changes, of which EndpointSlice changes)"""
    rng = random.Random(7)  # noqa: S311
    ops = slices = 0
    end = time.monotonic() + seconds
    tick = 0
    while time.monotonic() < end:
        started = time.monotonic()
        name = f"s{rng.randrange(services):05d}"
        patch = {"metadata": {"labels": {"bench/tick": str(tick)}}}
        with contextlib.suppress(Exception):
            await client.patch(Service, name, patch, namespace=NS, patch_type=PatchType.MERGE)
            ops += 1
        if tick % 10 == 0 and local:
            svc = rng.choice(local)
            body = slice_body(svc, rng.sample(nodes, 2))
            with contextlib.suppress(Exception):
                await client.patch(EndpointSlice, f"{svc}-bench", {"endpoints": body["endpoints"]}, namespace=NS,
                                   patch_type=PatchType.MERGE)  # fmt: skip
                ops += 1
                slices += 1
        tick += 1
        if tick % 1000 == 0:
            say(f"churn: {ops:,} changes so far")
        await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - started)))
    return ops, slices


def owners(kube: Any) -> dict[str, str]:
    out = {}
    for svc in kube.list(Service, namespace=NS, chunk_size=500):
        md = svc.metadata
        lb = svc.status.loadBalancer if svc.status else None
        who = (md.annotations or {}).get(names.ANNOTATION_LAYER2_ANNOUNCER) if md else None
        if lb and lb.ingress and who:
            out[str(lb.ingress[0].ip)] = who
    return out


def arp_macs(client_ns: str, ip: str) -> list[str]:
    out = in_netns(client_ns, "arping", "-c", "1", "-w", "0.05", "-I", "eth0", ip, timeout=3)
    return [w.lower() for line in out.splitlines() if "from" in line for w in line.split() if w.count(":") == 5]


def power_off(lab_plan: LabPlan, speakers: dict[str, Speaker], ip: str, owner: str, macs: dict[str, str]) -> float:
    """Owner's speaker SIGKILLed and its link down; seconds until another MAC answers ARP."""
    node = lab_plan.node(owner)
    speakers[owner].stop(signal.SIGKILL)
    in_netns(node.netns, "ip", "link", "set", "eth0", "down")
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 10:
            got = arp_macs(lab_plan.client.netns, ip)
            if got and macs[owner] not in got:
                return time.monotonic() - t0
            time.sleep(0.01)
        return float("inf")
    finally:
        in_netns(node.netns, "ip", "link", "set", "eth0", "up")
        speakers[owner].start()


@dataclass
class Figures:
    nodes: int
    services: int
    churn: float
    changes: int
    slice_changes: int
    expired: float
    """Peer expirations over all speakers during the churn (no failure happened: each is spurious)."""
    moves: float
    """Layer2 owner moves during the churn, the most any one speaker counted."""
    writes: float
    lateness_p99: float
    idle: float
    cpu: dict[str, float]
    rss: dict[str, float]
    pss: dict[str, float]
    outages: list[float] = field(default_factory=list)

    def report(self) -> None:
        light = self.nodes - 3
        print()
        print(f"speakers at scale: {self.nodes} nodes (3 full, {light} light), {self.services:,} Services")
        print(f"churn {self.churn:.0f}s: {self.changes:,} changes ({self.changes / self.churn:.1f}/s)")
        print(f"  peers expired (no failure happened), all speakers together: {self.expired:.0f}")
        print(
            f"  Layer2 owner moves (only the {self.slice_changes} Local endpoint moves may cause them): "
            f"{self.moves:.0f}"
        )
        print(f"  announcer annotations written: {self.writes:.0f}")
        print(f"  heartbeat lateness p99 over all speakers: <= {self.lateness_p99 * 1e3:g} ms")
        cpu, rss, pss = self.cpu.values(), self.rss.values(), self.pss.values()
        print(f"idle {self.idle:.0f}s: CPU per speaker p50 {statistics.median(cpu) * 100:.1f}% "
              f"max {max(cpu) * 100:.1f}% of a core; RSS p50 {statistics.median(rss):.0f} MB "
              f"max {max(rss):.0f} MB (PSS p50 {statistics.median(pss):.0f} MB; speaker and heartbeat "
              "process together)")  # fmt: skip
        ok = self.recovered()
        if ok:
            print(f"power-off failover (ARP probe, {len(ok)}/{len(self.outages)} recovered): "
                  f"p50 {statistics.median(ok) * 1e3:.0f} ms, p99 {self.failover_p99() * 1e3:.0f} ms, "
                  f"max {max(ok) * 1e3:.0f} ms")  # fmt: skip
        print("targets: 0 expirations, lateness p99 <= 20 ms, <= 80 MB RSS and <= 5 % of a core idle")

    def recovered(self) -> list[float]:
        return sorted(o for o in self.outages if o != float("inf"))

    def failover_p99(self) -> float:
        ok = self.recovered()
        return ok[min(len(ok) - 1, int(len(ok) * 0.99))] if ok else float("inf")


def start_controller(kube: Any, kc: Path, pools: dict[str, tuple[str, str]], tag: str) -> subprocess.Popen[bytes]:
    """CRDs, the namespace, the Eips (name → (address, protocol); layer2/vip on eth0) and a
    controller without webhook or leader election, logging to /tmp/openelb-bench-<tag>-controller.log."""
    for crd in crds.definitions():
        workloads.apply(kube, crd)
    workloads.ensure_namespace(kube, NS)
    for name, (pool, proto) in pools.items():
        spec: dict[str, Any] = {"address": pool, "protocol": proto}
        if proto in ("layer2", "vip"):
            spec["interface"] = "eth0"
        workloads.apply(kube, {"apiVersion": f"{names.GROUP}/{names.VERSION}", "kind": "Eip",
                               "metadata": {"name": name}, "spec": spec})  # fmt: skip
    with Path(f"/tmp/openelb-bench-{tag}-controller.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "openelb", "controller", "--leader-elect=false", "--webhook-addr=",
             "--metrics-addr=127.0.0.1:0", "--namespace=default", f"--kubeconfig={kc}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def run(nodes: int, services: int, churn_s: float, idle: float, runs: int) -> Figures:
    """The whole scale run on a lab of its own (brought up here and always taken down)."""
    lab_plan = lab.up(nodes, full_nodes=3)
    paths = Paths(lab.state_dir())
    kc = paths.kubeconfig("admin")
    kube = sync_client(kc)
    speakers: dict[str, Speaker] = {}
    ctl: subprocess.Popen[bytes] | None = None
    try:
        ctl = start_controller(kube, kc, {"l2": (L2_POOL, "layer2"), "bgp": (BGP_POOL, "bgp")}, "scale")
        names_ = [n.name for n in lab_plan.nodes]
        rng = random.Random(1)  # noqa: S311
        local = asyncio.run(create(str(kc), services, names_, rng))
        workloads.poll(
            "every Service with an IP",
            lambda: sum(1 for s in kube.list(Service, namespace=NS, chunk_size=500)
                        if s.status and s.status.loadBalancer and s.status.loadBalancer.ingress) == services,
            600, interval=5,
        )  # fmt: skip
        say(f"{services:,} Services assigned; starting {len(names_)} speakers")
        t_start = time.monotonic()
        speakers = {n.name: Speaker(n.name, n.netns, kc) for n in lab_plan.nodes}
        workloads.poll("every speaker ready", lambda: all(s.ready() for s in speakers.values()), 900, interval=2)
        say(f"speakers ready {time.monotonic() - t_start:.0f}s after start")
        expected_l2 = sum(1 for i in range(services) if i % 10 < 6 and i % 10 != 0)
        workloads.poll(
            "announcer annotations settled",
            lambda: len(owners(kube)) >= expected_l2,
            900, interval=5,
        )  # fmt: skip
        say(f"{len(owners(kube)):,} Layer2 IPs announced and annotated")
        before = scrape(lab_plan)
        ops, slices = asyncio.run(churn(str(kc), churn_s, services, local, names_))
        after = scrape(lab_plan)

        def delta(counter: str) -> float:
            """Over the cluster: every speaker decides the same, so the largest count of any one."""
            return max(after[n].get(counter, 0) - before[n].get(counter, 0) for n in after)

        def total(counter: str) -> float:
            return sum(after[n].get(counter, 0) - before[n].get(counter, 0) for n in after)

        p99 = lateness_p99(after, before)
        say("idle window")
        cpu0 = {n: s.cpu() for n, s in speakers.items()}
        time.sleep(idle)
        figures = Figures(
            nodes, services, churn_s, ops, slices,
            expired=total(COUNTERS[0]), moves=delta(COUNTERS[1]), writes=total(COUNTERS[3]), lateness_p99=p99,
            idle=idle,
            cpu={n: (s.cpu() - cpu0[n]) / idle for n, s in speakers.items()},
            rss={n: s.memory_mb("Rss") for n, s in speakers.items()},
            pss={n: s.memory_mb("Pss") for n, s in speakers.items()},
        )  # fmt: skip
        heard = live_peers(lab_plan)
        macs = {n.name: in_netns(n.netns, "cat", "/sys/class/net/eth0/address").strip().lower() for n in lab_plan.nodes}
        own = owners(kube)
        picker = random.Random(3)  # noqa: S311
        for k, ip in enumerate(picker.sample(sorted(own), runs)):
            current = arp_macs(lab_plan.client.netns, ip)
            owner = next((n for n, m in macs.items() if current and m == current[0]), own[ip])
            figures.outages.append(power_off(lab_plan, speakers, ip, owner, macs))
            say(f"power-off {k + 1}/{runs}: {figures.outages[-1] * 1e3:.0f} ms")
            workloads.poll("the restarted speaker ready", lambda o=owner: speakers[o].ready(), 300, interval=1)
            workloads.poll(
                "every speaker hearing its peers again",
                lambda: live_peers(lab_plan) == heard, 60, interval=0.5,
            )  # fmt: skip
        return figures
    finally:
        for s in speakers.values():
            s.stop()
        if ctl is not None:
            ctl.terminate()
            ctl.wait(15)
        lab.down()


def live_peers(lab_plan: LabPlan) -> dict[str, float | None]:
    """How many speakers each speaker hears (itself included)."""
    return {n: m.get("openelb_speaker_live_peers") for n, m in scrape(lab_plan).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--churn", type=float, default=300.0, help="seconds of churn")
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of the idle window")
    ap.add_argument("--runs", type=int, default=10, help="power-off failovers")
    args = ap.parse_args()
    run(args.nodes, args.services, args.churn, args.idle, args.runs).report()


if __name__ == "__main__":
    main()
