import ipaddress
from typing import Any

import pytest
from lightkube.resources.core_v1 import Service

from openelb.controller.servicepolicy import Policy, RequestError, build_request, has_our_marks, is_ours
from openelb.ipam.allocator import Port


def svc(annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None, **spec: Any) -> Service:
    body: dict[str, Any] = {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
    body.update(spec)
    return Service.from_dict(
        {
            "metadata": {"name": "web", "namespace": "shop", "annotations": annotations or {}, "labels": labels or {}},
            "spec": body,
        }
    )


OPENELB = {"lb.kubesphere.io/v1alpha1": "openelb"}


@pytest.mark.parametrize(
    ("service", "policy", "ours"),
    [
        (svc(OPENELB), Policy(), True),
        (svc({"lb.kubesphere.io/v1alpha1": "porter"}), Policy(), False),  # legacy value not accepted, as OpenELB
        (svc(OPENELB, type="NodePort"), Policy(), False),
        (svc(), Policy(), False),
        (svc(), Policy(serve_unannotated=True), True),
        (svc(loadBalancerClass="openelb.kubesphere.io/lb"), Policy(), True),
        (svc(OPENELB, loadBalancerClass="example.com/other"), Policy(), False),  # another class: never
        (svc(OPENELB, loadBalancerClass="example.com/other"), Policy(serve_unannotated=True), False),
        (svc(loadBalancerClass="mine"), Policy(lb_class="mine"), True),
    ],
)
def test_who_is_ours(service: Service, policy: Policy, ours: bool) -> None:
    assert is_ours(service, policy) is ours


def test_marks_from_go_openelb_count() -> None:
    assert has_our_marks(svc(labels={"eip.openelb.kubesphere.io/v1alpha2": "pool"}))
    assert not has_our_marks(svc(OPENELB))


def test_request_fields() -> None:
    s = svc(
        {
            **OPENELB,
            "eip.openelb.kubesphere.io/v1alpha2": "a, b",
            "eip.openelb.kubesphere.io/v1alpha1": "2001:db8::5,198.51.100.5",
            "lb.kubesphere.io/share-key": "k",
            "protocol.openelb.kubesphere.io/v1alpha1": "layer2",  # legacy, ignored
        },
        loadBalancerIP="198.51.100.9",
        ipFamilies=["IPv4", "IPv6"],
        ipFamilyPolicy="PreferDualStack",
        externalTrafficPolicy="Local",
        selector={"b": "2", "a": "1"},
        ports=[{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
    )
    r = build_request(s, {"team": "x"})
    assert r.key == "shop/web" and r.namespace == "shop" and r.namespace_labels == {"team": "x"}
    assert r.pools == ("a", "b") and r.share_key == "k"
    assert r.ips == (ipaddress.ip_address("2001:db8::5"), ipaddress.ip_address("198.51.100.5"))  # annotation wins
    assert r.families == (4, 6) and r.require_all is False
    assert r.ports == frozenset({Port("TCP", 80), Port("UDP", 53)})
    assert r.backend_key == "local:a=1,b=2"


def test_load_balancer_ip_used_without_annotation_and_single_stack_default() -> None:
    r = build_request(svc(OPENELB, loadBalancerIP="198.51.100.9"), {})
    assert [str(i) for i in r.ips] == ["198.51.100.9"] and r.families == (4,) and r.require_all


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not-an-ip", "invalid requested ip"),
        ("198.51.100.1,198.51.100.2", "two addresses of the same family"),
        ("2001:db8::1", "does not match the service's ipFamilies"),
    ],
)
def test_bad_requests_are_explained(value: str, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        build_request(svc({**OPENELB, "eip.openelb.kubesphere.io/v1alpha1": value}), {})
