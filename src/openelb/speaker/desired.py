"""Which node announces which IP: a pure function every speaker computes alike.

Inputs are plain snapshots of the API (Eips, Services, EndpointSlices, Nodes) plus the set of
speakers this speaker currently hears. For each IP of a layer2 Eip in use, the candidates are the
*eligible* nodes — a live speaker, Ready, not excluded from load balancers, and for
externalTrafficPolicy Local a ready local endpoint (union over Services sharing the IP, as
OpenELB) — and the owner is the candidate with the lowest SHA-256 of `node#ip` (OpenELB's hash),
so that ownership spreads over nodes and moves only for the IPs of a node that left.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ready: bool
    labels: Mapping[str, str] = field(default_factory=dict)

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


def rank(node: str, ip: str) -> bytes:
    return hashlib.sha256(f"{node}#{ip}".encode()).digest()


def owner(ip: str, candidates: Iterable[str]) -> str | None:
    return min(candidates, key=lambda n: rank(n, ip), default=None)


def announcements(
    layer2_eips: Mapping[str, tuple[str, Iterable[str]]],
    services: Iterable[ServiceInfo],
    nodes: Iterable[NodeInfo],
    live: Iterable[str],
) -> dict[str, Announcement]:
    """`layer2_eips`: name -> (interface, the IPs of its `status.used`). Returns ip -> announcement."""
    alive = set(live)
    eligible = sorted(n.name for n in nodes if n.eligible and n.name in alive)
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
            out[ip] = Announcement(
                ip,
                eip_name,
                interface,
                owner(ip, candidates),
                tuple(sorted(s.key for s in users)),
                tuple(sorted(candidates)),
            )
    return out
