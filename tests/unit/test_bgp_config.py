"""BgpConf/BgpPeer (OpenELB v1alpha2 manifests) → speaker configuration, and BGP next hops."""

from __future__ import annotations

import pytest

from openelb.protocols.bgp import codec as c
from openelb.speaker import desired
from openelb.speaker.bgp import config as cfg


def test_bgpconf_defaults_rack_as_and_router_id() -> None:
    g = cfg.global_config({"as": 50000, "listenPort": 17900}, "198.18.0.11", {})
    assert (g.asn, g.router_id, g.listen_port, g.graceful_restart) == (50000, "198.18.0.11", 17900, False)
    g = cfg.global_config(
        {"as": 50000, "routerId": "192.0.2.9", "asPerRack": {"r1": 65101}}, "198.18.0.11", {cfg.RACK_LABEL: "r1"}
    )
    assert (g.asn, g.router_id) == (65101, "198.18.0.11")  # per-rack AS: node address as router id, as OpenELB
    assert cfg.global_config({"as": 1, "listenPort": -1}, "198.18.0.11", {}).listen_port == -1
    assert cfg.global_config({"as": 1, "policy": "cm"}, "198.18.0.11", {}).ignored == ("spec.policy",)
    with pytest.raises(cfg.ConfigError, match="routerId"):
        cfg.global_config({"as": 1, "routerId": "x"}, "198.18.0.11", {})
    with pytest.raises(cfg.ConfigError, match="IPv4 InternalIP"):
        cfg.global_config({"as": 1}, None, {})


def test_seed_bgppeer_gets_openelb_defaults() -> None:
    p = cfg.peer_config("peer", {"conf": {"peerAs": 50001, "neighborAddress": "198.18.0.2"}})
    assert p.families == {c.IPV4_UNICAST} and p.add_path_send == {c.IPV4_UNICAST}  # sendMax 10 injected
    assert (p.port, p.passive, p.hold_time, p.ttl, p.bfd) == (179, False, 90, None, None)
    v6 = cfg.peer_config("p6", {"conf": {"peerAs": 1, "neighborAddress": "2001:db8::2"}})
    assert v6.families == {c.IPV6_UNICAST}


def test_bgppeer_fields() -> None:
    spec = {
        "conf": {"peerAs": 4200000001, "neighborAddress": "198.18.0.2", "authPassword": "k", "vrf": "x"},
        "timers": {"config": {"holdTime": "9", "keepaliveInterval": "3", "minimumAdvertisementInterval": "1"}},
        "transport": {"passiveMode": True, "remotePort": 1790, "tcpMss": 1400},
        "ebgpMultihop": {"enabled": True, "multihopTtl": 3},
        "afiSafis": [
            {"config": {"family": {"afi": "AFI_IP", "safi": "SAFI_UNICAST"}, "enabled": True}},
            {
                "config": {"family": {"afi": "AFI_IP6", "safi": "SAFI_UNICAST"}, "enabled": True},
                "addPaths": {"config": {"sendMax": 8}},
            },
            {"config": {"family": {"afi": "AFI_L2VPN", "safi": "SAFI_EVPN"}, "enabled": True}},
        ],
        "bfd": {"enabled": True, "minRx": 100, "minTx": 100, "multiplier": 3},
    }
    p = cfg.peer_config("p", spec)
    assert (p.peer_as, p.password, p.hold_time, p.keepalive, p.passive, p.port, p.ttl) == (
        4200000001,
        "k",
        9,
        3,
        True,
        1790,
        3,
    )
    assert p.families == {c.IPV4_UNICAST, c.IPV6_UNICAST} and p.add_path_send == {c.IPV6_UNICAST}
    assert p.bfd == cfg.BfdConfig(100, 100, 3)
    assert "spec.conf.vrf" in p.ignored and "spec.transport.tcpMss" in p.ignored
    assert "spec.timers.config.minimumAdvertisementInterval" in p.ignored
    assert any("AFI_L2VPN" in f for f in p.ignored)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({}, "spec.conf is required"),
        ({"conf": {"peerAs": 1, "neighborAddress": "nope"}}, "neighborAddress"),
        ({"conf": {"neighborAddress": "198.18.0.2"}}, "peerAs"),
        ({"conf": {"peerAs": 1, "neighborAddress": "198.18.0.2"}, "timers": {"config": {"holdTime": "2"}}}, "holdTime"),
        (
            {"conf": {"peerAs": 1, "neighborAddress": "198.18.0.2"}, "timers": {"config": {"holdTime": "x"}}},
            "whole number of seconds",
        ),
        (
            {"conf": {"peerAs": 1, "neighborAddress": "198.18.0.2"}, "timers": {"config": {"keepaliveInterval": "-1"}}},
            "keepaliveInterval: '-1'",
        ),
    ],
)
def test_bad_bgppeer_is_a_clear_error(spec: dict, match: str) -> None:
    with pytest.raises(cfg.ConfigError, match=match):
        cfg.peer_config("p", spec)


PEER = {"conf": {"peerAs": 65000, "neighborAddress": "198.18.0.2"}}
FOUND = [  # issue 14 #5: accepted by schema, webhook and speaker, then crashed an encoder or a timer
    ({**PEER, "bfd": {"enabled": True, "multiplier": 256}}, "bfd.multiplier"),
    ({**PEER, "bfd": {"enabled": True, "minTx": 5000000}}, "bfd.minTx"),
    ({**PEER, "bfd": {"enabled": True, "minRx": -1}}, "bfd.minRx"),
    ({"conf": {**PEER["conf"], "localAs": -1}}, "conf.localAs"),
    ({"conf": {**PEER["conf"], "localAs": 2**32}}, "conf.localAs"),
    ({**PEER, "transport": {"remotePort": 70000}}, "remotePort"),
    ({**PEER, "ebgpMultihop": {"enabled": True, "multihopTtl": 300}}, "multihopTtl"),
    ({"conf": {"peerAs": 65000, "neighborAddress": "255.255.255.255"}}, "not a unicast"),
    ({"conf": {"peerAs": 65000, "neighborAddress": "ff02::1"}}, "not a unicast"),
    ({"conf": {"peerAs": 65000, "neighborAddress": "0.0.0.0"}}, "not a unicast"),
    ({"conf": {**PEER["conf"], "authPassword": "k" * 81}}, "authPassword"),
]


@pytest.mark.parametrize(("spec", "match"), FOUND)
def test_out_of_range_peers_are_refused_by_webhook_and_speaker_alike(spec: dict, match: str) -> None:
    from openelb.controller.admission import review_bgppeer

    verdict = review_bgppeer({"operation": "CREATE", "object": {"spec": spec}})
    assert not verdict.allowed and match in verdict.message, verdict.message
    with pytest.raises(cfg.ConfigError, match=match.replace(".", r"\.")):
        cfg.peer_config("p", spec)  # with the webhook off: that peer fails, with the same words


def test_router_id_zero_and_bad_bgpconf_ranges() -> None:
    from openelb.controller.admission import review_bgpconf

    for spec, match in (
        ({"as": 65000, "routerId": "0.0.0.0"}, "BGP identifier"),
        ({"as": 65000, "listenPort": 70000}, "listenPort"),
        ({"as": 65000, "gracefulRestart": {"enabled": True, "restartTime": 5000}}, "restartTime"),
        ({"as": 65000, "asPerRack": {"r1": 0}}, "asPerRack"),
    ):
        verdict = review_bgpconf({"operation": "CREATE", "object": {"spec": spec}})
        assert not verdict.allowed and match in verdict.message, (spec, verdict.message)
        with pytest.raises(cfg.ConfigError, match=match):
            cfg.global_config(spec, "198.18.0.11", {})


def test_crd_schema_carries_the_same_ranges() -> None:
    from openelb.api import bgp, crds

    peer = crds.BGPPEER_SPEC["properties"]
    assert peer["bfd"]["properties"]["multiplier"]["maximum"] == bgp.BGPPEER_INTS["bfd.multiplier"][1] == 255
    assert peer["transport"]["properties"]["remotePort"]["maximum"] == 65535
    assert peer["conf"]["properties"]["localAs"]["minimum"] == 0
    assert crds.BGPCONF_SPEC["properties"]["listenPort"]["minimum"] == -1


def test_node_selector() -> None:
    labels = {"zone": "a", "rack": "r1"}
    assert cfg.selector_matches(None, labels)
    assert cfg.selector_matches({"matchLabels": {"zone": "a"}}, labels)
    assert not cfg.selector_matches({"matchLabels": {"zone": "b"}}, labels)
    assert cfg.selector_matches(
        {"matchExpressions": [{"key": "rack", "operator": "In", "values": ["r1", "r2"]}]}, labels
    )
    assert not cfg.selector_matches(
        {"matchExpressions": [{"key": "rack", "operator": "NotIn", "values": ["r1"]}]}, labels
    )
    assert not cfg.selector_matches({"matchExpressions": [{"key": "x", "operator": "Exists"}]}, labels)
    assert cfg.selector_matches({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}, labels)


def node(name: str, ip: str, ip6: str, ready: bool = True, **labels: str) -> desired.NodeInfo:
    return desired.NodeInfo(name, ready, labels, (ip, ip6))


NODES = [
    node("n1", "198.18.0.11", "2001:db8::11"),
    node("n2", "198.18.0.12", "2001:db8::12", **{cfg.RACK_LABEL: "b"}),
    node("n3", "198.18.0.13", "2001:db8::13", ready=False),
    node("n4", "198.18.0.14", "2001:db8::14", **{desired.EXCLUDE_LABEL: ""}),
]


def test_next_hops_follow_eligibility_liveness_endpoints_and_rack() -> None:
    svc = desired.ServiceInfo("default/a", ("198.51.100.7", "2001:db8:ff::7"), False)
    hops = desired.bgp_next_hops(["198.51.100.7", "2001:db8:ff::7"], [svc], NODES, None)
    assert hops == {"198.51.100.7": ("198.18.0.11", "198.18.0.12"), "2001:db8:ff::7": ("2001:db8::11", "2001:db8::12")}
    # a node whose speaker went silent leaves every next-hop set
    assert desired.bgp_next_hops(["198.51.100.7"], [svc], NODES, {"n1"}) == {"198.51.100.7": ("198.18.0.11",)}
    # externalTrafficPolicy Local: only nodes with a ready endpoint; none -> withdrawn
    local = desired.ServiceInfo("default/a", ("198.51.100.7",), True, frozenset({"n2"}))
    assert desired.bgp_next_hops(["198.51.100.7"], [local], NODES, None) == {"198.51.100.7": ("198.18.0.12",)}
    assert (
        desired.bgp_next_hops(["198.51.100.7"], [desired.ServiceInfo("d/a", ("198.51.100.7",), True)], NODES, None)
        == {}
    )
    # racks: only next hops of the speaker's own rack
    assert desired.bgp_next_hops(["198.51.100.7"], [svc], NODES, None, rack="b") == {"198.51.100.7": ("198.18.0.12",)}
    # IPs not used by a Service are not announced
    assert desired.bgp_next_hops(["198.51.100.9"], [svc], NODES, None) == {}


def test_routes_decided_before_the_backend_exists_are_announced() -> None:
    """The speaker decides before BGP mode's first reconfiguration creates the backend: those
    routes must not be lost (a fresh speaker in a quiet cluster would announce nothing)."""
    import asyncio
    from typing import Any, cast

    from openelb.protocols.bgp.session import parse_prefix
    from openelb.speaker.bgp.mode import BgpMode

    async def scenario() -> dict[Any, tuple[str, ...]]:
        me = desired.NodeInfo("node-1", True, {}, ("198.18.0.11",))
        mode = BgpMode(cast(Any, None), "node-1", cast(Any, None), lambda: me)
        mode.update_routes({"203.0.113.10": ("198.18.0.11", "198.18.0.12")})
        await mode._reconfigure()
        assert mode.backend is not None
        routes = dict(mode.backend.routes)  # type: ignore[attr-defined]
        await mode.close(graceful_restart=False)
        return routes

    assert asyncio.run(scenario()) == {parse_prefix("203.0.113.10"): ("198.18.0.11", "198.18.0.12")}
