"""The speaker's Prometheus metrics, read at scrape time from the components' own counters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from openelb.kube.memberlist import fingerprint
from openelb.speaker.layer2 import stats as layer2_stats

if TYPE_CHECKING:
    from openelb.speaker.main import Speaker

LAYER2_COUNTERS = (
    ("requests_received", "ARP requests and Neighbor Solicitations received for owned IPs"),
    ("responses_sent", "ARP replies and Neighbor Advertisements sent"),
    ("gratuitous_sent", "gratuitous ARP and unsolicited NA packets sent"),
    ("malformed", "frames dropped as malformed or off-link"),
    ("receive_errors", "socket errors on receive (e.g. the link went down); the responder keeps listening"),
)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc)
    c.add_metric([], value)
    return c


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


class SpeakerCollector:
    def __init__(self, speaker: Speaker) -> None:
        self.speaker = speaker

    def collect(self) -> Iterator[Metric]:
        sp = self.speaker
        owned = GaugeMetricFamily("openelb_speaker_owned_ips", "IPs this node announces", labels=["family"])
        mine = list(sp.announcer.owned) if sp.announcer else []
        v6 = sum(1 for ip in mine if ":" in ip)
        owned.add_metric(["IPv4"], len(mine) - v6)
        owned.add_metric(["IPv6"], v6)
        yield owned
        for name, doc in LAYER2_COUNTERS:
            yield _counter(f"openelb_layer2_{name}", doc, float(layer2_stats[name]))
        yield _counter("openelb_speaker_ownership_gained", "IPs this node took over", float(sp.counts["gained"]))
        yield _counter(
            "openelb_speaker_owner_moves",
            "Layer2 IPs whose owner moved from one node to another, as this speaker decided",
            float(sp.counts["moves"]),
        )
        yield _counter(
            "openelb_speaker_plan_checks", "periodic comparisons of the incremental plan with a full recompute",
            float(sp.counts["checks"]),
        )  # fmt: skip
        yield _counter(
            "openelb_speaker_plan_inconsistencies", "checks where the incremental plan differed (then replaced)",
            float(sp.counts["inconsistent"]),
        )  # fmt: skip
        yield _counter(
            "openelb_speaker_announcer_writes", "Service announcer annotations written", float(sp.marks.writes)
        )
        yield _counter(
            "openelb_speaker_loop_stalls", "times the speaker's event loop was blocked for more than 2 s",
            float(sp.heartbeats.stalls if sp.heartbeats else 0),
        )  # fmt: skip
        alive = sp.heartbeats.alive if sp.heartbeats else frozenset({sp.opts.node})
        yield _gauge("openelb_speaker_live_peers", "speakers heard, this one included", float(len(alive)))
        if sp.heartbeats is not None:
            keys = GaugeMetricFamily(
                "openelb_speaker_heartbeat_keys",
                "heartbeat keys in use, by fingerprint (sha256, 12 hex); signs=true for the one that signs. "
                "A rotation step is complete when every speaker shows the same set",
                labels=["fingerprint", "signs"],
            )
            for i, k in enumerate(sp.heartbeats.keys):
                keys.add_metric([fingerprint(k), "true" if i == 0 else "false"], 1.0)
            yield keys
        backend = sp.bgp.backend if sp.bgp else None
        if backend is not None:
            labels = ["peer", "address"]
            up = GaugeMetricFamily("openelb_bgp_session_established", "1 while the session is up", labels=labels)
            paths = GaugeMetricFamily("openelb_bgp_paths_sent", "paths in the Adj-RIB-Out", labels=labels)
            bfd = GaugeMetricFamily("openelb_bfd_up", "1 while BFD is Up (peers with BFD)", labels=labels)
            flaps = CounterMetricFamily("openelb_bgp_session_flaps", "Established sessions lost", labels=labels)
            for st in backend.status():
                key = [st.name, st.address]
                up.add_metric(key, float(st.state == "ESTABLISHED"))
                paths.add_metric(key, float(st.prefixes_sent))
                flaps.add_metric(key, float(st.flops))
                if st.bfd != "disabled":
                    bfd.add_metric(key, float(st.bfd == "up"))
            yield from (up, paths, bfd, flaps)
        yield from _vip_metrics(sp)


VIP_BAD = (("bad_ttl", "ttl"), ("bad_packet", "packet"), ("unknown_vrid", "unknown_vrid"))


def _vip_metrics(sp: Speaker) -> Iterator[Metric]:
    """Per router (bounded by the VRIDs, 255 at most), not per IP: 10,000 IPs stay 10,000 fewer series."""
    routers = sp.plan.vip.routers
    masters = dict(sp.vip.masters) if sp.vip else {}
    state = GaugeMetricFamily(
        "openelb_vip_master", "1 while this node is VRRP master of the router, 0 while backup", labels=["eip", "vrid"]
    )
    for key, cfg in sorted(routers.items()):
        state.add_metric([key[0], str(cfg.vrid)], float(key in masters))
    yield state
    yield _gauge("openelb_vip_master_ips", "IPs this node holds as VRRP master", float(len(sp.vip_ips)))
    stats = sp.vip.stats if sp.vip else {}
    yield _counter("openelb_vip_transitions", "VRRP master/backup transitions", float(stats.get("transitions", 0)))
    yield _counter("openelb_vip_adverts_sent", "VRRP advertisements sent", float(stats.get("adverts_sent", 0)))
    yield _counter(
        "openelb_vip_adverts_received", "VRRP advertisements received for our routers",
        float(stats.get("adverts_received", 0)),
    )  # fmt: skip
    bad = CounterMetricFamily("openelb_vip_bad_adverts", "VRRP packets dropped, by reason", labels=["reason"])
    for stat, reason in VIP_BAD:
        bad.add_metric([reason], float(stats.get(stat, 0)))
    yield bad
    yield _gauge(
        "openelb_vip_unannounced_node_sets", "Local node sets without a VRID left (pin a larger range)",
        float(len(sp.plan.vip.unannounced)),
    )  # fmt: skip
