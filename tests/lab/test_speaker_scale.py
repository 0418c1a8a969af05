"""The speaker at rest with thousands of Services: nothing moves, nothing is written, little CPU.

Before the incremental plan, 3,186 Layer2 Services on this 3-node lab put the speakers into a
failover storm with nothing changing: every event recomputed the whole cluster on the heartbeat
loop, heartbeats went late, peers expired, IPs moved, each move wrote an annotation, and every
speaker recomputed again (~300 ownership changes/s, 40-47 % of a core each, half the VIPs silent).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import SpeakerProcess, arping_macs, delete_eip, eip, iface_mac, running_speakers, scrape
from lightkube import Client
from lightkube.resources.core_v1 import Namespace, Service

from openelb.api import names
from openelb.kube.client import async_client
from openelb_lab import lab, workloads
from openelb_lab.components import Paths
from openelb_lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.k8s_lab]

SERVICES = int(os.environ.get("OPENELB_TEST_REST_SERVICES", "3000"))
QUIET = float(os.environ.get("OPENELB_TEST_REST_QUIET", "30"))
POOL = "198.18.16.0/20"  # 4,096 addresses beside the LAN: answered anyway (Layer2RangeOutsideSubnet)
NS = "rest"


@pytest.fixture(scope="module")
def speakers(lab_plan: LabPlan, controller: dict[str, Any]) -> Iterator[dict[str, SpeakerProcess]]:
    with running_speakers(lab_plan, tag="-rest") as procs:
        yield procs


async def create_services(kubeconfig: Path, count: int, concurrency: int = 16) -> None:
    client = async_client(str(kubeconfig))
    sem = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def one(i: int) -> None:
        async with sem:
            ann = {names.ANNOTATION_LB: names.LB_VALUE, names.ANNOTATION_POOL: "rest"}
            body = workloads.service(f"s{i}", NS, "rest", type_="LoadBalancer", dual_stack=False, annotations=ann)
            body["spec"]["allocateLoadBalancerNodePorts"] = False  # 3,000 > the NodePort range
            await client.create(Service.from_dict(body), namespace=NS)
            if (i + 1) % 500 == 0:
                print(f"  created {i + 1}/{count} Services ({time.monotonic() - started:.0f}s)", flush=True)

    try:
        await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        await client.close()


async def watch_writes(kubeconfig: Path, rv: str, seconds: float) -> list[tuple[str, str]]:
    """Every write to a Service of the namespace during `seconds` (lightkube's watch resumes by
    itself when the server ends it: only a timeout around it ends the window)."""
    client = async_client(str(kubeconfig))
    seen: list[tuple[str, str]] = []

    async def collect() -> None:
        async for event, svc in client.watch(Service, namespace=NS, resource_version=rv):
            if event != "BOOKMARK":
                seen.append((event, svc.metadata.name if svc.metadata else "?"))

    try:
        async with asyncio.timeout(seconds):
            await collect()
    except TimeoutError:
        pass
    finally:
        await client.close()
    return seen


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


COUNTERS = (
    "openelb_speaker_ownership_gained_total",
    "openelb_speaker_owner_moves_total",
    "openelb_speaker_peers_expired_total",
    "openelb_speaker_announcer_writes_total",
)


def counters(lab_plan: LabPlan) -> dict[str, dict[str, float]]:
    out = {}
    for n in lab_plan.nodes:
        m = scrape(f"http://{n.lan_v4}:50053/metrics")
        out[n.name] = {c: m.get((c, ()), 0.0) for c in COUNTERS}
    return out


def annotated(kube: Client) -> dict[str, str]:
    out = {}
    for svc in kube.list(Service, namespace=NS):
        md = svc.metadata
        ips = [i.ip for i in (svc.status.loadBalancer.ingress or [])] if svc.status and svc.status.loadBalancer else []
        who = (md.annotations or {}).get(names.ANNOTATION_LAYER2_ANNOUNCER) if md else None
        if ips and who and ips[0]:
            out[ips[0]] = who
    return out


def test_thousands_of_layer2_services_at_rest(
    kube: Client, lab_plan: LabPlan, speakers: dict[str, SpeakerProcess]
) -> None:
    kc = Paths(lab.state_dir()).kubeconfig("admin")
    workloads.apply(kube, eip("rest", POOL, protocol="layer2", interface="eth0"))
    workloads.ensure_namespace(kube, NS, for_pods=False)  # Services without Pods
    try:
        t0 = time.monotonic()
        asyncio.run(create_services(kc, SERVICES))
        # Every IP assigned, and every Service annotated by the speaker answering for it.
        owners = workloads.poll(
            f"{SERVICES} Services with an IP and an announcer",
            lambda: a if len(a := annotated(kube)) == SERVICES else None,
            240,
            interval=2,
        )
        print(f"  {SERVICES} Services assigned and announced in {time.monotonic() - t0:.0f}s", flush=True)
        pids = {name: p.proc.pid for name, p in speakers.items()}
        before = counters(lab_plan)
        cpu0 = {n: cpu_seconds(pid) for n, pid in pids.items()}
        listing = kube.list(Service, namespace=NS, chunk_size=500)
        assert len(list(listing)) == SERVICES
        rv = listing.resourceVersion  # type: ignore[attr-defined]
        # The quiet window: nothing changes in the cluster, so nothing may change in OpenELB.
        writes = asyncio.run(watch_writes(kc, rv, QUIET))
        cpu = {n: (cpu_seconds(pid) - cpu0[n]) / QUIET for n, pid in pids.items()}
        after = counters(lab_plan)
        rss = {n: rss_mb(pid) for n, pid in pids.items()}
        print(f"  quiet {QUIET:.0f}s: CPU {cpu}, RSS MB {rss}, counters {after}", flush=True)
        assert writes == [], f"Services written during the quiet window: {writes[:10]} ({len(writes)})"
        assert after == before, f"ownership or liveness changed at rest: {before} -> {after}"
        assert all(v == 0 for c in after.values() for k, v in c.items() if "expired" in k or "moves" in k)
        assert all(v < 0.10 for v in cpu.values()), f"speaker CPU at rest: {cpu}"
        # Every sampled VIP answers ARP, with the MAC of the node its annotation names.
        macs = {n.name: iface_mac(n.netns) for n in lab_plan.nodes}
        sample = sorted(owners)[:: max(1, SERVICES // 40)]
        silent, wrong = [], []
        for ip in sample:
            got = arping_macs(lab_plan.client.netns, ip, count=1, wait=2)
            if not got:
                silent.append(ip)
            elif set(got) != {macs[owners[ip]]}:
                wrong.append((ip, got, owners[ip]))
        assert not silent and not wrong, f"of {len(sample)} sampled VIPs: silent {silent}, wrong owner {wrong}"
    finally:
        kube.delete(Namespace, NS)
        workloads.poll("namespace rest gone", lambda: NS not in {n.metadata.name for n in kube.list(Namespace)}, 300)
        delete_eip(kube, "rest", timeout=120)
