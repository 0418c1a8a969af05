"""Kubernetes objects → the plain snapshots `speaker.desired` decides on.

Shared by the speaker (from its informer caches) and `openelb status` (from one list each), so
the status command shows the next hops the speakers compute, by the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable

from lightkube.resources.core_v1 import Node, Service
from lightkube.resources.discovery_v1 import EndpointSlice

from openelb.speaker import desired


def service_infos(services: Iterable[Service], slices: Iterable[EndpointSlice]) -> list[desired.ServiceInfo]:
    """LoadBalancer Services with IPs; for each, the nodes holding a ready endpoint."""
    local_nodes: dict[str, set[str]] = {}
    for sl in slices:
        svc_name = ((sl.metadata.labels if sl.metadata else None) or {}).get("kubernetes.io/service-name")
        if not svc_name or not sl.metadata:
            continue
        key = f"{sl.metadata.namespace}/{svc_name}"
        for ep in sl.endpoints or []:
            if ep.nodeName and (ep.conditions is None or ep.conditions.ready is not False):
                local_nodes.setdefault(key, set()).add(ep.nodeName)
    out = []
    for svc in services:
        md = svc.metadata
        if not svc.spec or svc.spec.type != "LoadBalancer" or md is None or md.deletionTimestamp:
            continue
        lb = svc.status.loadBalancer if svc.status else None
        ips = tuple(i.ip for i in (lb.ingress if lb else None) or [] if i.ip)
        if ips:
            key = f"{md.namespace}/{md.name}"
            local = svc.spec.externalTrafficPolicy == "Local"
            out.append(desired.ServiceInfo(key, ips, local, frozenset(local_nodes.get(key, set()))))
    return out


def node_infos(nodes: Iterable[Node]) -> list[desired.NodeInfo]:
    out = []
    for node in nodes:
        conds = node.status.conditions if node.status else None
        ready = any(c.type == "Ready" and c.status == "True" for c in conds or [])
        md = node.metadata
        addrs = tuple(
            a.address for a in (node.status.addresses if node.status else None) or [] if a.type == "InternalIP"
        )
        out.append(desired.NodeInfo(md.name if md and md.name else "", ready, (md.labels if md else None) or {}, addrs))
    return out
