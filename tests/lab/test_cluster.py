"""The lab is a real cluster: apiserver, controllers, scheduler, kube-proxy, pod emulation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Node, Pod

from openelb_lab import binaries, lab, netns, podnet, workloads
from openelb_lab.components import Paths
from openelb_lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.k8s_lab]


def kubectl(*args: str) -> str:
    bins = binaries.find()
    assert bins is not None
    kc = f"--kubeconfig={Paths(lab.state_dir()).kubeconfig('admin')}"
    return subprocess.run([str(bins / "kubectl"), kc, *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def namespace(kube: Client) -> str:  # type: ignore[misc]
    name = f"t-{uuid.uuid4().hex[:8]}"
    workloads.ensure_namespace(kube, name)
    yield name
    workloads.delete_namespace(kube, name)


def test_apiserver_reports_the_built_version(lab_plan: LabPlan) -> None:
    bins = binaries.find()
    assert bins is not None
    version = json.loads(kubectl("get", "--raw", "/version"))
    assert version["gitVersion"] == binaries.version(bins)
    assert version["gitVersion"].startswith("v1.")


def test_three_nodes_are_ready_with_dual_stack_addresses(kube: Client, lab_plan: LabPlan) -> None:
    nodes = {n.metadata.name: n for n in kube.list(Node)}  # type: ignore[union-attr]
    assert sorted(nodes) == ["node-1", "node-2", "node-3"]
    for plan_node in lab_plan.nodes:
        n = nodes[plan_node.name]
        assert n.status is not None and n.spec is not None
        assert any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
        internal = [a.address for a in n.status.addresses or [] if a.type == "InternalIP"]
        assert internal == [plan_node.lan_v4, plan_node.lan_v6]
        assert n.spec.podCIDRs == [plan_node.pod_cidr_v4, plan_node.pod_cidr_v6]
        assert not n.spec.taints


def test_deployment_pods_run_on_distinct_nodes_and_nodeport_balances(
    kube: Client, lab_plan: LabPlan, namespace: str
) -> None:
    workloads.apply(kube, workloads.kubia_deployment("web", namespace), workloads.service("web", namespace, "web"))
    eps = workloads.poll(
        "two ready endpoints per family",
        lambda: (
            (e := workloads.ready_endpoints(kube, namespace, "web"))
            and len(e.get("IPv4", [])) == 2
            and len(e.get("IPv6", [])) == 2
            and e
        ),
        120,
    )
    pods = [p for p in kube.list(Pod, namespace=namespace) if p.status and p.status.phase == "Running"]
    assert len(pods) == 2
    ips = {p.status.podIP for p in pods}  # type: ignore[union-attr]
    nodes = {p.spec.nodeName for p in pods}  # type: ignore[union-attr]
    assert len(ips) == 2 and len(nodes) == 2
    assert sorted(eps["IPv4"]) == sorted(ips)
    names = {p.metadata.name for p in pods}  # type: ignore[union-attr]

    port = workloads.node_port(kube, namespace, "web")
    for node in lab_plan.nodes:  # through EACH node, both families: kube-proxy really balances
        for addr in (node.lan_v4, node.lan_v6):
            assert addr
            seen = workloads.collect_pod_names(lab_plan.client.netns, workloads.url(addr, port), expected=2)
            assert set(seen) == names, f"through {node.name} {addr}: {seen}"


def test_pod_gets_a_sandbox_and_deletion_removes_it(kube: Client, lab_plan: LabPlan, namespace: str) -> None:
    workloads.apply(
        kube,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "solo", "namespace": namespace, "labels": {"app": "solo"}},
            "spec": {
                "nodeName": "node-2",
                "containers": [{"name": "c", "image": "any", "ports": [{"containerPort": 9000}]}],
            },
        },
    )
    pod = workloads.poll(
        "pod Running",
        lambda: (p := kube.get(Pod, "solo", namespace=namespace)).status and p.status.phase == "Running" and p,
        60,
    )
    assert pod.status.podIP.startswith("198.18.66.")
    assert [i.ip for i in pod.status.podIPs][1].startswith("2001:db8:1:2::")
    sandbox_ns, _ = podnet.sandbox_ids(pod.metadata.uid)
    assert sandbox_ns in netns.list_netns()
    # Reachable from the client across the LAN via node-2's pod route? No: pod CIDRs are not routed
    # to the client. From another node it is (inter-node pod routes).
    body = workloads.http_get(lab_plan.nodes[0].netns, workloads.url(pod.status.podIP, 9000))
    assert body.strip() == "You've hit solo"
    kube.delete(Pod, "solo", namespace=namespace)
    workloads.poll(
        "pod gone", lambda: not any(p.metadata.name == "solo" for p in kube.list(Pod, namespace=namespace)), 60
    )
    workloads.poll("sandbox removed", lambda: sandbox_ns not in netns.list_netns(), 30)


def test_a_pod_address_is_reusable_while_the_old_namespace_lingers(lab_plan: LabPlan) -> None:
    """The kernel destroys a deleted namespace asynchronously; a held reference (here an open
    file, in CI a slow cleanup) keeps its veth and the node's route to the pod's address alive.
    The next pod given that address must still get it routed, not fail to start for a minute."""
    node, state, slot = lab_plan.nodes[0], Paths(lab.state_dir()).state, 250  # far above any used slot
    old = podnet.create(node, f"test-old-{uuid.uuid4()}", "t", "old", slot)
    assert old.netns
    holder = os.open(f"/run/netns/{old.netns}", os.O_RDONLY)
    try:
        podnet.remove(state, node, old)
        new = podnet.create(node, f"test-new-{uuid.uuid4()}", "t", "new", slot)
        try:
            route = netns.run(["ip", "-n", node.netns, "route", "get", new.ipv4])
            assert f"dev {new.veth}" in route, route
            ping = subprocess.run(
                ["ip", "netns", "exec", node.netns, "ping", "-c", "1", "-W", "2", new.ipv4],
                capture_output=True, text=True, timeout=10, check=False,
            )  # fmt: skip
            assert ping.returncode == 0, ping.stdout + ping.stderr
        finally:
            podnet.remove(state, node, new)
    finally:
        os.close(holder)


def test_lab_exec_and_status(lab_plan: LabPlan) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "openelb_lab", "exec", "client", "--", "ip", "-o", "addr", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "198.18.0.100/24" in out and "2001:db8:0:1::100/64" in out
    st = lab.status()
    assert st["up"] is True
    assert st["nodes"] == {"node-1": True, "node-2": True, "node-3": True}
    assert "kube-proxy-node-1" in st["components"]  # type: ignore[operator]
