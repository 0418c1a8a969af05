"""The incremental plan gives exactly the answer of the full recompute, whatever the order of events."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from openelb.api.eip import EipView
from openelb.api.names import LABEL_RACK
from openelb.ipam.pools import PoolModel
from openelb.speaker.desired import EXCLUDE_LABEL, NodeInfo, ServiceInfo, heartbeat_peers, rank
from openelb.speaker.plan import FULL_MESH_NODES, Plan


def eip(
    name: str, address: str, protocol: str = "layer2", created: str = "2026-01-01T00:00:00Z", **kw: object
) -> EipView:
    return EipView(
        name=name,
        address=address,
        protocol=protocol,
        interface="eth0" if protocol != "bgp" else "",
        disable=bool(kw.get("disable", False)),
        priority=0,
        namespaces=(),
        namespace_selector=None,
        default=False,
        deleting=False,
        created=created,
    )


POOLS = PoolModel([eip("l2", "198.18.0.200-198.18.0.209"), eip("l2v6", "2001:db8::10-2001:db8::19"),
                   eip("bgp", "198.18.2.0/29", "bgp"), eip("bgpv6", "2001:db8:2::/125", "bgp")])  # fmt: skip
IFACES = {"l2": "eth0", "l2v6": "eth0"}
IPS = (
    [f"198.18.0.{200 + i}" for i in range(6)]
    + [f"2001:db8::{10 + i:x}" for i in range(3)]
    + [f"198.18.2.{i}" for i in range(5)]
    + ["2001:db8:2::1"]
)
NAMES = [f"node-{i}" for i in range(1, 8)]


def node(name: str, ready: bool = True, excluded: bool = False, rack: str | None = None) -> NodeInfo:
    labels = {EXCLUDE_LABEL: ""} if excluded else {}
    if rack:
        labels[LABEL_RACK] = rack
    i = NAMES.index(name) + 11 if name in NAMES else 99
    return NodeInfo(name, ready, labels, (f"198.18.0.{i}", f"2001:db8:0:1::{i:x}"))


ops = st.one_of(
    st.tuples(
        st.just("svc"),
        st.sampled_from([f"ns/s{i}" for i in range(8)]),
        st.one_of(
            st.none(),
            st.tuples(
                st.lists(st.sampled_from(IPS), max_size=2, unique=True),
                st.booleans(),
                st.frozensets(st.sampled_from(NAMES), max_size=4),
            ),
        ),
    ),
    st.tuples(
        st.just("node"),
        st.sampled_from(NAMES),
        st.one_of(st.none(), st.tuples(st.booleans(), st.booleans(), st.sampled_from([None, "a", "b"]))),
    ),
    st.tuples(st.just("live"), st.frozensets(st.sampled_from(NAMES))),
    st.tuples(st.just("pools"), st.booleans(), st.sampled_from([None, "eth0", "eth1"])),
)


def apply(plan: Plan, op: tuple[object, ...]) -> None:
    if op[0] == "svc":
        key, spec = op[1], op[2]
        assert isinstance(key, str)
        if spec is None:
            plan.set_service(key, None)
        else:
            ips, local, eps = spec  # type: ignore[misc]
            plan.set_service(key, ServiceInfo(key, tuple(ips), local, eps))
    elif op[0] == "node":
        name, spec = op[1], op[2]
        assert isinstance(name, str)
        plan.set_node(name, None if spec is None else node(name, spec[0], spec[1], spec[2]))  # type: ignore[index]
    elif op[0] == "live":
        plan.set_live(op[1])  # type: ignore[arg-type]
    else:
        disabled, iface = op[1], op[2]
        model = PoolModel([eip("l2", "198.18.0.200-198.18.0.209", disable=bool(disabled)),
                           eip("l2v6", "2001:db8::10-2001:db8::19"),
                           eip("bgp", "198.18.2.0/29", "bgp"), eip("bgpv6", "2001:db8:2::/125", "bgp")])  # fmt: skip
        plan.set_pools(model, {"l2": iface, "l2v6": "eth0"})


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(NAMES),
    st.lists(st.booleans(), min_size=len(NAMES), max_size=len(NAMES)),
    st.lists(ops, max_size=40),
)
def test_incremental_equals_full_recompute(me: str, start: list[bool], sequence: list[tuple[object, ...]]) -> None:
    plan = Plan(me)
    plan.set_pools(POOLS, IFACES)
    for name, ready in zip(NAMES, start, strict=True):  # most runs start with enough nodes to fill the candidates
        plan.set_node(name, node(name, ready))
    plan.set_live(NAMES)
    announced: dict[str, object] = {}
    routes: dict[str, object] = {}
    for op in sequence:
        apply(plan, op)
        assert plan.layer2 == plan.full_layer2()
        assert plan.bgp == plan.full_bgp()
        changes = plan.take_changes()
        for ip, ann in changes.layer2.items():
            announced[ip] = ann
        for ip, hops in changes.bgp.items():
            routes[ip] = hops
        # The changes handed out, applied in order, rebuild the state: nothing is lost.
        assert {ip: a for ip, a in announced.items() if a is not None} == plan.layer2
        assert {ip: h for ip, h in routes.items() if h is not None} == plan.bgp
        assert plan.heartbeat_peers() == heartbeat_peers(plan.layer2, me)  # the total rule, same answer
        assert plan.mine() == {ip: a.interface for ip, a in plan.layer2.items() if a.owner == me}


def cluster(nodes: int, services: int) -> Plan:
    plan = Plan("node-1")
    plan.set_pools(PoolModel([eip("l2", "198.18.0.0/16")]), {"l2": "eth0"})
    for i in range(1, nodes + 1):
        plan.set_node(f"node-{i}", NodeInfo(f"node-{i}", True, {}, (f"198.19.{i // 250}.{i % 250}",)))
    plan.set_live(f"node-{i}" for i in range(1, nodes + 1))
    for i in range(services):
        plan.set_service(f"ns/s{i}", ServiceInfo(f"ns/s{i}", (f"198.18.{i // 250}.{i % 250}",), False))
    plan.take_changes()
    return plan


def test_unchanged_inputs_change_nothing() -> None:
    """Our own annotation write comes back as a Service event, and kubelets refresh Node status:
    equal inputs must not recompute or move anything."""
    plan = cluster(5, 50)
    plan.set_service("ns/s1", ServiceInfo("ns/s1", ("198.18.0.1",), False, frozenset({"node-2"})))
    plan.set_node("node-3", NodeInfo("node-3", True, {}, ("198.19.0.3",)))
    plan.set_live([f"node-{i}" for i in range(1, 6)])
    assert not plan.take_changes()


def test_a_dying_speaker_moves_only_the_ips_it_owned() -> None:
    plan = cluster(20, 400)
    before = {ip: a.owner for ip, a in plan.layer2.items()}
    plan.set_live(f"node-{i}" for i in range(1, 21) if i != 7)
    changes = plan.take_changes()
    assert set(changes.layer2) == {ip for ip, o in before.items() if o == "node-7"}
    assert changes.owner_moves == len(changes.layer2) > 0
    assert all(a is not None and a.owner != "node-7" for a in changes.layer2.values())


def test_a_node_turning_eligible_joins_only_where_it_outranks_the_last_candidate() -> None:
    plan = cluster(20, 400)
    before = {ip: a.candidates for ip, a in plan.layer2.items()}
    plan.set_node("node-21", NodeInfo("node-21", True, {}, ("198.19.0.21",)))
    changes = plan.take_changes()
    expected = {ip for ip, a in plan.layer2.items() if "node-21" in a.candidates}
    assert set(changes.layer2) == expected and expected
    for ip, cands in before.items():
        assert (ip in expected) == (rank("node-21", ip) < rank(cands[-1], ip))


def test_bgp_shared_next_hops_follow_nodes_and_racks() -> None:
    plan = Plan("node-1")
    plan.set_pools(PoolModel([eip("bgp", "198.18.2.0/24", "bgp")]), {})
    for name in NAMES[:3]:
        plan.set_node(name, node(name))
    plan.set_live(NAMES[:3])
    plan.set_service("ns/a", ServiceInfo("ns/a", ("198.18.2.1",), False))
    plan.set_service("ns/b", ServiceInfo("ns/b", ("198.18.2.2",), True, frozenset({"node-2"})))
    assert plan.bgp == {"198.18.2.1": ("198.18.0.11", "198.18.0.12", "198.18.0.13"), "198.18.2.2": ("198.18.0.12",)}
    plan.set_live(["node-1", "node-3"])  # node-2's speaker is gone
    assert plan.bgp == {"198.18.2.1": ("198.18.0.11", "198.18.0.13")}
    plan.set_node("node-1", node("node-1", rack="a"))  # this speaker is in rack a: only rack a next hops
    plan.set_node("node-3", node("node-3", rack="a"))
    assert plan.bgp == {"198.18.2.1": ("198.18.0.11", "198.18.0.13")}
    plan.set_node("node-3", node("node-3", rack="b"))
    assert plan.bgp == {"198.18.2.1": ("198.18.0.11",)}


def test_beyond_the_full_mesh_node_ready_decides_bgp_next_hops() -> None:
    plan = Plan("node-1")
    plan.set_pools(PoolModel([eip("bgp", "198.18.2.0/24", "bgp")]), {})
    names = [f"n{i}" for i in range(FULL_MESH_NODES + 1)]
    for i, name in enumerate(names):
        plan.set_node(name, NodeInfo(name, True, {}, (f"198.19.0.{i + 1}",)))
    plan.set_service("ns/a", ServiceInfo("ns/a", ("198.18.2.1",), False))
    assert len(plan.bgp["198.18.2.1"]) == FULL_MESH_NODES + 1  # live set not consulted
    plan.set_node("n3", NodeInfo("n3", False, {}, ("198.19.0.4",)))
    assert "198.19.0.4" not in plan.bgp["198.18.2.1"]
    assert plan.consistent()


def test_overlapping_eips_follow_the_older_pool() -> None:
    """Without the webhook two Eips can overlap: the older one wins for the controller, and the
    speaker announces the IP through that pool's mode and interface, not the newer one's."""
    older = eip("old-bgp", "198.18.0.200-198.18.0.210", "bgp", created="2026-01-01T00:00:00Z")
    newer = eip("new-l2", "198.18.0.200/29", "layer2", created="2026-02-01T00:00:00Z")
    model = PoolModel([newer, older])
    pool = model.pool_of("198.18.0.201")
    assert pool is not None and pool.name == "old-bgp" and "new-l2" in model.problems
    plan = Plan("node-1")
    plan.set_pools(model, {"new-l2": "eth0"})
    plan.set_node("node-1", node("node-1"))
    plan.set_service("ns/a", ServiceInfo("ns/a", ("198.18.0.201",), False))
    assert plan.layer2 == {} and plan.bgp == {"198.18.0.201": ("198.18.0.11",)}
