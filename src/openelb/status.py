"""`openelb status` (also `kubectl openelb status`): what OpenELB is doing, from the API alone.

Pools with their usage, Services with their IPs, mode and announcing node (Layer2) or BGP next
hops (computed by the speakers' own rules from Nodes and EndpointSlices), the BGP sessions of every
node with their BFD state (from `BgpPeer.status`), and for pending Services the reason from their
latest `AssignIPFailed` Event. Collecting reads the API; rendering
is pure, so the table and the JSON/YAML forms always say the same thing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml
from lightkube import Client
from lightkube.resources.core_v1 import Event, Node, Service
from lightkube.resources.discovery_v1 import EndpointSlice

from openelb.api import names
from openelb.api.eip import EipView
from openelb.api.ingress import ingress_ips
from openelb.api.ranges import AddressError, parse_range
from openelb.controller.servicepolicy import Policy, is_ours
from openelb.ipam.pools import PoolModel
from openelb.kube.resources import BgpPeer, Eip
from openelb.speaker import desired, inputs


@dataclass
class PoolRow:
    name: str
    address: str
    family: str
    protocol: str
    usage: int
    size: int
    default: bool
    disabled: bool
    ready: bool


@dataclass
class ServiceRow:
    namespace: str
    name: str
    ips: list[str]
    pool: str
    mode: str
    announcer: str
    pending: str = ""


@dataclass
class SessionRow:
    node: str
    peer: str
    address: str
    state: str
    bfd: str
    prefixes: int
    uptime: str
    error: str


@dataclass
class Snapshot:
    pools: list[PoolRow] = field(default_factory=list)
    services: list[ServiceRow] = field(default_factory=list)
    sessions: list[SessionRow] = field(default_factory=list)


def collect(client: Client, policy: Policy | None = None) -> Snapshot:
    policy = policy or Policy()
    snap = Snapshot()
    views = []
    for obj in client.list(Eip):
        view = EipView.from_object(obj)
        views.append(view)
        status = obj.get("status") or {}
        try:
            rng = parse_range(view.address)
            family, size = f"IPv{rng.version}", rng.size
        except AddressError:
            family, size = "?", 0
        snap.pools.append(
            PoolRow(
                view.name,
                view.address,
                family,
                view.protocol,
                int(status.get("usage") or 0),
                size,
                view.default,
                view.disable,
                bool(status.get("ready", False)),
            )
        )
    # The pool an IP is announced through, by the rules the controller and the speakers share.
    model = PoolModel(views)
    reasons = _pending_reasons(client)
    services = list(client.list(Service, namespace="*"))
    hops = _bgp_next_hops(client, services, model)
    for svc in services:
        md = svc.metadata
        if md is None or not (is_ours(svc, policy) or names.LABEL_POOL in (md.labels or {})):
            continue
        ips = [str(ip) for ip in ingress_ips(svc)]
        pools = [p for p in (model.pool_of(ip) for ip in ips) if p is not None]
        pool = pools[0].name if pools else (md.labels or {}).get(names.LABEL_POOL, "")
        mode = pools[0].protocol if pools else ""
        key = f"{md.namespace}/{md.name}"
        snap.services.append(
            ServiceRow(
                md.namespace or "",
                md.name or "",
                ips,
                pool,
                mode,
                ",".join(sorted({n for ip in ips for n in hops.get(ip, ())}))
                if mode == "bgp"
                else (md.annotations or {}).get(
                    names.ANNOTATION_VIP_MASTER if mode == "vip" else names.ANNOTATION_LAYER2_ANNOUNCER, ""
                ),
                "" if ips else reasons.get(key, "waiting for the controller"),
            )
        )
    snap.sessions = _sessions(client)
    snap.pools.sort(key=lambda p: p.name)
    snap.services.sort(key=lambda s: (s.namespace, s.name))
    return snap


def _bgp_next_hops(client: Client, services: list[Service], model: PoolModel) -> dict[str, tuple[str, ...]]:
    """IP → the names of the nodes the speakers announce as its next hops (liveness aside)."""
    if not any(p.protocol == "bgp" and p.serving for p in model.pools):
        return {}
    svc_infos = inputs.service_infos(services, client.list(EndpointSlice, namespace="*"))
    nodes = inputs.node_infos(client.list(Node))
    ips = set()
    for s in svc_infos:
        for ip in s.ips:
            pool = model.pool_of(ip)
            if pool is not None and pool.protocol == "bgp" and pool.serving:
                ips.add(ip)
    by_address = {a: n.name for n in nodes for a in n.addresses}
    return {
        ip: tuple(by_address.get(a, a) for a in addrs)
        for ip, addrs in desired.bgp_next_hops(ips, svc_infos, nodes, None).items()
    }


def _sessions(client: Client) -> list[SessionRow]:
    rows = []
    for peer in client.list(BgpPeer):
        status = (peer.get("status") or {}).get("nodesPeerStatus") or {}
        for node, st in status.items():
            ps, timers = st.get("peerState") or {}, st.get("timersState") or {}
            up = int(timers.get("uptime") or 0) if ps.get("sessionState") == "ESTABLISHED" else 0
            rows.append(
                SessionRow(
                    node,
                    peer.metadata.name if peer.metadata and peer.metadata.name else "",
                    str(ps.get("neighborAddress", "")),
                    str(ps.get("sessionState", "")),
                    str(st.get("bfd", "")),
                    int(st.get("prefixesSent") or 0),
                    f"{up}s" if up else "-",
                    str(st.get("lastError", "")),
                )
            )
    return sorted(rows, key=lambda r: (r.node, r.peer))


def _pending_reasons(client: Client) -> dict[str, str]:
    """Latest AssignIPFailed message per Service."""
    latest: dict[str, tuple[str, str]] = {}
    for ev in client.list(Event, namespace="*", fields={"reason": "AssignIPFailed"}):
        obj = ev.involvedObject
        when = str(ev.lastTimestamp or ev.eventTime or "")
        key = f"{obj.namespace}/{obj.name}"
        if key not in latest or when >= latest[key][0]:
            latest[key] = (when, ev.message or "")
    return {k: msg for k, (_when, msg) in latest.items()}


def as_dict(snap: Snapshot) -> dict[str, Any]:
    return asdict(snap)


def render(snap: Snapshot, output: str = "table") -> str:
    if output == "json":
        return json.dumps(as_dict(snap), indent=2)
    if output == "yaml":
        return yaml.safe_dump(as_dict(snap), sort_keys=False)
    return render_table(snap)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]


def render_table(snap: Snapshot) -> str:
    pools = [
        [
            p.name + (" (default)" if p.default else ""),
            p.address,
            p.family,
            p.protocol,
            f"{p.usage}/{p.size}",
            "disabled" if p.disabled else ("ready" if p.ready else "NOT READY"),
        ]
        for p in snap.pools
    ]
    services = [
        [
            f"{s.namespace}/{s.name}",
            ",".join(s.ips) or "<pending>",
            s.pool or "-",
            s.mode or "-",
            s.announcer or "-",
            s.pending,
        ]
        for s in snap.services
    ]
    out = ["POOLS", *_table(["NAME", "ADDRESS", "FAMILY", "MODE", "USED", "STATE"], pools), ""]
    out += ["SERVICES", *_table(["SERVICE", "IPS", "POOL", "MODE", "ANNOUNCED BY", "PENDING REASON"], services)]
    if snap.sessions:
        sessions = [
            [s.node, f"{s.peer} ({s.address})", s.state, s.bfd, str(s.prefixes), s.uptime, s.error]
            for s in snap.sessions
        ]
        out += ["", "BGP SESSIONS"]
        out += _table(["NODE", "PEER", "STATE", "BFD", "PATHS SENT", "UP", "LAST ERROR"], sessions)
    return "\n".join(out)
