from openelb.speaker.desired import (
    EXCLUDE_LABEL,
    NodeInfo,
    ServiceInfo,
    announcements,
    heartbeat_peers,
    rank,
    ranked,
)

NODES = [NodeInfo("node-1", True), NodeInfo("node-2", True), NodeInfo("node-3", True)]
ALL = {"node-1", "node-2", "node-3"}
EIPS = {"pool": ("eth0", ["198.18.0.200", "198.18.0.201"])}


def svc(key: str, *ips: str, local: bool = False, eps: tuple[str, ...] = ()) -> ServiceInfo:
    return ServiceInfo(key, ips, local, frozenset(eps))


def test_owner_is_the_lowest_hash_and_all_speakers_agree() -> None:
    ann = announcements(EIPS, [svc("ns/a", "198.18.0.200")], NODES, ALL)
    expected = min(ALL, key=lambda n: rank(n, "198.18.0.200"))
    assert ann["198.18.0.200"].owner == expected == ranked("198.18.0.200", ALL)[0]
    assert ann["198.18.0.200"].interface == "eth0" and ann["198.18.0.200"].services == ("ns/a",)
    assert "198.18.0.201" not in ann  # in the pool but used by nobody: not announced


def test_only_eligible_nodes_are_candidates() -> None:
    nodes = [NodeInfo("node-1", False), NodeInfo("node-2", True, {EXCLUDE_LABEL: ""}), NodeInfo("node-3", True)]
    ann = announcements(EIPS, [svc("ns/a", "198.18.0.200")], nodes, ALL)
    assert ann["198.18.0.200"].candidates == ("node-3",) and ann["198.18.0.200"].owner == "node-3"
    dead = announcements(EIPS, [svc("ns/a", "198.18.0.200")], NODES, {"node-1"})
    assert dead["198.18.0.200"].owner == "node-1"  # only node-1's speaker is alive


def test_losing_a_node_moves_only_its_ips() -> None:
    ips = [f"198.18.0.{i}" for i in range(200, 240)]
    eips = {"pool": ("eth0", ips)}
    services = [svc(f"ns/s{i}", ip) for i, ip in enumerate(ips)]
    before = announcements(eips, services, NODES, ALL)
    victim = before[ips[0]].owner
    after = announcements(eips, services, NODES, ALL - {victim})  # type: ignore[operator]
    for ip in ips:
        if before[ip].owner != victim:
            assert after[ip].owner == before[ip].owner
        else:
            assert after[ip].owner not in (victim, None)
    assert len({a.owner for a in before.values()}) == 3  # ownership spreads over the nodes


def test_local_traffic_policy_and_sharing_union() -> None:
    local = svc("ns/a", "198.18.0.200", local=True, eps=("node-2",))
    assert announcements(EIPS, [local], NODES, ALL)["198.18.0.200"].owner == "node-2"
    none = svc("ns/a", "198.18.0.200", local=True)
    assert announcements(EIPS, [none], NODES, ALL)["198.18.0.200"].owner is None
    shared = [local, svc("ns/b", "198.18.0.200", local=True, eps=("node-3",))]
    ann = announcements(EIPS, shared, NODES, ALL)["198.18.0.200"]
    assert sorted(ann.candidates) == ["node-2", "node-3"] and ann.services == ("ns/a", "ns/b")


def test_candidates_are_the_top_three_and_heartbeats_follow_them() -> None:
    nodes = [NodeInfo(f"n{i:02d}", True) for i in range(50)]
    everyone = {n.name for n in nodes}
    ips = [f"198.18.0.{i}" for i in range(10)]
    plan = announcements({"pool": ("eth0", ips)}, [svc(f"ns/s{i}", ip) for i, ip in enumerate(ips)], nodes, everyone)
    for ip in ips:
        a = plan[ip]
        assert len(a.candidates) == 3 and a.owner == a.candidates[0]
        assert list(a.candidates) == sorted(everyone, key=lambda n, ip=ip: rank(n, ip))[:3]
    # heartbeats: a node sends only to the candidates ranked below it: at most 3 pairs per IP,
    # however many nodes the cluster has
    total = sum(len(heartbeat_peers(plan, n)) for n in everyone)
    assert total <= 3 * len(ips)
    first = plan[ips[0]]
    single = {ips[0]: first}
    top, second, third = first.candidates
    assert heartbeat_peers(single, top) == {second, third}
    assert heartbeat_peers(single, second) == {third} and heartbeat_peers(single, third) == set()
    # the owner dies: the second candidate takes over; a node outside the top three never claims
    after = announcements({"pool": ("eth0", ips[:1])}, [svc("ns/s0", ips[0])], nodes, everyone - {first.candidates[0]})
    assert after[ips[0]].owner == first.candidates[1]
    outsider_view = everyone - set(first.candidates)
    assert (
        announcements({"pool": ("eth0", ips[:1])}, [svc("ns/s0", ips[0])], nodes, outsider_view)[ips[0]].owner is None
    )
