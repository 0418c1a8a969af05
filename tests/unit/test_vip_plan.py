"""VIP mode's plan: VRIDs and priorities that every speaker computes alike, whatever the order of
events; incremental answers equal to the full recompute."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from openelb.api.eip import EipView
from openelb.api.ranges import parse_range
from openelb.ipam.pools import PoolInfo, PoolModel
from openelb.speaker.vip_plan import DEFAULT_VRIDS, VipPlan, allocate_vrids, full_routers

NODES = [f"node-{i}" for i in range(1, 7)]


def vip_eip(name: str, address: str, created: str = "2026-01-01T00:00:00Z", vrid: str = "", **kw: object) -> EipView:
    return EipView(name, address, "vip", "eth0", bool(kw.get("disable", False)), 0, (), None, False, False, created,
                   vrid=vrid)  # fmt: skip


def test_vrids_are_disjoint_stable_and_independent_of_order() -> None:
    eips = [
        vip_eip("a", "198.18.40.0/26", "2026-01-01T00:00:00Z"),
        vip_eip("b", "198.18.41.0/26", "2026-01-02T00:00:00Z"),
        vip_eip("pinned", "2001:db8:40::/120", "2026-01-03T00:00:00Z", vrid="40-43"),
    ]
    vrids, problems = allocate_vrids(PoolModel(eips).pools)
    assert problems == {} and vrids["pinned"] == (40, 41, 42, 43)
    assert len(vrids["a"]) == len(vrids["b"]) == DEFAULT_VRIDS
    flat = [v for vs in vrids.values() for v in vs]
    assert len(flat) == len(set(flat)) and all(1 <= v <= 255 for v in flat)
    assert allocate_vrids(PoolModel(list(reversed(eips))).pools)[0] == vrids  # event order does not matter
    # a newer Eip never takes an older one's VRIDs
    more = [*eips, vip_eip("c", "198.18.42.0/26", "2026-01-04T00:00:00Z")]
    again = allocate_vrids(PoolModel(more).pools)[0]
    assert {k: again[k] for k in vrids} == vrids


def test_an_overlapping_pin_is_refused_and_named() -> None:
    eips = [vip_eip("first", "198.18.40.0/26", vrid="10-12"),
            vip_eip("second", "198.18.41.0/26", "2026-02-01T00:00:00Z", vrid="12")]  # fmt: skip
    model = PoolModel(eips)  # the pool model (webhook, controller) refuses the newer one ...
    assert "overlaps the VRIDs 10-12 of Eip first" in model.problems["second"][0]
    pools = [
        PoolInfo("first", parse_range("198.18.40.0/26"), "vip", "eth0", False, False, (10, 12), 10, "1"),
        PoolInfo("second", parse_range("198.18.41.0/26"), "vip", "eth0", False, False, (12, 12), 10, "2"),
    ]
    vrids, problems = allocate_vrids(pools)  # ... and so does the allocation, should one get through
    assert vrids == {"first": (10, 11, 12)} and "first" in problems["second"]


def plan_with(ips: dict[str, tuple[str, frozenset[str] | None]], me: str = "node-1") -> VipPlan:
    plan = VipPlan(me)
    plan.set_pools(PoolModel([vip_eip("v", "198.18.40.0/24")]), {"v": "eth0"})
    plan.set_eligible(NODES)
    for ip, (pool, allowed) in ips.items():
        plan.set_ip(ip, pool, allowed)
    plan.take_changes()
    return plan


def test_routers_spread_over_nodes_and_every_node_agrees_on_the_master() -> None:
    ips = {f"198.18.40.{i}": ("v", None) for i in range(1, 200)}
    plans = {n: plan_with(ips, n) for n in NODES}
    keys = set(plans["node-1"].routers)
    assert len(keys) == DEFAULT_VRIDS // 2  # the Cluster buckets
    masters = set()
    for key in keys:
        cfgs = [p.routers[key] for p in plans.values()]
        assert len({c.vrid for c in cfgs}) == 1 and len({c.addresses for c in cfgs}) == 1
        assert len({c.expected_master for c in cfgs}) == 1
        prios = {c.priority for c in cfgs}
        assert len(prios) == len(NODES) and max(prios) == 254  # distinct: a deterministic election
        top = next(c for n, c in ((n, p.routers[key]) for n, p in plans.items()) if c.priority == 254)
        assert top.expected_master in NODES
        masters.add(cfgs[0].expected_master)
    assert len(masters) >= 3  # 8 routers over 6 nodes: not all on one
    assert sum(len(c.addresses) for c in plans["node-1"].routers.values()) == 199


def test_local_ips_go_to_routers_of_their_endpoint_nodes() -> None:
    ips = {"198.18.40.1": ("v", frozenset({"node-2", "node-3"})), "198.18.40.2": ("v", None)}
    p2, p1 = plan_with(ips, "node-2"), plan_with(ips, "node-1")
    local = [c for c in p2.routers.values() if c.group.startswith("l:")]
    assert len(local) == 1 and local[0].addresses == ("198.18.40.1",)
    assert local[0].expected_master in {"node-2", "node-3"}
    assert not [c for c in p1.routers.values() if c.group.startswith("l:")]  # node-1 is no candidate
    cluster_vrids = {c.vrid for c in p1.routers.values()}
    assert local[0].vrid not in cluster_vrids


def test_an_ip_keeps_its_router_when_nodes_come_and_go() -> None:
    plan = plan_with({"198.18.40.7": ("v", None)})
    (key,) = plan.routers
    plan.set_eligible(NODES[:3])
    changes = plan.take_changes()
    assert set(plan.routers) == {key} and set(changes) <= {key}


EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("ip"), st.integers(1, 40), st.sampled_from(["v", "w", None]),
                  st.one_of(st.none(), st.frozensets(st.sampled_from(NODES), max_size=3))),
        st.tuples(st.just("eligible"), st.frozensets(st.sampled_from(NODES))),
        st.tuples(st.just("pools"), st.booleans(), st.booleans()),
    ),
    max_size=40,
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(EVENTS, st.sampled_from(NODES))
def test_incremental_equals_full_whatever_the_order(events: list[tuple[object, ...]], me: str) -> None:
    plan = VipPlan(me)
    ips: dict[str, tuple[str, frozenset[str] | None]] = {}
    eligible: frozenset[str] = frozenset()
    model, ifaces = PoolModel([]), {}
    seen: dict[object, object] = {}
    for ev in events:
        if ev[0] == "ip":
            _, n, pool, allowed = ev
            ip = f"198.18.{40 if pool != 'w' else 41}.{n}"
            if pool is None:
                ips.pop(ip, None)
                plan.set_ip(ip, None, None)
            else:
                ips[ip] = (str(pool), allowed)  # type: ignore[assignment]
                plan.set_ip(ip, str(pool), allowed)  # type: ignore[arg-type]
        elif ev[0] == "eligible":
            eligible = ev[1]  # type: ignore[assignment]
            plan.set_eligible(eligible)
        else:
            _, with_w, pinned = ev
            eips = [vip_eip("v", "198.18.40.0/24", vrid="20-23" if pinned else "")]
            if with_w:
                eips.append(vip_eip("w", "198.18.41.0/24", "2026-03-01T00:00:00Z"))
            model, ifaces = PoolModel(eips), {"v": "eth0", "w": "eth1"}
            plan.set_pools(model, ifaces)
        for key, cfg in plan.take_changes().items():
            seen[key] = cfg
    assert plan.routers == full_routers(me, ips, model, ifaces, eligible)
    assert {k: v for k, v in seen.items() if v is not None} == plan.routers  # the deltas rebuild the state


def test_the_speaker_plan_hands_vip_routers_out_with_its_changes() -> None:
    from openelb.speaker.desired import NodeInfo, ServiceInfo
    from openelb.speaker.plan import Plan

    plan = Plan("node-1")
    plan.set_pools(PoolModel([vip_eip("v", "198.18.40.0/24")]), {"v": "eth0"})
    for n in NODES:
        plan.set_node(n, NodeInfo(n, True, {}, ("198.51.100.1",)))
    plan.set_service("ns/a", ServiceInfo("ns/a", ("198.18.40.5",), False))
    changes = plan.take_changes()
    (cfg,) = [c for c in changes.vip.values() if c is not None]
    assert cfg.addresses == ("198.18.40.5",) and cfg.interface == "eth0" and not changes.layer2 and not changes.bgp
    plan.set_service("ns/a", None)  # the Service goes: its router goes
    assert list(plan.take_changes().vip.values()) == [None]
