import ipaddress

import pytest

from openelb_lab.plan import (
    CLUSTER_CIDR_V4,
    CLUSTER_CIDR_V6,
    LAN_V4,
    LAN_V6,
    PREFIX,
    SERVICE_CIDR_V4,
    LabPlan,
    make_plan,
    pod_addresses,
)

DOC_RANGES = [
    ipaddress.ip_network(n)
    for n in ("198.18.0.0/15", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
]


def _all_addresses(plan: LabPlan) -> list[str]:
    out = [plan.api_v4]
    for h in plan.hosts:
        out += [a for a in (h.lan_v4, h.lan_v6, h.wan_v4, h.wan_v6) if a]
    return out


@pytest.mark.parametrize("count", [1, 3, 40])
def test_every_address_is_in_a_documentation_range_and_unique(count: int) -> None:
    plan = make_plan(count)
    addrs = _all_addresses(plan)
    assert len(addrs) == len(set(addrs))
    for a in addrs:
        ip = ipaddress.ip_address(a)
        assert any(ip in r for r in DOC_RANGES if r.version == ip.version), a


def test_node_addresses_and_pod_cidrs() -> None:
    plan = make_plan(3)
    assert [n.name for n in plan.nodes] == ["node-1", "node-2", "node-3"]
    assert plan.nodes[0].lan_v4 == "198.18.0.11"
    assert plan.nodes[2].lan_v6 == "2001:db8:0:1::13"
    cidrs4 = [ipaddress.ip_network(n.pod_cidr_v4) for n in plan.nodes]
    cidrs6 = [ipaddress.ip_network(n.pod_cidr_v6) for n in plan.nodes]
    assert all(c.subnet_of(CLUSTER_CIDR_V4) for c in cidrs4)
    assert all(c.subnet_of(CLUSTER_CIDR_V6) for c in cidrs6)
    assert not any(a.overlaps(b) for i, a in enumerate(cidrs4) for b in cidrs4[i + 1 :])
    assert not any(c.overlaps(SERVICE_CIDR_V4) or c.overlaps(LAN_V4) for c in cidrs4)
    assert all(ipaddress.ip_address(n.lan_v6) in LAN_V6 for n in plan.nodes if n.lan_v6)


def test_router_joins_both_segments_and_remote_only_wan() -> None:
    plan = make_plan(2)
    assert plan.router.lan_v4 and plan.router.wan_v4 and plan.router.wan_v6
    assert plan.remote.lan_v4 is None and plan.remote.wan_v4 == "198.18.1.10"
    assert plan.client.lan_v4 == "198.18.0.100" and plan.client.wan_v4 is None


def test_names_carry_the_lab_prefix_and_fit_linux_limits() -> None:
    plan = make_plan(40)
    for h in plan.hosts:
        assert h.netns.startswith(f"{PREFIX}-")
    assert len(plan.root_link) <= 15


def test_plan_round_trips_through_json() -> None:
    plan = make_plan(4, "iptables")
    assert LabPlan.from_json(plan.to_json()) == plan


def test_host_lookup_names_known_hosts_on_error() -> None:
    plan = make_plan(2)
    assert plan.host("remote").netns == f"{PREFIX}-remote"
    with pytest.raises(KeyError, match="node-1, node-2, client, router, remote"):
        plan.host("node-9")


@pytest.mark.parametrize(("count", "mode"), [(0, "nftables"), (61, "nftables"), (3, "ipvs")])
def test_invalid_shapes_are_refused(count: int, mode: str) -> None:
    with pytest.raises(ValueError):
        make_plan(count, mode)


def test_pod_addresses_stay_inside_the_node_cidrs() -> None:
    node = make_plan(2).nodes[1]
    v4, v6 = pod_addresses(node, 5)
    assert v4 == "198.18.66.5" and v6 == "2001:db8:1:2::5"
    assert node.pod_gateway_v4 == "198.18.66.1"
    for bad in (0, 1, 254):
        with pytest.raises(ValueError):
            pod_addresses(node, bad)


def test_nodes_beyond_the_full_ones_are_light() -> None:
    plan = make_plan(50, full_nodes=3)
    assert [n.light for n in plan.nodes[:4]] == [False, False, False, True]
    assert sum(n.light for n in plan.nodes) == 47
    assert len({n.lan_v4 for n in plan.nodes}) == 50 and len({n.pod_cidr_v4 for n in plan.nodes}) == 50
    assert not any(n.light for n in make_plan(3).nodes)
