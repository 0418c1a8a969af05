"""Allocator behaviour: OpenELB's ipam_test.go / ipamv6_test.go cases, MetalLB's allocator_test.go
cases (peers.md §7.7), and the improvements (sticky, sharing rules, dual-stack, big pools)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openelb.api.ranges import parse_range
from openelb.ipam.allocator import AllocationError, Allocator, Pool, Port, Request

ip = ipaddress.ip_address
V4 = "192.168.1.0/24"
V6 = "2001:db8::/120"


def pool(name: str, address: str, **kw) -> Pool:  # type: ignore[no-untyped-def]
    return Pool(name=name, range=parse_range(address), **kw)


def alloc(*pools: Pool) -> Allocator:
    a = Allocator()
    a.set_pools(pools)
    return a


def req(key: str = "ns/a", **kw) -> Request:  # type: ignore[no-untyped-def]
    kw.setdefault("namespace", key.split("/", maxsplit=1)[0])
    if "ips" in kw:
        kw["ips"] = tuple(ip(x) for x in kw["ips"])
    return Request(key=key, **kw)


def tcp(*ports: int) -> frozenset[Port]:
    return frozenset(Port("TCP", p) for p in ports)


# ---- OpenELB behaviours (ipam_test.go), for both families --------------------------------------

FAMILIES = [(4, V4, "192.168.1."), (6, V6, "2001:db8::")]


@pytest.mark.parametrize(("fam", "cidr", "prefix"), FAMILIES)
def test_auto_allocation_is_lowest_free_including_network_address(fam: int, cidr: str, prefix: str) -> None:
    a = alloc(pool("eip", cidr, default=True))
    first = a.assign(req("ns/a", families=(fam,)))
    second = a.assign(req("ns/b", families=(fam,)))
    assert first.ips[0] == ip(f"{prefix}0")  # network address is allocatable, as OpenELB
    assert second.ips[0] == ip(f"{prefix}1")
    assert first.pools == ("eip",)


@pytest.mark.parametrize(("fam", "cidr", "prefix"), FAMILIES)
def test_specific_ip_and_pinned_pool(fam: int, cidr: str, prefix: str) -> None:
    a = alloc(pool("eip", cidr), pool("other", "198.51.100.0/24" if fam == 4 else "2001:db8:1::/120"))
    got = a.assign(req(families=(fam,), ips=(f"{prefix}9",)))
    assert str(got.ips[0]) == f"{prefix}9"
    pinned = a.assign(req("ns/b", families=(fam,), pools=("other",)))
    assert pinned.pools == ("other",)


@pytest.mark.parametrize(("fam", "cidr", "prefix"), FAMILIES)
def test_errors_match_openelb_wording(fam: int, cidr: str, prefix: str) -> None:
    a = alloc(pool("eip", cidr), pool("off", "203.0.113.0/30" if fam == 4 else "2001:db8:2::/126", disabled=True))
    with pytest.raises(AllocationError, match="no available default eip found"):
        a.assign(req(families=(fam,)))
    with pytest.raises(AllocationError, match="eip nope not found"):
        a.assign(req(families=(fam,), pools=("nope",)))
    with pytest.raises(AllocationError, match="eip:off is disabled"):
        a.assign(req(families=(fam,), pools=("off",)))
    outside = "198.18.0.1" if fam == 4 else "2001:db8:9::1"
    with pytest.raises(AllocationError, match="no available eip was found containing the ip"):
        a.assign(req(families=(fam,), ips=(outside,)))
    with pytest.raises(AllocationError, match="different family"):
        a.assign(req(families=(10 - fam,), pools=("eip",)))


def test_deleting_pool_refuses_new_allocations() -> None:
    a = alloc(pool("eip", V4, default=True, deleting=True))
    with pytest.raises(AllocationError, match="no available default eip"):
        a.assign(req())
    with pytest.raises(AllocationError, match="eip:eip is deleting"):
        a.assign(req(pools=("eip",)))


def test_full_pool_fails_and_release_frees() -> None:
    a = alloc(pool("eip", "192.168.1.0/30", default=True))
    for i in range(4):
        a.assign(req(f"ns/s{i}"))
    assert a.usage("eip") == 4
    with pytest.raises(AllocationError, match="no suitable ip"):
        a.assign(req("ns/s4"))
    a.release("ns/s2")
    assert str(a.assign(req("ns/s4")).ips[0]) == "192.168.1.2"


def test_namespace_pools_by_priority_then_default() -> None:
    a = alloc(
        pool("default", "192.168.1.0/24", default=True),
        pool("ns-low", "198.51.100.0/30", namespaces=frozenset({"team"}), priority=5),
        pool("ns-high", "198.51.100.8/30", namespaces=frozenset({"team"}), priority=1),
        pool("by-label", "203.0.113.0/30", namespace_selector={"tier": "gold"}),
    )
    assert a.assign(req("team/a")).pools == ("ns-high",)  # lower priority value wins
    assert a.assign(req("gold/a", namespace_labels={"tier": "gold"})).pools == ("by-label",)
    assert a.assign(req("other/a")).pools == ("default",)


def test_full_namespace_pool_falls_over_to_the_next_one() -> None:
    a = alloc(
        pool("first", "198.51.100.0/31", namespaces=frozenset({"t"}), priority=1),
        pool("second", "198.51.100.8/30", namespaces=frozenset({"t"}), priority=2),
    )
    pools = [a.assign(req(f"t/s{i}")).pools[0] for i in range(3)]
    assert pools == ["first", "first", "second"]


# ---- sticky (fixes OpenELB's pool re-sorting moves, §3.2 step 9) -------------------------------


def test_sticky_across_priority_changes_fullness_and_disable() -> None:
    p1 = pool("p1", "198.51.100.0/31", namespaces=frozenset({"t"}), priority=1)
    p2 = pool("p2", "198.51.100.8/30", namespaces=frozenset({"t"}), priority=2)
    a = alloc(p1, p2)
    first = a.assign(req("t/a"))
    a.assign(req("t/b"))  # p1 is now full
    assert a.assign(req("t/a")) == first  # re-reconcile: same IP though p1 sorts last now
    a.set_pools([pool("p1", "198.51.100.0/31", namespaces=frozenset({"t"}), priority=9, disabled=True), p2])
    assert a.assign(req("t/a")).ips == first.ips


def test_changed_request_moves_and_unsatisfiable_change_keeps_old_ip() -> None:
    a = alloc(pool("p", V4, default=True), pool("q", "198.51.100.0/32"))
    first = a.assign(req("ns/a"))
    a.assign(req("ns/b", pools=("q",)))  # q's only IP taken
    with pytest.raises(AllocationError):
        a.assign(req("ns/a", pools=("q",)))
    assert a.get("ns/a") == first  # never loses an assigned IP
    moved = a.assign(req("ns/a", ips=("192.168.1.77",)))
    assert str(moved.ips[0]) == "192.168.1.77"
    assert a.users(first.ips[0]) == []


def test_ip_leaving_every_pool_evicts_and_rename_keeps() -> None:
    a = alloc(pool("p", "192.168.1.0/28", default=True))
    got = a.assign(req("ns/a", ips=("192.168.1.9",)))
    assert a.set_pools([pool("renamed", "192.168.1.0/28", default=True)]) == set()
    assert a.get("ns/a").pools == ("renamed",)  # type: ignore[union-attr]
    assert a.set_pools([pool("renamed", "192.168.1.0/29", default=True)]) == {"ns/a"}
    assert a.get("ns/a") is None and got.ips[0] not in [u for u in a.used("renamed")]


def test_expanding_a_pool_keeps_allocations_and_counts() -> None:
    a = alloc(pool("p", "192.168.1.0/30", default=True))
    for i in range(4):
        a.assign(req(f"ns/s{i}"))
    a.set_pools([pool("p", "192.168.1.0/29", default=True)])
    assert a.usage("p") == 4
    assert str(a.assign(req("ns/s4")).ips[0]) == "192.168.1.4"


# ---- sharing -----------------------------------------------------------------------------------


def test_openelb_sharing_both_request_the_same_ip() -> None:
    a = alloc(pool("p", V4))
    a.assign(req("ns/a", ips=("192.168.1.5",), ports=tcp(80)))
    b = a.assign(req("ns/b", ips=("192.168.1.5",), ports=tcp(443)))
    assert str(b.ips[0]) == "192.168.1.5"
    assert a.used("p") == {"192.168.1.5": ["ns/a", "ns/b"]}
    assert a.usage("p") == 1


def test_sharing_refuses_port_conflicts_and_never_steals() -> None:
    a = alloc(pool("p", V4))
    a.assign(req("ns/a", ips=("192.168.1.5",), ports=tcp(80)))
    with pytest.raises(AllocationError, match="port TCP/80 is already in use"):
        a.assign(req("ns/b", ips=("192.168.1.5",), ports=tcp(80, 81)))
    assert a.used("p") == {"192.168.1.5": ["ns/a"]}
    udp = frozenset({Port("UDP", 80)})
    assert str(a.assign(req("ns/c", ips=("192.168.1.5",), ports=udp)).ips[0]) == "192.168.1.5"


def test_auto_allocated_ip_is_not_taken_by_an_explicit_request_without_key() -> None:
    a = alloc(pool("p", V4, default=True))
    a.assign(req("ns/a", ports=tcp(80)))
    with pytest.raises(AllocationError, match="is used by ns/a"):
        a.assign(req("ns/b", ips=("192.168.1.0",), ports=tcp(81)))


def test_share_key_packs_services_and_checks_backends() -> None:
    a = alloc(pool("p", V4, default=True))
    x = a.assign(req("ns/a", share_key="k", ports=tcp(80)))
    y = a.assign(req("ns/b", share_key="k", ports=tcp(443)))
    assert x.ips == y.ips
    z = a.assign(req("ns/c", share_key="k", ports=tcp(80)))  # conflict on the shared IP -> next one
    assert z.ips != x.ips
    w = a.assign(req("ns/d", share_key="k", ports=tcp(8080), backend_key="app=x"))  # Local, other selector
    assert w.ips != x.ips
    other_key = a.assign(req("ns/e", share_key="other", ports=tcp(9999)))
    assert other_key.ips[0] not in (x.ips[0], z.ips[0], w.ips[0])


def test_port_change_keeps_ip_unless_it_conflicts() -> None:
    a = alloc(pool("p", V4, default=True))
    a.assign(req("ns/a", share_key="k", ports=tcp(80)))
    b = a.assign(req("ns/b", share_key="k", ports=tcp(443)))
    assert a.assign(req("ns/b", share_key="k", ports=tcp(8443))).ips == b.ips
    with pytest.raises(AllocationError, match="port TCP/80"):
        a.assign(req("ns/b", share_key="k", ports=tcp(80)))
    assert a.get("ns/b").ports == tcp(8443)  # type: ignore[union-attr]


def test_sole_user_may_change_its_share_key() -> None:
    a = alloc(pool("p", V4, default=True))
    first = a.assign(req("ns/a", share_key="k1"))
    assert a.assign(req("ns/a", share_key="k2")).ips == first.ips


# ---- dual-stack --------------------------------------------------------------------------------


def test_dual_stack_one_ip_per_family_in_family_order() -> None:
    a = alloc(pool("v4", V4, default=True), pool("v6", V6, default=True))
    got = a.assign(req(families=(6, 4)))
    assert [x.version for x in got.ips] == [6, 4] and got.pools == ("v6", "v4")


def test_require_dual_stack_fails_without_both_families_prefer_does_not() -> None:
    a = alloc(pool("v4", V4, default=True))
    with pytest.raises(AllocationError, match="IPv6"):
        a.assign(req("ns/req", families=(4, 6), require_all=True))
    assert a.get("ns/req") is None and a.usage("v4") == 0
    got = a.assign(req("ns/pref", families=(4, 6), require_all=False))
    assert [x.version for x in got.ips] == [4]
    a.set_pools([pool("v4", V4, default=True), pool("v6", V6, default=True)])
    again = a.assign(req("ns/pref", families=(4, 6), require_all=False))
    assert again.ips[0] == got.ips[0] and again.ips[1].version == 6  # missing family added, v4 kept


def test_dual_stack_with_two_requested_ips_and_pools() -> None:
    a = alloc(pool("v4", V4), pool("v6", V6))
    got = a.assign(req(families=(4, 6), ips=("192.168.1.3", "2001:db8::3"), pools=("v4", "v6")))
    assert [str(x) for x in got.ips] == ["192.168.1.3", "2001:db8::3"]


def test_dropping_a_family_releases_only_that_ip() -> None:
    a = alloc(pool("v4", V4, default=True), pool("v6", V6, default=True))
    both = a.assign(req(families=(4, 6)))
    single = a.assign(req(families=(4,)))
    assert single.ips == both.ips[:1] and a.usage("v6") == 0


# ---- big pools, restore ------------------------------------------------------------------------


def test_ipv6_slash_64_allocates_without_scanning() -> None:
    a = alloc(pool("big", "2001:db8:0:1::/64", default=True))
    for i in range(2000):
        a.assign(req(f"ns/s{i}", families=(6,)))
    assert a.usage("big") == 2000
    assert str(a.get("ns/s1999").ips[0]) == "2001:db8:0:1::7cf"  # type: ignore[union-attr]


def test_restore_keeps_go_openelb_state_exactly_even_shared_and_disabled() -> None:
    a = alloc(pool("p", V4, disabled=True))
    a.restore(req("ns/a"), [ip("192.168.1.5")])
    a.restore(req("ns/b"), [ip("192.168.1.5")])
    assert a.used("p") == {"192.168.1.5": ["ns/a", "ns/b"]}
    assert a.restore(req("ns/c"), [ip("10.0.0.1")]) is None  # in no pool: not restored
    assert a.assign(req("ns/a")).ips == (ip("192.168.1.5"),)  # sticky even though p is disabled


# ---- property: no duplicate unshared IP, no leak -------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("assign"), st.integers(0, 7), st.sampled_from([None, "k"]), st.integers(1, 3)),
        st.tuples(st.just("pin"), st.integers(0, 7), st.integers(0, 9), st.integers(1, 3)),
        st.tuples(st.just("release"), st.integers(0, 7), st.none(), st.integers(0, 0)),
        st.tuples(st.just("pools"), st.integers(0, 2), st.none(), st.integers(0, 0)),
    ),
    max_size=60,
)
POOL_SETS = [
    [pool("a", "198.51.100.0/29", default=True)],
    [pool("a", "198.51.100.0/30", default=True), pool("b", "198.51.100.8/30")],
    [pool("b", "198.51.100.4/30", default=True)],
]


@settings(max_examples=300, deadline=None)
@given(ops)
def test_random_sequences_never_duplicate_or_leak(sequence: list[tuple[str, int, object, int]]) -> None:
    a = alloc(*POOL_SETS[0])
    for op, n, extra, port in sequence:
        key = f"ns/s{n}"
        try:
            if op == "assign":
                a.assign(req(key, share_key=extra, ports=tcp(port)))
            elif op == "pin":
                a.assign(req(key, ips=(f"198.51.100.{extra}",), ports=tcp(port)))
            elif op == "release":
                a.release(key)
            else:
                a.set_pools(POOL_SETS[n])
        except AllocationError:
            pass
        allocs = a.allocations()
        by_ip: dict[object, list[str]] = {}
        for k, al in allocs.items():
            for x in al.ips:
                by_ip.setdefault(x, []).append(k)
        for x, keys in by_ip.items():
            assert sorted(a.users(x)) == sorted(keys)
            if len(keys) > 1:  # shared: only by explicit request or same key, and ports disjoint
                members = [allocs[k] for k in keys]
                assert all(x in m.explicit for m in members) or len({m.share_key for m in members}) == 1
                seen: set[Port] = set()
                for m in members:
                    assert not (seen & m.ports)
                    seen |= m.ports
        for name, p in a.pools.items():  # no leak: usage equals the distinct IPs in that pool
            assert a.usage(name) == len([x for x in by_ip if p.range.contains(x)])
            assert all(p.range.contains(ipaddress.ip_address(u)) for u in a.used(name))
