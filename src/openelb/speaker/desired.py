"""Which node announces which IP: a pure function every speaker computes alike.

Inputs are plain snapshots of the API (Eips, Services, EndpointSlices, Nodes) plus the set of
speakers this speaker currently hears. For each IP of a layer2 Eip in use, the *candidates* are
the first `top` (default 3) eligible nodes — Ready, not excluded from load balancers, and for
externalTrafficPolicy Local with a ready local endpoint (union over Services sharing the IP, as
OpenELB) — ranked by the SHA-256 of `node#ip` (OpenELB's hash); the owner is the first candidate
whose speaker is alive. Ownership spreads over nodes and moves only for the IPs of a node that
left, and a node only needs the heartbeats of the candidates ranked above it (`heartbeat_peers`),
so heartbeat traffic follows the IPs a node may own, not the cluster size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from openelb.api import names

EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
TOP = 3
"""Candidates per IP. If all of them die at once, the IP waits for the API (Node NotReady)."""


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ready: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    addresses: tuple[str, ...] = ()
    """InternalIPs in the Node's order."""

    def address(self, version: int) -> str | None:
        """The next hop for IPs of one family: the first InternalIP of that family."""
        return next((a for a in self.addresses if (":" in a) == (version == 6)), None)

    @property
    def eligible(self) -> bool:
        return self.ready and EXCLUDE_LABEL not in self.labels


@dataclass(frozen=True)
class ServiceInfo:
    key: str
    ips: tuple[str, ...]
    local: bool
    """externalTrafficPolicy: Local."""
    endpoint_nodes: frozenset[str] = frozenset()
    """Nodes with a ready endpoint of this Service (only read when `local`)."""


@dataclass(frozen=True)
class Announcement:
    ip: str
    eip: str
    interface: str
    owner: str | None
    services: tuple[str, ...]
    candidates: tuple[str, ...]
    """In rank order."""


def rank(node: str, ip: str) -> bytes:
    return hashlib.sha256(f"{node}#{ip}".encode()).digest()


def ranked(ip: str, nodes: Iterable[str], top: int = TOP) -> list[str]:
    """The `top` nodes of `nodes` in rank order for `ip`."""
    return sorted(nodes, key=lambda n: rank(n, ip))[:top]


def announcements(
    layer2_eips: Mapping[str, tuple[str, Iterable[str]]],
    services: Iterable[ServiceInfo],
    nodes: Iterable[NodeInfo],
    live: Iterable[str],
    top: int = TOP,
) -> dict[str, Announcement]:
    """`layer2_eips`: name -> (interface, the IPs in use). Returns ip -> announcement."""
    alive = set(live)
    eligible = sorted(n.name for n in nodes if n.eligible)
    by_ip: dict[str, list[ServiceInfo]] = {}
    for svc in services:
        for ip in svc.ips:
            by_ip.setdefault(ip, []).append(svc)
    out: dict[str, Announcement] = {}
    for eip_name, (interface, ips) in layer2_eips.items():
        for ip in ips:
            users = by_ip.get(ip, [])
            if not users:
                continue
            candidates = set(eligible)
            if any(s.local for s in users):
                local_nodes: set[str] = set()
                for s in users:
                    local_nodes |= s.endpoint_nodes if s.local else set(eligible)
                candidates &= local_nodes
            order = ranked(ip, candidates, top)
            out[ip] = Announcement(
                ip,
                eip_name,
                interface,
                next((n for n in order if n in alive), None),
                tuple(sorted(s.key for s in users)),
                tuple(order),
            )
    return out


def heartbeat_peers(plan: Mapping[str, Announcement], me: str) -> set[str]:
    """The nodes that must hear my heartbeats: those ranked below me for an IP (they take over
    when I die). Those ranked above me compute the same and send theirs to me."""
    peers: set[str] = set()
    for ann in plan.values():
        if me in ann.candidates:
            peers.update(ann.candidates[ann.candidates.index(me) + 1 :])
    return peers


def bgp_next_hops(  # noqa: PLR0917
    ips: Iterable[str],
    services: Iterable[ServiceInfo],
    nodes: Iterable[NodeInfo],
    live: Iterable[str] | None,
    rack: str | None = None,
    rack_label: str = names.LABEL_RACK,
) -> dict[str, tuple[str, ...]]:
    """BGP mode: for each IP of a bgp Eip in use, the next hops routers may send its traffic to —
    the addresses of the eligible nodes whose speaker is alive (`live`; None = do not filter),
    only nodes with a ready local endpoint for externalTrafficPolicy Local, and only nodes of this
    speaker's rack when it has one (as OpenELB). An IP without any next hop is withdrawn."""
    alive = None if live is None else set(live)
    usable = [
        n
        for n in nodes
        if n.eligible and (alive is None or n.name in alive) and (rack is None or n.labels.get(rack_label) == rack)
    ]
    by_ip: dict[str, list[ServiceInfo]] = {}
    for svc in services:
        for ip in svc.ips:
            by_ip.setdefault(ip, []).append(svc)
    out: dict[str, tuple[str, ...]] = {}
    for ip in ips:
        users = by_ip.get(ip, [])
        if not users:
            continue
        chosen = usable
        if any(s.local for s in users):
            local: set[str] = set()
            for s in users:
                local |= s.endpoint_nodes if s.local else {n.name for n in usable}
            chosen = [n for n in usable if n.name in local]
        version = 6 if ":" in ip else 4
        hops = sorted({a for n in chosen if (a := n.address(version))})
        if hops:
            out[ip] = tuple(hops)
    return out
