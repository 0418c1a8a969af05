"""Kubernetes objects → the plain snapshots `speaker.desired` and `speaker.plan` decide on.

Per object, so the speaker converts only the object an informer reported; `service_infos` /
`node_infos` convert whole listings for `openelb status`, by the same rules.

`slim_service` / `slim_slice` / `slim_node` are the speaker informers' transforms (client-go's
`SetTransform`): the stores keep only what these rules and the announcer marks read. A full
Service with its managedFields is ~5 KB in memory, the slim one under 1 KB; at 10,000 Services
and their EndpointSlices that is most of a speaker's memory. `tests/unit/test_speaker_inputs.py`
holds the rules to giving the same answers on slim and full objects.
"""

from __future__ import annotations

from collections.abc import Iterable

from lightkube.models.core_v1 import (
    EndpointAddress,
    EndpointSubset,
    LoadBalancerIngress,
    LoadBalancerStatus,
    NodeAddress,
    NodeCondition,
    NodeStatus,
    ServiceSpec,
    ServiceStatus,
)
from lightkube.models.discovery_v1 import Endpoint
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Endpoints, Node, Service
from lightkube.resources.discovery_v1 import EndpointSlice

from openelb.api import names
from openelb.api.ingress import ingress_ips
from openelb.speaker import desired

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def service_info(svc: Service, endpoint_nodes: frozenset[str] = frozenset()) -> desired.ServiceInfo | None:
    """A LoadBalancer Service with IPs; None for anything else (not ours to announce)."""
    md = svc.metadata
    if not svc.spec or svc.spec.type != "LoadBalancer" or md is None or md.deletionTimestamp:
        return None
    ips = tuple(str(ip) for ip in ingress_ips(svc))
    if not ips:
        return None
    local = svc.spec.externalTrafficPolicy == "Local"
    return desired.ServiceInfo(f"{md.namespace}/{md.name}", ips, local, endpoint_nodes if local else frozenset())


def slice_nodes(sl: EndpointSlice) -> tuple[str | None, frozenset[str]]:
    """(the Service key, the nodes holding a ready endpoint in this slice)."""
    md = sl.metadata
    svc_name = ((md.labels if md else None) or {}).get(SERVICE_NAME_LABEL)
    if not svc_name or md is None:
        return None, frozenset()
    nodes = frozenset(
        ep.nodeName
        for ep in sl.endpoints or []
        if ep.nodeName and (ep.conditions is None or ep.conditions.ready is not False)
    )
    return f"{md.namespace}/{svc_name}", nodes


class EndpointIndex:
    """Service key → nodes with a ready endpoint, over all its EndpointSlices, kept per slice."""

    def __init__(self) -> None:
        self._slices: dict[str, tuple[str, frozenset[str]]] = {}
        self._of_service: dict[str, set[str]] = {}

    def update(self, slice_key: str, sl: EndpointSlice | None) -> str | None:
        """Apply one slice (None: deleted); returns the Service key it belongs to, if any."""
        old = self._slices.pop(slice_key, None)
        if old is not None:
            keys = self._of_service.get(old[0])
            if keys is not None:
                keys.discard(slice_key)
                if not keys:
                    del self._of_service[old[0]]
        svc_key, nodes = slice_nodes(sl) if sl is not None else (None, frozenset())
        if svc_key is not None:
            self._slices[slice_key] = (svc_key, nodes)
            self._of_service.setdefault(svc_key, set()).add(slice_key)
        return svc_key or (old[0] if old else None)

    def nodes(self, svc_key: str) -> frozenset[str]:
        return frozenset().union(*(self._slices[k][1] for k in self._of_service.get(svc_key, ())))


def service_infos(services: Iterable[Service], slices: Iterable[EndpointSlice]) -> list[desired.ServiceInfo]:
    """LoadBalancer Services with IPs; for each, the nodes holding a ready endpoint."""
    index = EndpointIndex()
    for i, sl in enumerate(slices):
        index.update(str(i), sl)
    out = []
    for svc in services:
        md = svc.metadata
        key = f"{md.namespace}/{md.name}" if md else ""
        info = service_info(svc, index.nodes(key))
        if info is not None:
            out.append(info)
    return out


def node_info(node: Node) -> desired.NodeInfo:
    conds = node.status.conditions if node.status else None
    ready = any(c.type == "Ready" and c.status == "True" for c in conds or [])
    md = node.metadata
    addrs = tuple(a.address for a in (node.status.addresses if node.status else None) or [] if a.type == "InternalIP")
    return desired.NodeInfo(md.name if md and md.name else "", ready, (md.labels if md else None) or {}, addrs)


def node_infos(nodes: Iterable[Node]) -> list[desired.NodeInfo]:
    return [node_info(n) for n in nodes]


# ---- informer transforms: what the speaker keeps of each object ----------------------------------

SERVICE_ANNOTATIONS = (names.ANNOTATION_LAYER2_ANNOUNCER, names.ANNOTATION_VIP_MASTER)
"""The annotations the speaker reads (the announcer marks compare before writing)."""


def _meta(
    md: ObjectMeta | None, *, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None
) -> ObjectMeta:
    md = md or ObjectMeta()
    return ObjectMeta(
        name=md.name,
        namespace=md.namespace,
        uid=md.uid,
        resourceVersion=md.resourceVersion,
        deletionTimestamp=md.deletionTimestamp,
        labels=labels,
        annotations=annotations,
    )


def slim_service(svc: Service) -> Service:
    md = svc.metadata
    kept = {k: v for k, v in ((md.annotations if md else None) or {}).items() if k in SERVICE_ANNOTATIONS}
    lb = svc.status.loadBalancer if svc.status else None
    ingress = [LoadBalancerIngress(ip=i.ip) for i in (lb.ingress if lb else None) or [] if i.ip]
    spec = svc.spec
    return Service(
        metadata=_meta(md, annotations=kept or None),
        spec=ServiceSpec(type=spec.type, externalTrafficPolicy=spec.externalTrafficPolicy) if spec else None,
        status=ServiceStatus(loadBalancer=LoadBalancerStatus(ingress=ingress or None)),
    )


def slim_slice(sl: EndpointSlice) -> EndpointSlice:
    """One endpoint per node with a ready endpoint: all `slice_nodes` reads."""
    svc_key, nodes = slice_nodes(sl)
    md = sl.metadata
    labels = {SERVICE_NAME_LABEL: svc_key.split("/", 1)[1]} if svc_key else None
    return EndpointSlice(
        addressType=sl.addressType,
        endpoints=[Endpoint(addresses=[], nodeName=n) for n in sorted(nodes)],
        metadata=_meta(md, labels=labels),
    )


def slice_from_endpoints(ep: Endpoints) -> EndpointSlice:
    """A core/v1 Endpoints object as the slice the index reads: for clusters whose RBAC grants
    `endpoints` but not `endpointslices` (Go OpenELB's own ClusterRole). Same nodes, same rules:
    `addresses` are the ready ones, `notReadyAddresses` are not counted."""
    md = ep.metadata
    nodes = sorted({a.nodeName for sub in ep.subsets or [] for a in sub.addresses or [] if a.nodeName})
    return EndpointSlice(
        addressType="IPv4",
        endpoints=[Endpoint(addresses=[], nodeName=n) for n in nodes],
        metadata=_meta(md, labels={SERVICE_NAME_LABEL: md.name} if md and md.name else None),
    )


def slim_endpoints(ep: Endpoints) -> Endpoints:
    """What the speaker keeps of an Endpoints object: the nodes of its ready addresses."""
    sl = slice_from_endpoints(ep)
    ready = [EndpointAddress(ip="", nodeName=e.nodeName) for e in sl.endpoints or []]
    return Endpoints(metadata=_meta(ep.metadata), subsets=[EndpointSubset(addresses=ready)] if ready else None)


def slim_node(node: Node) -> Node:
    status = node.status
    conds = [
        NodeCondition(type=c.type, status=c.status)
        for c in (status.conditions if status else None) or []
        if c.type == "Ready"
    ]
    addrs = [
        NodeAddress(type=a.type, address=a.address)
        for a in (status.addresses if status else None) or []
        if a.type == "InternalIP"
    ]
    md = node.metadata
    return Node(
        metadata=_meta(md, labels=(md.labels if md else None)),
        status=NodeStatus(conditions=conds, addresses=addrs) if status is not None else None,
    )
