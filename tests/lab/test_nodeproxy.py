"""NodeProxy mode end to end: a Service exposed on every node's own addresses by proxy Pods that
run our image (`openelb forward`), reached with the real kernel from the client (curl over IPv4
and IPv6, UDP); the exclude-node label, the switch DaemonSet → Deployment, deletion with nothing
left, and the finalizer of a Service whose workload is already gone (Go OpenELB's stuck Service)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import NS, apply_yaml, events, in_netns, lb_service
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.apps_v1 import DaemonSet, Deployment
from lightkube.resources.core_v1 import Node, Pod, Service
from lightkube.types import PatchType

from openelb.api import names
from openelb.nodeproxy.workload import workload_name
from openelb_lab import workloads
from openelb_lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.k8s_lab]
REPO = Path(__file__).resolve().parents[2]
SVC = "np-svc"
UDP_PORT = 5300


def _svc(kube: Client, ns: str) -> Service:
    return kube.get(Service, SVC, namespace=ns)


def _ann(kube: Client, ns: str, key: str) -> str | None:
    return (_svc(kube, ns).metadata.annotations or {}).get(key)  # type: ignore[union-attr]


def _ingress(kube: Client, ns: str) -> list[str]:
    st = _svc(kube, ns).status
    lb = st.loadBalancer if st else None
    return [i.ip for i in (lb.ingress if lb else None) or [] if i.ip]


def _exists(kube: Client, kind: Any, name: str) -> bool:
    try:
        kube.get(kind, name, namespace=NS)
        return True
    except ApiError as exc:
        if exc.status.code == 404:
            return False
        raise


def _udp(netns: str, host: str, port: int) -> str:
    code = (
        "import socket,sys\n"
        "h,p=sys.argv[1],int(sys.argv[2])\n"
        "s=socket.socket(socket.AF_INET6 if ':' in h else socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.settimeout(1)\n"
        "for _ in range(10):\n"
        "    s.sendto(b'hi',(h,p))\n"
        "    try:\n"
        "        print(s.recv(200).decode()); break\n"
        "    except OSError: pass\n"
    )
    return in_netns(netns, sys.executable, "-c", code, host, str(port)).stdout


def _internal(lab_plan: LabPlan, nodes: list[str]) -> str:
    plans = [n for n in lab_plan.nodes if n.name in nodes]
    return ",".join([str(n.lan_v4) for n in plans] + [str(n.lan_v6) for n in plans])


@pytest.fixture
def app(kube: Client, ns: str, controller: dict[str, Any]) -> Iterator[str]:
    apply_yaml(kube, (REPO / "examples/seed/layer2-deployment.yaml").read_text(), namespace=ns)
    workloads.poll(
        "2 app pods Running",
        lambda: len([p for p in kube.list(Pod, namespace=ns) if p.status and p.status.phase == "Running"]) == 2,
        60,
    )
    yield ns


def _proxy_service(ns: str, kind: str) -> dict[str, Any]:
    svc = lb_service(SVC, ns, annotations={names.ANNOTATION_LB: names.LB_VALUE, names.ANNOTATION_NODE_PROXY_TYPE: kind})
    svc["spec"]["selector"] = {"app": "layer2-openelb"}
    svc["spec"]["ipFamilyPolicy"] = "PreferDualStack"
    svc["spec"]["ports"] = [
        {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
        {"name": "dns", "port": UDP_PORT, "targetPort": 8080, "protocol": "UDP"},
    ]
    return svc


def test_daemonset_on_every_node_then_exclude_switch_and_delete(kube: Client, lab_plan: LabPlan, app: str) -> None:
    ns = app
    wname = workload_name(ns, SVC)
    everyone = [n.name for n in lab_plan.nodes]
    workloads.apply(kube, _proxy_service(ns, "daemonset"))
    workloads.poll("the proxy DaemonSet", lambda: _exists(kube, DaemonSet, wname), 20)
    workloads.poll(
        "every node published",
        lambda: _ann(kube, ns, names.ANNOTATION_NODE_PROXY_INTERNAL_IP) == _internal(lab_plan, everyone),
        60,
    )
    svc = _svc(kube, ns)
    assert not (svc.metadata.finalizers or [])  # type: ignore[union-attr]  # none, so uninstall never hangs
    assert _ingress(kube, ns) == _internal(lab_plan, everyone).split(",")  # kubectl get svc shows them
    assert _ann(kube, ns, names.ANNOTATION_NODE_PROXY_EXTERNAL_IP) is None  # the lab's nodes have none
    client = lab_plan.client.netns
    for node in lab_plan.nodes:
        for addr in (str(node.lan_v4), str(node.lan_v6)):
            seen = workloads.collect_pod_names(client, workloads.url(addr, 80), expected=2, timeout=30)
            assert len(set(seen)) == 2, (addr, seen)
        assert "You've hit" in _udp(client, str(node.lan_v4), UDP_PORT)
    assert "You've hit" in _udp(client, str(lab_plan.nodes[0].lan_v6), UDP_PORT)

    # a node labelled exclude-node loses its proxy Pod and leaves the published addresses
    last = lab_plan.nodes[-1].name
    kube.patch(Node, last, {"metadata": {"labels": {names.LABEL_NODE_PROXY_EXCLUDE: ""}}})
    try:
        workloads.poll(
            f"{last} left out",
            lambda: _ann(kube, ns, names.ANNOTATION_NODE_PROXY_INTERNAL_IP) == _internal(lab_plan, everyone[:-1]),
            60,
        )
        assert not [
            p for p in kube.list(Pod, namespace=NS, labels={"name": wname}) if p.spec and p.spec.nodeName == last
        ]
    finally:
        kube.patch(Node, last, {"metadata": {"labels": {names.LABEL_NODE_PROXY_EXCLUDE: None}}})

    # daemonset -> deployment: the DaemonSet goes, one Deployment Pod serves
    kube.patch(
        Service, SVC, {"metadata": {"annotations": {names.ANNOTATION_NODE_PROXY_TYPE: "deployment"}}}, namespace=ns
    )
    workloads.poll("the DaemonSet gone", lambda: not _exists(kube, DaemonSet, wname), 30)
    workloads.poll("the Deployment", lambda: _exists(kube, Deployment, wname), 30)

    def one_node() -> str | None:
        value = _ann(kube, ns, names.ANNOTATION_NODE_PROXY_INTERNAL_IP) or ""
        return value if len(value.split(",")) == 2 else None  # one node: its v4 and v6

    served = workloads.poll("one node published", one_node, 60).split(",")[0]
    seen = workloads.collect_pod_names(client, workloads.url(served, 80), expected=2, timeout=30)
    assert len(set(seen)) == 2

    # deleted: workload, listeners and finalizer gone
    kube.delete(Service, SVC, namespace=ns)
    workloads.poll("the Service gone", lambda: not _exists_svc(kube, ns), 60)
    workloads.poll("the Deployment gone", lambda: not _exists(kube, Deployment, wname), 30)
    workloads.poll("no proxy Pod", lambda: not list(kube.list(Pod, namespace=NS, labels={"name": wname})), 60)
    for node in lab_plan.nodes:
        listening = in_netns(node.netns, "ss", "-Hltnu", f"( sport = :80 or sport = :{UDP_PORT} )").stdout
        assert not listening.strip(), (node.name, listening)


def _exists_svc(kube: Client, ns: str) -> bool:
    try:
        _svc(kube, ns)
        return True
    except ApiError as exc:
        if exc.status.code == 404:
            return False
        raise


def test_finalizer_goes_also_when_the_workload_is_already_gone(
    kube: Client, ns: str, controller: dict[str, Any]
) -> None:
    """Go OpenELB left such a Service Terminating forever."""
    svc = lb_service(SVC, ns)
    svc["metadata"]["finalizers"] = [names.FINALIZER_NODE_PROXY]
    workloads.apply(kube, svc)
    kube.delete(Service, SVC, namespace=ns)
    workloads.poll("the Service gone", lambda: not _exists_svc(kube, ns), 30)


def test_an_unknown_type_is_reported_and_gets_nothing(kube: Client, ns: str, controller: dict[str, Any]) -> None:
    workloads.apply(kube, _proxy_service(ns, "statefulset"))
    workloads.poll(
        "a Warning Event", lambda: any(r == "InvalidNodeProxyType" for _t, r, _m in events(kube, ns, SVC)), 20
    )
    assert _ingress(kube, ns) == []  # neither node addresses nor an Eip IP
    assert not _exists(kube, DaemonSet, workload_name(ns, SVC)) and not _exists(
        kube, Deployment, workload_name(ns, SVC)
    )
    kube.patch(Service, SVC, {"metadata": {"annotations": {names.ANNOTATION_NODE_PROXY_TYPE: None}}}, namespace=ns,
               patch_type=PatchType.MERGE)  # fmt: skip


def test_a_port_taken_on_one_node_is_reported_and_that_node_left_out(kube: Client, lab_plan: LabPlan, app: str) -> None:
    ns = app
    taken = lab_plan.nodes[1]
    everyone = [n.name for n in lab_plan.nodes]
    squat = (
        "import socket, time\n"
        "s = socket.socket(socket.AF_INET6)\n"
        "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
        "s.bind(('::', 8088))\n"
        "s.listen()\n"
        "time.sleep(120)\n"
    )
    squatter = subprocess.Popen(["ip", "netns", "exec", taken.netns, sys.executable, "-c", squat])
    workloads.poll(
        "the squatter listening",
        lambda: ":8088" in in_netns(taken.netns, "ss", "-Hltn", "sport = :8088").stdout,
        10,
    )
    try:
        svc = _proxy_service(ns, "daemonset")
        svc["spec"]["ports"] = [{"name": "http", "port": 8088, "targetPort": 8080, "protocol": "TCP"}]
        workloads.apply(kube, svc)
        others = [n for n in everyone if n != taken.name]
        message = workloads.poll(
            "a Warning Event naming the node",
            lambda: next((m for _t, r, m in events(kube, ns, SVC) if r == "NodeProxyNotReady"), None),
            40,
        )
        assert taken.name in message and "taken" in message, message
        assert _ann(kube, ns, names.ANNOTATION_NODE_PROXY_INTERNAL_IP) == _internal(lab_plan, others)
    finally:
        squatter.kill()
        squatter.wait(5)
    workloads.poll(  # the relay retries: the freed port is taken up and the node published
        "every node published",
        lambda: _ann(kube, ns, names.ANNOTATION_NODE_PROXY_INTERNAL_IP) == _internal(lab_plan, everyone),
        60,
    )
    kube.delete(Service, SVC, namespace=ns)
    workloads.poll("the Service gone", lambda: not _exists_svc(kube, ns), 60)
