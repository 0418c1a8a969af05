"""Speaker decision cost per event, incremental plan vs the full recompute, as Services x nodes grow.

    .venv/bin/python bench/speaker.py [--sizes 1000x3,10000x3,10000x100,10000x500] [--events 200]

Pure (no network, no root). For each size: half the Services in a Layer2 pool, half in a BGP pool,
10 % with externalTrafficPolicy Local. Measured per event on the incremental `speaker.plan.Plan`:
a Service change (its endpoints move), an EndpointSlice change of a Local Service, a Node label
change that changes nothing, a speaker dying (heartbeats stop) and a Node going NotReady.
The baseline, in the same run on the same inputs, is the full recompute `speaker.desired`
(what every event cost before: Layer2 announcements + BGP next hops over everything).
Targets at 10,000 x 500: <= 1 ms per Service/EndpointSlice change, <= 50 ms per node death.
VIP mode's rows: every Service in one `vip` Eip instead, incremental `VipPlan` vs `full_routers`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from openelb.api.eip import EipView
from openelb.ipam.pools import PoolModel
from openelb.speaker.desired import NodeInfo, ServiceInfo
from openelb.speaker.plan import Plan
from openelb.speaker.vip_plan import VipPlan, full_routers


def view(name: str, address: str, protocol: str) -> EipView:
    return EipView(name, address, protocol, "eth0", False, 0, (), None, False, False, "2026-01-01T00:00:00Z")


def node(i: int, ready: bool = True, labels: dict[str, str] | None = None) -> NodeInfo:
    return NodeInfo(f"node-{i}", ready, labels or {}, (f"198.19.{i // 250}.{i % 250 + 1}",))


def build(services: int, nodes: int) -> tuple[Plan, list[ServiceInfo]]:
    plan = Plan("node-1")
    plan.set_pools(
        PoolModel([view("l2", "198.18.0.0/17", "layer2"), view("bgp", "198.18.128.0/17", "bgp")]), {"l2": "eth0"}
    )
    for i in range(1, nodes + 1):
        plan.set_node(f"node-{i}", node(i))
    plan.set_live(f"node-{i}" for i in range(1, nodes + 1))
    infos = []
    for i in range(services):
        base = 0 if i % 2 == 0 else 128 * 256
        off = base + i // 2
        ip = f"198.18.{off // 256}.{off % 256}"
        local = i % 10 == 0
        eps = frozenset({f"node-{(i % nodes) + 1}", f"node-{((i + 1) % nodes) + 1}"}) if local else frozenset()
        infos.append(ServiceInfo(f"ns/s{i}", (ip,), local, eps))
        plan.set_service(infos[-1].key, infos[-1])
    plan.take_changes()
    return plan, infos


def per_event(events: int, fn: Callable[[int], None]) -> tuple[float, float]:
    """(p50, p99) seconds per call of fn(i) over `events` calls."""
    times = []
    for i in range(events):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def run(services: int, nodes: int, events: int) -> dict[str, tuple[float, float]]:
    t0 = time.perf_counter()
    plan, infos = build(services, nodes)
    print(f"  {services:,} x {nodes}: built in {time.perf_counter() - t0:.1f}s", flush=True)
    rows: dict[str, tuple[float, float]] = {}

    def svc_change(i: int) -> None:  # externalTrafficPolicy flips: its IP is decided again
        s = infos[(i * 7919) % len(infos)]
        eps = frozenset({f"node-{(i % nodes) + 1}"})
        flipped = ServiceInfo(s.key, s.ips, not s.local, eps)
        plan.set_service(s.key, flipped)
        plan.take_changes()
        infos[(i * 7919) % len(infos)] = flipped

    local = [s for s in infos if s.local]
    rows["Service change"] = per_event(events, svc_change)

    def slice_change(i: int) -> None:
        s = local[(i * 31) % len(local)]
        eps = frozenset({f"node-{((i * 13) % nodes) + 1}", f"node-{((i * 17) % nodes) + 1}"})
        plan.set_service(s.key, ServiceInfo(s.key, s.ips, True, eps))
        plan.take_changes()

    def node_relabel(i: int) -> None:
        n = (i % nodes) + 1
        plan.set_node(f"node-{n}", node(n, labels={"bench/tick": str(i)}))
        plan.take_changes()

    alive = {f"node-{i}" for i in range(1, nodes + 1)}

    def speaker_death(i: int) -> None:
        victim = f"node-{(i % (nodes - 1)) + 2}"
        plan.set_live(alive - {victim})
        plan.take_changes()
        plan.set_live(alive)
        plan.take_changes()

    def node_not_ready(i: int) -> None:
        n = (i % (nodes - 1)) + 2
        plan.set_node(f"node-{n}", node(n, ready=False))
        plan.take_changes()
        plan.set_node(f"node-{n}", node(n))
        plan.take_changes()

    rows["EndpointSlice change (Local)"] = per_event(events, slice_change)
    rows["Node label change (no effect)"] = per_event(events, node_relabel)
    few = max(3, min(events, 20))
    death = per_event(few, speaker_death)
    rows["speaker death + return"] = (death[0] / 2, death[1] / 2)
    nr = per_event(few, node_not_ready)
    rows["Node NotReady + Ready"] = (nr[0] / 2, nr[1] / 2)
    t0 = time.perf_counter()
    plan.full_layer2()
    plan.full_bgp()
    full = time.perf_counter() - t0
    rows["full recompute (baseline)"] = (full, full)
    assert plan.consistent(), "incremental plan differs from the full recompute"
    rows.update(vip_rows(services, nodes, events))
    return rows


def vip_rows(services: int, nodes: int, events: int) -> dict[str, tuple[float, float]]:
    """VIP mode: every Service in one `vip` Eip (16 VRIDs: ~services/8 IPs per router); its
    baseline is `full_routers`, the same answer from scratch."""
    vip = VipPlan("node-1")
    model = PoolModel([view("vip", "198.18.0.0/16", "vip")])
    vip.set_pools(model, {"vip": "eth0"})
    names = [f"node-{i}" for i in range(1, nodes + 1)]
    vip.set_eligible(names)
    ips = [f"198.18.{i // 256}.{i % 256}" for i in range(services)]
    for ip in ips:
        vip.set_ip(ip, "vip", None)
    vip.take_changes()

    def ip_change(i: int) -> None:  # externalTrafficPolicy flips: another router
        ip = ips[(i * 7919) % len(ips)]
        vip.set_ip(ip, "vip", frozenset(names[:2]) if vip.ips[ip][1] is None else None)
        vip.take_changes()

    def node_down(i: int) -> None:
        vip.set_eligible(set(names) - {names[(i % (nodes - 1)) + 1]})
        vip.take_changes()
        vip.set_eligible(names)
        vip.take_changes()

    rows = {"vip: Service change": per_event(events, ip_change)}
    few = per_event(max(3, min(events, 20)), node_down)
    rows["vip: Node NotReady + Ready"] = (few[0] / 2, few[1] / 2)
    t0 = time.perf_counter()
    assert full_routers("node-1", vip.ips, model, {"vip": "eth0"}, names) == vip.routers
    full = time.perf_counter() - t0
    rows["vip: full recompute (baseline)"] = (full, full)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000x3,10000x3,10000x100,10000x500")
    ap.add_argument("--events", type=int, default=200)
    args = ap.parse_args()
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    results = {}
    for services, nodes in sizes:
        results[(services, nodes)] = run(services, nodes, args.events)
    print()
    print(f"{'event':34} " + " ".join(f"{f'{s:,}x{n}':>20}" for s, n in sizes))
    print(f"{'(p50 / p99, ms)':34} " + " ".join(f"{'':>20}" for _ in sizes))
    for event in next(iter(results.values())):
        cells = []
        for size in sizes:
            p50, worst = results[size][event]
            cells.append(f"{p50 * 1e3:9.3f} /{worst * 1e3:9.3f}")
        print(f"{event:34} " + " ".join(f"{c:>20}" for c in cells))
    print("\nspeedup of one Service change over the full recompute:")
    for size in sizes:
        full = results[size]["full recompute (baseline)"][0]
        one = results[size]["Service change"][0]
        print(f"  {size[0]:,} x {size[1]}: {full / one:,.0f}x")
    print("consistency: incremental == full recompute at every size")


if __name__ == "__main__":
    main()
