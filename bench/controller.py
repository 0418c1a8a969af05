"""Controller benchmark: LoadBalancer Services created against the lab apiserver, time to IP.

    sudo .venv/bin/python bench/controller.py [--services 10000] [--concurrency 32] [--rate 0] [--backlog]

Two phases in the same run, on the same apiserver:
  1. floor: Services of a foreign loadBalancerClass whose status the benchmark client patches
     itself right after creating them: the apiserver's own create -> status -> watch latency,
     i.e. the best any controller could do here;
  2. openelb: annotated Services served by a real `openelb controller` process;
  3. with `--peer metallb`: the same Services (MetalLB's load-balancer class instead of the
     annotation) served by MetalLB's controller, built from the Go module proxy on first use and
     run out of cluster with its defaults (`bench/metallb.py`), after ours has stopped.
Time to IP = from sending the create to seeing the ingress IP on a watch. `--rate` creates Services
on a schedule (open loop: latency at a given load); without it they are created as fast as the
apiserver takes them, `--concurrency` at a time (closed loop: the most it sustains). `--backlog`
measures the controller alone: Services created first, then one controller serving them all.
The controller's RSS and CPU are sampled from /proc. Uses a running lab, or brings one up and
removes it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from lightkube import AsyncClient, codecs
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Namespace, Service
from lightkube.types import PatchType

from openelb.api import crds
from openelb.kube.client import async_client, sync_client
from openelb_lab import lab, workloads
from openelb_lab.components import Paths

POOL = "198.18.128.0/17"
RUN = os.urandom(3).hex()
FLOOR_NS, OPENELB_NS, PEER_NS = f"bench-floor-{RUN}", f"bench-openelb-{RUN}", f"bench-peer-{RUN}"
PEER_POOLS = ["198.18.16.0/20", "198.18.32.0/19"]  # 12,288 addresses, outside every Eip of the lab
CLK_TCK = os.sysconf("SC_CLK_TCK")
FLOOR_CLASS = "bench.invalid/floor"


def service(name: str, ns: str, ours: bool, lb_class: str = "") -> dict[str, Any]:
    """Ours: OpenELB's annotation; otherwise a foreign class (the floor's, or the peer's)."""
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
        spec["loadBalancerClass"] = lb_class or FLOOR_CLASS
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

    def usage(self, cpu0: float, t0: float) -> str:
        """Peak RSS and CPU since (`cpu0`, `t0`), as the table prints it."""
        cpu, wall = self.cpu_seconds() - cpu0, time.perf_counter() - t0
        return (
            f"peak RSS {self.peak_rss / 2**20:.0f} MiB, CPU {cpu:.1f} s over {wall:.1f} s "
            f"({100 * cpu / wall:.0f}% of one core)"
        )

    async def run(self) -> None:
        while True:
            self.peak_rss = max(self.peak_rss, self.rss())
            await asyncio.sleep(0.25)


async def phase(
    client: AsyncClient, ns: str, count: int, args: argparse.Namespace, *, ours: bool, lb_class: str = FLOOR_CLASS
) -> dict[str, float]:
    """Create `count` Services and time each one's IP; `ours` picks OpenELB's annotation, else
    `lb_class` (the floor's class, whose status the benchmark client writes itself, or a peer's)."""
    floor = not ours and lb_class == FLOOR_CLASS
    concurrency, rate = args.concurrency, args.rate
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
    start = time.perf_counter()

    async def create(i: int) -> None:
        name = f"s{i:05d}"
        if rate:  # open loop: Services arrive on a schedule, whatever the latency
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        async with sem:
            sent[name] = time.perf_counter()
            await client.create(codecs.from_dict(service(name, ns, ours, lb_class)))  # type: ignore[call-overload]
            if floor:  # the floor: the client itself plays the fastest possible controller
                await client.patch(
                    Service.Status,
                    name,
                    {"status": {"loadBalancer": {"ingress": [{"ip": "198.18.255.1", "ipMode": "VIP"}]}}},
                    namespace=ns,
                    patch_type=PatchType.MERGE,
                )

    watcher = asyncio.create_task(watch())
    t0 = start
    await asyncio.gather(*(create(i) for i in range(count)))
    created = time.perf_counter() - t0
    await asyncio.wait_for(done.wait(), 600 + count / 10)  # a peer at ~20 IPs/s needs count/20 s
    total = time.perf_counter() - t0
    watcher.cancel()
    if args.csv:
        label = "openelb" if ours else "floor" if floor else "peer"
        with Path(args.csv).with_suffix(f".{label}.csv").open("w") as f:
            f.write("sent_s,ms\n")
            f.writelines(
                f"{sent[n] - t0:.4f},{(seen[n] - sent[n]) * 1000:.2f}\n" for n in sorted(sent, key=lambda n: sent[n])
            )
    lat = sorted((seen[n] - sent[n]) * 1000 for n in sent)
    return {
        "count": count,
        "create_rate": count / created,
        "throughput": count / total,
        "p50": statistics.median(lat),
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "max": lat[-1],
    }


async def metric(port: int, name: str) -> float:
    """One unlabelled sample from the controller's /metrics (0 when it does not answer)."""
    with contextlib.suppress(aiohttp.ClientError):
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    return 0.0


async def release_all(sync: Any, count: int, port: int) -> float | None:
    """Delete the namespace while the controller still runs: its Services carry OpenELB's finalizer,
    and without a controller to release them they would stay Terminating in a shared lab. Progress
    comes from the controller's own counter (listing 10,000 Services would load the apiserver)."""
    t0 = time.perf_counter()
    workloads.delete_namespace(sync, OPENELB_NS)
    deadline = t0 + 300 + count * 0.2
    while time.perf_counter() < deadline:
        try:
            sync.get(Namespace, OPENELB_NS)
        except ApiError as exc:
            if exc.status.code == 404:
                return time.perf_counter() - t0
            raise
        released = await metric(port, "openelb_releases_total")
        elapsed = time.perf_counter() - t0
        print(f"  releasing: {released:>8,.0f}/{count:,} IPs released after {elapsed:.0f} s", flush=True)
        await asyncio.sleep(5)
    print("  namespace still terminating; see /tmp/openelb-bench-controller.log")
    return None


async def wait_ready(proc: subprocess.Popen[bytes], port: int) -> None:
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        while time.perf_counter() - t0 < 60 and proc.poll() is None:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        print(f"  controller ready after {time.perf_counter() - t0:.1f} s")
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError("the controller did not get ready in 60 s; see /tmp/openelb-bench-controller.log")


def start_controller(kubeconfig: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path("/tmp/openelb-bench-controller.log")
    proc = subprocess.Popen(
        [sys.executable, "-m", "openelb", "controller", "--leader-elect=false", "--webhook-addr=",
         f"--metrics-addr=127.0.0.1:{port}", "--namespace=default"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    )  # fmt: skip
    return proc, port


async def create_all(client: AsyncClient, ns: str, count: int, concurrency: int, *, ours: bool) -> None:
    sem = asyncio.Semaphore(concurrency)
    done = 0

    async def create(i: int) -> None:
        nonlocal done
        async with sem:
            await client.create(codecs.from_dict(service(f"s{i:05d}", ns, ours)))  # type: ignore[call-overload]
        done += 1
        if done % max(count // 5, 1) == 0:
            print(f"  {ns}: {done:>6,}/{count:,} Services created", flush=True)

    await asyncio.gather(*(create(i) for i in range(count)))


async def backlog(args: argparse.Namespace, client: AsyncClient, kubeconfig: Path, sync: Any, shared_lab: bool) -> None:
    """The controller alone: Services created while no controller runs, then served in one go (a
    fresh install on a busy cluster, or a controller that was down). Only the controller's writes
    count here, not the apiserver's cost of creating Services (its ClusterIP allocator is O(n) per
    create); the floor is the same number of status writes sent by the benchmark client itself."""
    n, conc = args.services, args.concurrency
    print(f"[1/3] creating {n:,} foreign and {n:,} annotated Services, no controller running")
    await create_all(client, FLOOR_NS, n, conc, ours=False)
    await create_all(client, OPENELB_NS, n, conc, ours=True)

    print(f"[2/3] floor: {n:,} status writes from the benchmark client, {conc} in flight")
    sem = asyncio.Semaphore(conc)

    async def write(i: int) -> None:
        async with sem:
            ingress = [{"ip": "198.18.255.1", "ipMode": "VIP"}]
            body = {"status": {"loadBalancer": {"ingress": ingress}}}
            await client.patch(Service.Status, f"s{i:05d}", body, namespace=FLOOR_NS, patch_type=PatchType.MERGE)

    t0 = time.perf_counter()
    await asyncio.gather(*(write(i) for i in range(n)))
    floor = n / (time.perf_counter() - t0)

    print(f"[3/3] openelb: a controller started on {n:,} waiting Services")
    proc, port = start_controller(kubeconfig)
    sampler = Sampler(proc.pid)
    sampling = asyncio.create_task(sampler.run())
    try:
        launched = time.perf_counter()
        await wait_ready(proc, port)
        ready = time.perf_counter()
        deadline, shown = ready + 600, 0.0
        while (got := await metric(port, "openelb_allocations_total")) < n and time.perf_counter() < deadline:
            if time.perf_counter() - shown >= 2:
                shown = time.perf_counter()
                print(f"  {got:>8,.0f}/{n:,} IPs assigned after {shown - ready:.0f} s", flush=True)
            await asyncio.sleep(0.2)
        finished = time.perf_counter()
        cpu = sampler.cpu_seconds()
        print()
        print(f"floor:   {floor:>6.0f} status writes/s")
        print(
            f"openelb: {got / (finished - ready):>6.0f} Services/s once ready ({got:,.0f} in {finished - ready:.1f} s; "
            f"start-up and cache sync {ready - launched:.1f} s); RSS {sampler.peak_rss / 2**20:.0f} MiB, "
            f"CPU {cpu:.1f} s"
        )
        print("target: >= 500 Services/s sustained (issue 3)", flush=True)
        if shared_lab:
            await release_all(sync, n, port)
    finally:
        sampling.cancel()
        proc.terminate()
        proc.wait(15)


async def bench(args: argparse.Namespace, kubeconfig: Path, shared_lab: bool) -> None:
    client = async_client(kubeconfig, field_manager="openelb-bench")
    sync = sync_client(kubeconfig, field_manager="openelb-bench")
    for crd in crds.definitions():
        workloads.apply(sync, crd)
    for ns in (FLOOR_NS, OPENELB_NS):
        workloads.ensure_namespace(sync, ns)
    workloads.poll("Eip API", lambda: workloads.apply(sync, _eip()) or True, 30)
    if args.backlog:
        await backlog(args, client, kubeconfig, sync, shared_lab)
        await client.close()
        return

    floor_n = min(args.services, args.floor)
    results: list[tuple[str, dict[str, float]]] = []
    if floor_n:
        print(f"[1/2] floor: {floor_n:,} Services, status patched by the client itself")
        results.append(("floor", await phase(client, FLOOR_NS, floor_n, args, ours=False)))

    steps = 3 if args.peer else 2
    print(f"[2/{steps}] openelb: {args.services:,} Services served by an openelb controller process")
    proc, port = start_controller(kubeconfig)
    sampler = Sampler(proc.pid)
    sampling = asyncio.create_task(sampler.run())
    usage: dict[str, str] = {}
    try:
        await wait_ready(proc, port)  # start-up (imports, cache sync) is not part of time-to-IP
        cpu0, t0 = sampler.cpu_seconds(), time.perf_counter()
        results.append(("openelb", await phase(client, OPENELB_NS, args.services, args, ours=True)))
        usage["openelb"] = sampler.usage(cpu0, t0)
        if shared_lab:
            release = await release_all(sync, args.services, port)
            if release:
                print(f"release: {args.services:,} Services deleted with their namespace, all gone in {release:.1f} s")
    finally:
        sampling.cancel()
        proc.terminate()
        proc.wait(15)
    if args.peer == "metallb":
        print(f"[3/3] metallb: {args.services:,} Services served by MetalLB's controller (its defaults)")
        results.append(("metallb", await metallb_phase(client, sync, kubeconfig, args, usage)))
    print()
    print(f"{'phase':10} {'services':>9} {'create/s':>9} {'IPs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, r in results:
        print(
            f"{name:10} {int(r['count']):>9,} {r['create_rate']:>9.0f} {r['throughput']:>8.0f} "
            f"{r['p50']:>8.1f} {r['p99']:>8.1f} {r['max']:>8.1f}"
        )
    for name, line in usage.items():
        print(f"{name} controller: {line}")
    by_name = dict(results)
    if "metallb" in by_name:
        o, m = by_name["openelb"], by_name["metallb"]
        print(
            f"openelb vs metallb: {o['throughput'] / m['throughput']:.1f}x the IPs/s, "
            f"p50 {m['p50'] / o['p50']:.1f}x and p99 {m['p99'] / o['p99']:.1f}x lower"
        )
    print("targets: >= 500 Services/s sustained, p50 <= 50 ms, p99 <= 200 ms (issue 3)", flush=True)
    await client.close()


async def metallb_phase(
    client: AsyncClient, sync: Any, kubeconfig: Path, args: argparse.Namespace, usage: dict[str, str]
) -> dict[str, float]:
    """The same workload against MetalLB's controller alone (no speakers: time to IP is the
    controller's), then MetalLB and its namespace removed."""
    from metallb import LB_CLASS, MetalLB  # noqa: PLC0415 - bench-only, built on demand

    if args.services > 12_288:
        raise SystemExit("--peer metallb: at most 12,288 Services (the size of its lab pools)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plan = lab.load_plan(Paths(lab.state_dir()))
    assert plan is not None
    workloads.ensure_namespace(sync, PEER_NS)
    try:
        with MetalLB(sync, plan, kubeconfig, PEER_POOLS, speakers=False, controller_port=port) as mlb:
            assert mlb.controller is not None
            await wait_metric(port, "metallb_allocator_addresses_total", 60)
            sampler = Sampler(mlb.controller.pid)
            sampling = asyncio.create_task(sampler.run())
            cpu0, t0 = sampler.cpu_seconds(), time.perf_counter()
            try:
                result = await phase(client, PEER_NS, args.services, args, ours=False, lb_class=LB_CLASS)
            finally:
                sampling.cancel()
            usage["metallb"] = sampler.usage(cpu0, t0)
    finally:
        workloads.delete_namespace(sync, PEER_NS)
    return result


async def wait_metric(port: int, prefix: str, within: float) -> None:
    """Until a /metrics line starts with `prefix` (MetalLB's controller has loaded its pools)."""
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        while time.perf_counter() - t0 < within:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    if any(line.startswith(prefix) for line in (await resp.text()).splitlines()):
                        print(f"  peer controller ready after {time.perf_counter() - t0:.1f} s")
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"no {prefix} on :{port} after {within:.0f} s; see /tmp/openelb-bench-metallb/controller.log")


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
    parser.add_argument("--floor", type=int, default=2_000, help="Services in the floor phase (0: no floor)")
    parser.add_argument("--concurrency", type=int, default=32, help="creates in flight (at most)")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="Services created per second (open loop); 0: as fast as possible"
    )
    parser.add_argument(
        "--backlog", action="store_true", help="create the Services first, then start the controller on them all"
    )
    parser.add_argument(
        "--peer", choices=["metallb"], help="also serve the same Services with this peer's controller, after ours"
    )
    parser.add_argument("--csv", help="write each Service's send time and time to IP to PATH.<phase>.csv")
    args = parser.parse_args()
    paths = Paths(lab.state_dir())
    ours = not lab.is_healthy(paths)
    if ours:
        lab.up(3)
    else:
        print("using the running lab; the benchmark's namespaces are deleted afterwards")
    try:
        asyncio.run(bench(args, paths.kubeconfig("admin"), shared_lab=not ours))
    finally:
        if ours:
            lab.down()
        else:
            sync = sync_client(paths.kubeconfig("admin"))
            for ns in (FLOOR_NS, OPENELB_NS, PEER_NS):
                workloads.delete_namespace(sync, ns)


if __name__ == "__main__":
    main()
