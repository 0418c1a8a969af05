"""BgpConf and BgpPeer objects (OpenELB v1alpha2, GoBGP field names) → what one node's speaker runs.

Pure functions over the objects' dicts, so the rules are testable without an apiserver:
OpenELB's defaults (one AFI entry with ADD-PATH sendMax 10 when `afiSafis` is omitted), the
per-rack AS, the router id falling back to the node's InternalIP, node selectors, and the list
of fields an announce-only speaker accepts but cannot act on (reported in a Warning Event).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from openelb.api import bgp as bgp_rules
from openelb.api import names
from openelb.protocols.bgp import codec as c

RACK_LABEL = names.LABEL_RACK
DEFAULT_HOLD = 90
DEFAULT_CONNECT_RETRY = 5.0
"""Seconds before the first reconnect (GoBGP's default is 5 s too); doubles up to 30 s."""
FAMILIES = {("AFI_IP", "SAFI_UNICAST"): c.IPV4_UNICAST, ("AFI_IP6", "SAFI_UNICAST"): c.IPV6_UNICAST}


class ConfigError(ValueError):
    """The object cannot be acted upon; the message says which field and why."""


@dataclass(frozen=True)
class GlobalConfig:
    asn: int
    router_id: str
    listen_port: int
    """-1: do not listen."""
    listen_addresses: tuple[str, ...]
    graceful_restart: bool
    restart_time: int
    ignored: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class BfdConfig:
    min_rx_ms: int = 300
    min_tx_ms: int = 300
    multiplier: int = 3


@dataclass(frozen=True)
class PeerConfig:
    name: str
    address: str
    peer_as: int
    local_as: int
    """0: the global AS."""
    port: int = 179
    passive: bool = False
    password: str = ""
    admin_down: bool = False
    hold_time: int = DEFAULT_HOLD
    keepalive: int | None = None
    connect_retry: float = DEFAULT_CONNECT_RETRY
    ttl: int | None = None
    """Outgoing TTL: 1 for directly connected eBGP, the multihop TTL, or the system default (iBGP)."""
    families: frozenset[c.Family] = frozenset()
    add_path_send: frozenset[c.Family] = frozenset()
    graceful_restart: bool | None = None
    """None: as BgpConf says."""
    bfd: BfdConfig | None = None
    ignored: tuple[str, ...] = field(default=(), compare=False)
    """Fields set on the object that an announce-only speaker does not act on."""


def _int(value: Any, what: str, default: int = 0) -> int:
    if value in (None, ""):
        return default
    try:
        return int(value)  # GoBGP's uint64 timers travel as strings
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: {value!r} is not a number") from exc


def global_config(spec: Mapping[str, Any], node_ip: str | None, node_labels: Mapping[str, str]) -> GlobalConfig:
    problems = bgp_rules.validate_bgpconf(spec)
    if problems:  # the webhook refuses these; with it off, this BgpConf is not used (a Warning Event)
        raise ConfigError("; ".join(problems))
    asn = _int(spec.get("as"), "spec.as")
    router_id = str(spec.get("routerId") or "")
    rack = node_labels.get(RACK_LABEL)
    per_rack = spec.get("asPerRack") or {}
    if rack and per_rack and _int(per_rack.get(rack), f"spec.asPerRack.{rack}") > 0:
        asn = _int(per_rack[rack], f"spec.asPerRack.{rack}")
        router_id = ""  # as OpenELB: a per-rack AS always takes the node's address as router id
    if not router_id:
        v4 = node_ip if node_ip and ipaddress.ip_address(node_ip).version == 4 else None
        if v4 is None:
            raise ConfigError("spec.routerId is empty and the node has no IPv4 InternalIP to use instead")
        router_id = v4
    try:
        ipaddress.IPv4Address(router_id)
    except ValueError as exc:
        raise ConfigError(f"spec.routerId: {router_id!r} is not an IPv4 address") from exc
    if not 0 < asn < 2**32:
        raise ConfigError(f"spec.as: {asn} is not a valid AS number")
    port = _int(spec.get("listenPort"), "spec.listenPort")
    gr = spec.get("gracefulRestart") or {}
    # policy: GoBGP TOML policies (an announce-only speaker exports exactly its Service routes);
    # families/useMultiplePaths: GoBGP RIB settings, meaningless without a RIB.
    ignored = tuple(f"spec.{k}" for k in ("policy", "families", "useMultiplePaths") if spec.get(k))
    return GlobalConfig(
        asn=asn,
        router_id=router_id,
        listen_port=port or 179,
        listen_addresses=tuple(spec.get("listenAddresses") or ()),
        graceful_restart=bool(gr.get("enabled")),
        restart_time=_int(gr.get("restartTime"), "spec.gracefulRestart.restartTime", 120) or 120,
        ignored=ignored,
    )


UNSUPPORTED_CONF = ("peerGroup", "removePrivateAs", "routeFlapDamping", "neighborInterface", "vrf", "allowOwnAs")


def peer_config(name: str, spec: Mapping[str, Any]) -> PeerConfig:
    problems = bgp_rules.validate_bgppeer(spec)
    if problems:  # the webhook refuses these; with it off, only this peer is skipped (a Warning Event)
        raise ConfigError("; ".join(problems))
    conf = spec.get("conf")
    if not isinstance(conf, Mapping):
        raise ConfigError("spec.conf is required")
    address = str(conf.get("neighborAddress") or "")
    try:
        addr = ipaddress.ip_address(address)
    except ValueError as exc:
        raise ConfigError(f"spec.conf.neighborAddress: {address!r} is not an IP address") from exc
    peer_as = _int(conf.get("peerAs"), "spec.conf.peerAs")
    if not 0 < peer_as < 2**32:
        raise ConfigError("spec.conf.peerAs must be set")
    ignored = [f"spec.conf.{k}" for k in UNSUPPORTED_CONF if conf.get(k)]
    if conf.get("replacePeerAs"):
        ignored.append("spec.conf.replacePeerAs")
    transport = spec.get("transport") or {}
    ignored += [f"spec.transport.{k}" for k in ("mtuDiscovery", "tcpMss", "remoteAddress") if transport.get(k)]
    timers = (spec.get("timers") or {}).get("config") or {}
    if timers.get("minimumAdvertisementInterval"):
        ignored.append("spec.timers.config.minimumAdvertisementInterval")
    hold = _int(timers.get("holdTime"), "spec.timers.config.holdTime", DEFAULT_HOLD)
    if hold in (1, 2) or hold < 0 or hold > 65535:
        raise ConfigError(f"spec.timers.config.holdTime: {hold} (0 or 3..65535)")
    keepalive = _int(timers.get("keepaliveInterval"), "spec.timers.config.keepaliveInterval") or None
    if keepalive is not None and not 1 <= keepalive <= 21845:
        raise ConfigError(f"spec.timers.config.keepaliveInterval: {keepalive} (1..21845, at most a third of holdTime)")
    retry = float(_int(timers.get("connectRetry"), "spec.timers.config.connectRetry") or DEFAULT_CONNECT_RETRY)
    multihop = spec.get("ebgpMultihop") or {}
    local_as = _int(conf.get("localAs"), "spec.conf.localAs")
    families, add_path = _families(spec.get("afiSafis"), addr.version, ignored)
    gr = spec.get("gracefulRestart")
    bfd = spec.get("bfd") or {}
    return PeerConfig(
        name=name,
        address=str(addr),
        peer_as=peer_as,
        local_as=local_as,
        port=_int(transport.get("remotePort"), "spec.transport.remotePort", 179) or 179,
        passive=bool(transport.get("passiveMode")),
        password=str(conf.get("authPassword") or ""),
        admin_down=bool(conf.get("adminDown")),
        hold_time=hold,
        keepalive=keepalive,
        connect_retry=retry,
        ttl=_int(multihop.get("multihopTtl"), "spec.ebgpMultihop.multihopTtl", 255)
        if multihop.get("enabled")
        else None,
        families=families,
        add_path_send=add_path,
        graceful_restart=bool(gr.get("enabled")) if isinstance(gr, Mapping) and "enabled" in gr else None,
        bfd=BfdConfig(
            min_rx_ms=_int(bfd.get("minRx"), "spec.bfd.minRx", 300) or 300,
            min_tx_ms=_int(bfd.get("minTx"), "spec.bfd.minTx", 300) or 300,
            multiplier=_int(bfd.get("multiplier"), "spec.bfd.multiplier", 3) or 3,
        )
        if bfd.get("enabled")
        else None,
        ignored=tuple(ignored),
    )


def _families(afi_safis: Any, version: int, ignored: list[str]) -> tuple[frozenset[c.Family], frozenset[c.Family]]:
    default = c.IPV4_UNICAST if version == 4 else c.IPV6_UNICAST
    if not afi_safis:
        return frozenset({default}), frozenset({default})  # OpenELB injects addPaths.sendMax: 10
    families: set[c.Family] = set()
    add_path: set[c.Family] = set()
    for i, entry in enumerate(afi_safis):
        cfg = (entry or {}).get("config")
        if not cfg:
            fam = default  # as OpenELB: an entry without config gets the neighbor's family
        else:
            if cfg.get("enabled") is False:
                continue
            f = cfg.get("family") or {}
            key = (str(f.get("afi") or ""), str(f.get("safi") or "SAFI_UNICAST"))
            if key not in FAMILIES:
                ignored.append(f"spec.afiSafis[{i}].config.family ({key[0]}/{key[1]}: only unicast IPv4/IPv6)")
                continue
            fam = FAMILIES[key]
        families.add(fam)
        if _int((((entry or {}).get("addPaths") or {}).get("config") or {}).get("sendMax"), "sendMax") > 0:
            add_path.add(fam)
    if not families:
        raise ConfigError("spec.afiSafis enables no supported family (AFI_IP or AFI_IP6 with SAFI_UNICAST)")
    return frozenset(families), frozenset(add_path)


def selector_matches(  # noqa: PLR0911
    selector: Mapping[str, Any] | None, labels: Mapping[str, str]
) -> bool:
    """metav1.LabelSelector semantics; an absent selector matches every node."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True
