"""Controller benchmark: LoadBalancer Services created against the lab apiserver, time to IP.

    sudo .venv/bin/python bench/controller.py [--services 10000] [--concurrency 32]

Two phases in the same run, on the same apiserver:
  1. floor: Services of a foreign loadBalancerClass whose status the benchmark client patches
     itself right after creating them: the apiserver's own create -> status -> watch latency,
     i.e. the best any controller could do here;
  2. openelb: annotated Services served by a real `openelb controller` process.
Time to IP = from sending the create to seeing the ingress IP on a watch. The controller's RSS and
CPU are sampled from /proc. Uses a running lab, or brings one up and removes it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, codecs
from lightkube.resources.core_v1 import Service
from lightkube.types import PatchType

from openelb.api import crds
from openelb.kube.client import async_client, sync_client
from openelb.lab import lab, workloads
from openelb.lab.components import Paths

POOL = "198.18.128.0/17"
RUN = os.urandom(3).hex()
FLOOR_NS, OPENELB_NS = f"bench-floor-{RUN}", f"bench-openelb-{RUN}"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def service(name: str, ns: str, ours: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    spec: dict[str, Any] = {
        "type": "LoadBalancer",
        "allocateLoadBalancerNodePorts": False,  # 10,000 Services would exhaust the NodePort range
        "selector": {"app": name},
        "ports": [{"port": 80, "targetPort": 8080}],
    }
    if ours:
        meta["annotations"] = {"lb.kubesphere.io/v1alpha1": "openelb"}
    else:
        spec["loadBalancerClass"] = "bench.invalid/floor"
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


class Sampler:
    """Peak RSS and CPU seconds of one process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss = 0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    async def run(self) -> None:
        while True:
            self.peak_rss = max(self.peak_rss, self.rss())
            await asyncio.sleep(0.25)


async def phase(client: AsyncClient, ns: str, count: int, concurrency: int, ours: bool) -> dict[str, float]:
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = asyncio.Event()
    listing = client.list(Service, namespace=ns)
    async for _ in listing:
        pass
    rv = listing.resourceVersion

    async def watch() -> None:
        async for _event, svc in client.watch(Service, namespace=ns, resource_version=rv):
            name = svc.metadata.name if svc.metadata else None
            lb = svc.status.loadBalancer if svc.status else None
            if name and name not in seen and lb and lb.ingress:
                seen[name] = time.perf_counter()
                if len(seen) % max(count // 10, 1) == 0:
                    print(f"  {ns}: {len(seen):>6,}/{count:,} Services have an IP", flush=True)
                if len(seen) >= count:
                    done.set()
                    return

    sem = asyncio.Semaphore(concurrency)

    async def create(i: int) -> None:
        name = f"s{i:05d}"
        async with sem:
            sent[name] = time.perf_counter()
            await client.create(codecs.from_dict(service(name, ns, ours)))  # type: ignore[call-overload]
            if not ours:  # the floor: the client itself plays the fastest possible controller
                await client.patch(
                    Service.Status,
                    name,
                    {"status": {"loadBalancer": {"ingress": [{"ip": "198.18.255.1", "ipMode": "VIP"}]}}},
                    namespace=ns,
                    patch_type=PatchType.MERGE,
                )

    watcher = asyncio.create_task(watch())
    t0 = time.perf_counter()
    await asyncio.gather(*(create(i) for i in range(count)))
    created = time.perf_counter() - t0
    await asyncio.wait_for(done.wait(), 600)
    total = time.perf_counter() - t0
    watcher.cancel()
    lat = sorted((seen[n] - sent[n]) * 1000 for n in sent)
    return {
        "count": count,
        "create_rate": count / created,
        "throughput": count / total,
        "p50": statistics.median(lat),
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "max": lat[-1],
    }


def start_controller(kubeconfig: Path) -> subprocess.Popen[bytes]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path("/tmp/openelb-bench-controller.log")
    return subprocess.Popen(
        [sys.executable, "-m", "openelb", "controller", "--leader-elect=false", "--webhook-addr=",
         f"--metrics-addr=127.0.0.1:{port}", "--namespace=default"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    )  # fmt: skip


async def bench(args: argparse.Namespace, kubeconfig: Path) -> None:
    client = async_client(kubeconfig, field_manager="openelb-bench")
    sync = sync_client(kubeconfig, field_manager="openelb-bench")
    for crd in crds.definitions():
        workloads.apply(sync, crd)
    for ns in (FLOOR_NS, OPENELB_NS):
        workloads.ensure_namespace(sync, ns)
    workloads.poll("Eip API", lambda: workloads.apply(sync, _eip()) or True, 30)

    floor_n = min(args.services, args.floor)
    print(f"[1/2] floor: {floor_n:,} Services, status patched by the client itself")
    floor = await phase(client, FLOOR_NS, floor_n, args.concurrency, ours=False)

    print(f"[2/2] openelb: {args.services:,} Services served by an openelb controller process")
    proc = start_controller(kubeconfig)
    sampler = Sampler(proc.pid)
    sampling = asyncio.create_task(sampler.run())
    try:
        await asyncio.sleep(2)  # controller start-up (imports, cache sync) is not part of time-to-IP
        cpu0, t0 = sampler.cpu_seconds(), time.perf_counter()
        ours = await phase(client, OPENELB_NS, args.services, args.concurrency, ours=True)
        cpu = sampler.cpu_seconds() - cpu0
        wall = time.perf_counter() - t0
    finally:
        sampling.cancel()
        proc.terminate()
        proc.wait(15)

    print()
    print(f"{'phase':10} {'services':>9} {'create/s':>9} {'IPs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, r in (("floor", floor), ("openelb", ours)):
        print(
            f"{name:10} {int(r['count']):>9,} {r['create_rate']:>9.0f} {r['throughput']:>8.0f} "
            f"{r['p50']:>8.1f} {r['p99']:>8.1f} {r['max']:>8.1f}"
        )
    print(
        f"controller: peak RSS {sampler.peak_rss / 2**20:.0f} MiB, CPU {cpu:.1f} s over {wall:.1f} s "
        f"({100 * cpu / wall:.0f}% of one core)"
    )
    print("targets: >= 500 Services/s sustained, p50 <= 50 ms, p99 <= 200 ms (issue 3)")
    await client.close()


def _eip() -> dict[str, Any]:
    return {
        "apiVersion": "network.kubesphere.io/v1alpha2",
        "kind": "Eip",
        "metadata": {"name": "bench-pool"},
        "spec": {"address": POOL, "namespaceSelector": {}},  # every namespace (OpenELB semantics)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--floor", type=int, default=2_000, help="Services in the floor phase")
    parser.add_argument("--concurrency", type=int, default=32, help="creates in flight")
    args = parser.parse_args()
    paths = Paths(lab.state_dir())
    ours = not lab.is_healthy(paths)
    if ours:
        lab.up(3)
    else:
        print("using the running lab; the benchmark's namespaces are deleted afterwards")
    try:
        asyncio.run(bench(args, paths.kubeconfig("admin")))
    finally:
        if ours:
            lab.down()
        else:
            sync = sync_client(paths.kubeconfig("admin"))
            for ns in (FLOOR_NS, OPENELB_NS):
                workloads.delete_namespace(sync, ns)
            print("note: Eip bench-pool keeps its finalizer until a controller releases the deleted Services")


if __name__ == "__main__":
    main()
