"""Which Services are ours and what each one asks for: a pure translation of a Service object.

OpenELB's opt-in is `type: LoadBalancer` + annotation `lb.kubesphere.io/v1alpha1: openelb`. We add
`spec.loadBalancerClass`: our class always counts, another class never does (annotation or not),
and, when configured, class-less Services without the annotation count too (the MetalLB habit).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lightkube.resources.core_v1 import Service

from openelb.api import names
from openelb.api.ranges import AddressError, IPAddress, parse_ip
from openelb.ipam.allocator import Port, Request


class RequestError(ValueError):
    """The Service's own request is malformed; the message goes into a Warning Event."""


@dataclass(frozen=True)
class Policy:
    lb_class: str = names.DEFAULT_LB_CLASS
    serve_unannotated: bool = False


def svc_annotations(svc: Service) -> Mapping[str, str]:
    return (svc.metadata.annotations if svc.metadata else None) or {}


def opted_in(svc: Service, policy: Policy) -> bool:
    """A LoadBalancer Service that asks for OpenELB (class, annotation, or unannotated if served)."""
    spec = svc.spec
    if spec is None or spec.type != "LoadBalancer":
        return False
    if spec.loadBalancerClass:
        return spec.loadBalancerClass == policy.lb_class
    if svc_annotations(svc).get(names.ANNOTATION_LB) == names.LB_VALUE:
        return True
    return policy.serve_unannotated


def node_proxy_type(svc: Service) -> str | None:
    """The NodeProxy annotation's value (any: a wrong one is reported, not given an IP)."""
    return svc_annotations(svc).get(names.ANNOTATION_NODE_PROXY_TYPE)


def is_node_proxy(svc: Service, policy: Policy) -> bool:
    """Exposed through the nodes' own addresses (NodeProxy mode) instead of an Eip's IP."""
    deleting = svc.metadata is not None and svc.metadata.deletionTimestamp is not None
    return not deleting and node_proxy_type(svc) is not None and opted_in(svc, policy)


def is_ours(svc: Service, policy: Policy) -> bool:
    """Should this Service get an IP from us (right now)?"""
    if svc.metadata is not None and svc.metadata.deletionTimestamp is not None:
        return False
    return opted_in(svc, policy) and node_proxy_type(svc) is None


def has_our_marks(svc: Service) -> bool:
    """Did we (or Go OpenELB) allocate for it? Then it needs a release when it stops being ours."""
    md = svc.metadata
    return md is not None and (
        names.LABEL_POOL in (md.labels or {}) or names.FINALIZER_SERVICE in (md.finalizers or [])
    )


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def requested_ips(svc: Service) -> tuple[IPAddress, ...]:
    """The annotation `eip.openelb.kubesphere.io/v1alpha1` (overrides spec.loadBalancerIP); one per family."""
    raw = svc_annotations(svc).get(names.ANNOTATION_IP)
    if raw is None and svc.spec is not None:
        raw = svc.spec.loadBalancerIP
    ips: list[IPAddress] = []
    for text in _split(raw):
        try:
            ip = parse_ip(text)
        except AddressError as exc:
            raise RequestError(f"invalid requested ip: {exc}") from None
        if any(other.version == ip.version for other in ips):
            raise RequestError(f"requested ips {raw!r} name two addresses of the same family")
        ips.append(ip)
    return tuple(ips)


def families(svc: Service) -> tuple[tuple[int, ...], bool]:
    """(families in order, whether all are required) from ipFamilies / ipFamilyPolicy."""
    spec = svc.spec
    assert spec is not None
    fams = tuple(6 if f == "IPv6" else 4 for f in (spec.ipFamilies or ["IPv4"]))
    policy = spec.ipFamilyPolicy or "SingleStack"
    if policy == "SingleStack":
        return fams[:1], True
    if policy == "RequireDualStack":
        return fams, True
    return fams, False


def backend_key(svc: Service) -> str:
    """Empty for externalTrafficPolicy Cluster; the canonical selector for Local (sharing rule)."""
    spec = svc.spec
    assert spec is not None
    if spec.externalTrafficPolicy != "Local":
        return ""
    return "local:" + ",".join(f"{k}={v}" for k, v in sorted((spec.selector or {}).items()))


def build_request(svc: Service, namespace_labels: Mapping[str, str]) -> Request:
    assert svc.metadata is not None and svc.spec is not None
    ns = svc.metadata.namespace or "default"
    fams, require_all = families(svc)
    ips = requested_ips(svc)
    stray = [str(ip) for ip in ips if ip.version not in fams]
    if stray:
        raise RequestError(f"requested ip {', '.join(stray)} does not match the service's ipFamilies {list(fams)}")
    ports = frozenset(Port(p.protocol or "TCP", p.port) for p in svc.spec.ports or [])
    share = svc_annotations(svc).get(names.ANNOTATION_SHARE_KEY) or None
    return Request(
        key=f"{ns}/{svc.metadata.name}",
        namespace=ns,
        namespace_labels=dict(namespace_labels),
        families=fams,
        require_all=require_all,
        pools=tuple(_split(svc_annotations(svc).get(names.ANNOTATION_POOL))),
        ips=ips,
        share_key=share,
        ports=ports,
        backend_key=backend_key(svc),
    )
