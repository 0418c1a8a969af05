"""The speaker's informer transforms keep everything its rules read: on any object, the rules give
the same answer on the slim copy as on the full one, and the fields the announcer marks and the
informer itself read (uid, resourceVersion, the announcer annotation) survive."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from lightkube.resources.core_v1 import Node, Service
from lightkube.resources.discovery_v1 import EndpointSlice

from openelb.api import names
from openelb.speaker import inputs

NODES = st.sampled_from(["node-1", "node-2", "node-3", "node-4"])
IPS = st.sampled_from(["198.18.0.1", "198.18.0.2", "2001:db8::1", ""])
MANAGED = [{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]


@st.composite
def services(draw: Any) -> dict[str, Any]:
    annotations = draw(
        st.dictionaries(
            st.sampled_from([names.ANNOTATION_LAYER2_ANNOUNCER, "eip.openelb.kubesphere.io/v1alpha2", "other"]),
            NODES,
        )
    )
    md: dict[str, Any] = {
        "name": "s",
        "namespace": "ns",
        "uid": "u-1",
        "resourceVersion": str(draw(st.integers(1, 10**9))),
        "annotations": annotations,
        "labels": {"app": "x"},
        "managedFields": MANAGED,
    }
    if draw(st.booleans()):
        md["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    ingress = [{"ip": ip, "ipMode": "VIP"} if ip else {"hostname": "lb.example"} for ip in draw(st.lists(IPS))]
    return {
        "metadata": md,
        "spec": {
            "type": draw(st.sampled_from(["LoadBalancer", "ClusterIP", "NodePort"])),
            "externalTrafficPolicy": draw(st.sampled_from(["Local", "Cluster", None])),
            "ports": [{"port": 80, "protocol": "TCP"}],
            "selector": {"app": "x"},
        },
        "status": {"loadBalancer": {"ingress": ingress}} if draw(st.booleans()) else {},
    }


@given(services(), st.frozensets(NODES))
def test_a_slim_service_decides_as_the_full_one(body: dict[str, Any], endpoints: frozenset[str]) -> None:
    full = Service.from_dict(body)
    slim = inputs.slim_service(full)
    assert inputs.service_info(slim, endpoints) == inputs.service_info(full, endpoints)
    assert slim.metadata and full.metadata
    assert (slim.metadata.uid, slim.metadata.resourceVersion) == (full.metadata.uid, full.metadata.resourceVersion)
    announcer = (full.metadata.annotations or {}).get(names.ANNOTATION_LAYER2_ANNOUNCER)
    assert (slim.metadata.annotations or {}).get(names.ANNOTATION_LAYER2_ANNOUNCER) == announcer
    assert slim.metadata.managedFields is None and slim.metadata.labels is None


@given(
    st.lists(st.tuples(st.one_of(st.none(), NODES), st.sampled_from([True, False, None]), st.booleans()), max_size=8),
    st.booleans(),
)
def test_a_slim_endpointslice_holds_the_same_nodes(
    endpoints: list[tuple[str | None, bool | None, bool]], labelled: bool
) -> None:
    eps = []
    for node, ready, has_conditions in endpoints:
        ep: dict[str, Any] = {"addresses": ["198.51.100.9"], "targetRef": {"kind": "Pod", "name": "p"}}
        if node:
            ep["nodeName"] = node
        if has_conditions:
            ep["conditions"] = {"ready": ready, "serving": True}
        eps.append(ep)
    labels = {inputs.SERVICE_NAME_LABEL: "web", "endpointslice.kubernetes.io/managed-by": "x"} if labelled else {}
    body = {
        "addressType": "IPv4",
        "metadata": {"name": "web-abc", "namespace": "ns", "resourceVersion": "7", "labels": labels},
        "endpoints": eps,
        "ports": [{"port": 80}],
    }
    full = EndpointSlice.from_dict(body)
    slim = inputs.slim_slice(full)
    assert inputs.slice_nodes(slim) == inputs.slice_nodes(full)
    assert slim.metadata and slim.metadata.resourceVersion == "7"


@given(
    st.lists(st.tuples(st.sampled_from(["Ready", "MemoryPressure"]), st.sampled_from(["True", "False", "Unknown"]))),
    st.lists(st.tuples(st.sampled_from(["InternalIP", "ExternalIP", "Hostname"]), IPS)),
    st.dictionaries(
        st.sampled_from([names.LABEL_RACK, "node.kubernetes.io/exclude-from-external-load-balancers"]), NODES
    ),
    st.booleans(),
)
def test_a_slim_node_decides_as_the_full_one(
    conditions: list[tuple[str, str]], addresses: list[tuple[str, str]], labels: dict[str, str], has_status: bool
) -> None:
    body: dict[str, Any] = {
        "metadata": {
            "name": "node-1",
            "uid": "n-1",
            "resourceVersion": "3",
            "labels": labels,
            "managedFields": MANAGED,
        },
    }
    if has_status:
        body["status"] = {
            "conditions": [{"type": t, "status": s, "reason": "r", "message": "m"} for t, s in conditions],
            "addresses": [{"type": t, "address": a or "node-1"} for t, a in addresses],
            "images": [{"names": [f"registry.example/img-{i}:v1"], "sizeBytes": 10**8} for i in range(20)],
        }
    full = Node.from_dict(body)
    slim = inputs.slim_node(full)
    assert inputs.node_info(slim) == inputs.node_info(full)
    assert (slim.status is None) == (full.status is None)
    assert slim.metadata and slim.metadata.uid == "n-1"


def test_endpoints_read_like_endpointslices_for_gos_rbac() -> None:
    """Go OpenELB's speaker ClusterRole grants `endpoints` only: the same Service gives the same
    ready nodes whether read from its Endpoints or its EndpointSlice."""
    from lightkube.models.core_v1 import EndpointAddress, EndpointSubset
    from lightkube.models.discovery_v1 import Endpoint, EndpointConditions
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import Endpoints
    from lightkube.resources.discovery_v1 import EndpointSlice

    from openelb.speaker import inputs

    ep = Endpoints(
        metadata=ObjectMeta(name="web", namespace="ns"),
        subsets=[
            EndpointSubset(
                addresses=[EndpointAddress(ip="198.51.100.1", nodeName="a")],
                notReadyAddresses=[EndpointAddress(ip="198.51.100.2", nodeName="b")],
            )
        ],
    )
    sl = EndpointSlice(
        addressType="IPv4",
        metadata=ObjectMeta(name="web-x1", namespace="ns", labels={inputs.SERVICE_NAME_LABEL: "web"}),
        endpoints=[
            Endpoint(addresses=["198.51.100.1"], nodeName="a", conditions=EndpointConditions(ready=True)),
            Endpoint(addresses=["198.51.100.2"], nodeName="b", conditions=EndpointConditions(ready=False)),
        ],
    )
    assert inputs.slice_nodes(inputs.slice_from_endpoints(ep)) == inputs.slice_nodes(sl) == ("ns/web", frozenset({"a"}))
    assert inputs.slice_nodes(inputs.slice_from_endpoints(inputs.slim_endpoints(ep))) == ("ns/web", frozenset({"a"}))
