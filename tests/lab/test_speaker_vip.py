"""VIP mode end to end with real kernel clients: an Eip `protocol: vip` gives an EXTERNAL-IP that
exactly one node holds on eth0 (its kernel answers ARP, ping and the Service's traffic), the
master fails over on power-off, Local follows the endpoints, IPv6 works, and deleting the Eip
leaves the IP on no node. The keepalived interop is `test_vrrp_wire.py`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    SpeakerProcess,
    apply_yaml,
    arping_macs,
    delete_eip,
    eip,
    iface_mac,
    in_netns,
    lb_service,
    ndisc_mac,
    running_speakers,
    scrape,
    wait_event,
    wait_ips,
)
from lightkube import Client
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod, Service

from openelb.api import names
from openelb_lab import lab, topology, workloads
from openelb_lab.components import Paths
from openelb_lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.k8s_lab]

REPO = Path(__file__).resolve().parents[2]
NS = "default"


def holders(lab_plan: LabPlan, ip: str) -> list[str]:
    """The nodes whose eth0 holds `ip`."""
    out = []
    for n in lab_plan.nodes:
        shown = json.loads(in_netns(n.netns, "ip", "-j", "addr", "show", "dev", "eth0").stdout or "[]")
        if any(a["local"] == ip for link in shown for a in link["addr_info"]):
            out.append(n.name)
    return out


def one_holder(lab_plan: LabPlan, ip: str, timeout: float = 15) -> str:
    return str(workloads.poll(f"one node holding {ip}", lambda: (h := holders(lab_plan, ip)) and len(h) == 1 and h[0],
                              timeout, interval=0.1))  # fmt: skip


def test_vip_switched_off_says_so_on_the_eip(kube: Client, lab_plan: LabPlan, controller: dict[str, Any]) -> None:
    """Go OpenELB's `--enable-keepalived-vip=false` (its manifest's value): a Warning, not silence."""
    workloads.apply(kube, eip("vip-off", "198.18.0.236-198.18.0.237", protocol="vip", interface="eth0"))
    try:
        with running_speakers(lab_plan, "--enable-keepalived-vip=false", tag="-novip"):
            message = wait_event(kube, "default", "vip-off", "VIPModeDisabled", timeout=30)
            assert "--enable-keepalived-vip=false" in message
    finally:
        delete_eip(kube, "vip-off")


@pytest.fixture(scope="module")
def speakers(lab_plan: LabPlan, controller: dict[str, Any]) -> Iterator[dict[str, SpeakerProcess]]:
    with running_speakers(lab_plan, tag="-vip") as procs:
        yield procs


@pytest.fixture(scope="module")
def seed(kube: Client, speakers: dict[str, SpeakerProcess]) -> Iterator[str]:
    for name in ("vip-eip.yaml", "layer2-deployment.yaml", "vip-svc.yaml"):
        apply_yaml(kube, (REPO / "examples/seed" / name).read_text(), namespace=NS)
    (ip,) = wait_ips(kube, NS, "vip-svc", timeout=30)
    workloads.poll(
        "2 ready endpoints",
        lambda: len(workloads.ready_endpoints(kube, NS, "vip-svc").get("IPv4", [])) == 2,
        60,
    )
    yield ip
    kube.delete(Service, "vip-svc", namespace=NS)
    kube.delete(Deployment, "layer2-openelb", namespace=NS)
    delete_eip(kube, "vip-pool")


def test_one_master_holds_the_ip_and_serves_the_service(kube: Client, lab_plan: LabPlan, seed: str) -> None:
    owner = one_holder(lab_plan, seed)
    client = lab_plan.client.netns
    macs = workloads.poll("ARP answers", lambda: arping_macs(client, seed), 15)
    assert set(macs) == {iface_mac(lab_plan.node(owner).netns)}, macs  # the master's kernel, no one else
    assert in_netns(client, "ping", "-c", "3", "-W", "1", seed).returncode == 0
    seen = {p.removeprefix("You've hit ") for p in workloads.collect_pod_names(client, workloads.url(seed, 80), 2)}
    pods = {p.metadata.name for p in kube.list(Pod, namespace=NS, labels={"app": "layer2-openelb"})}  # type: ignore[union-attr]
    assert seen == pods

    def master_annotation() -> str | None:
        md = kube.get(Service, "vip-svc", namespace=NS).metadata
        return (md.annotations or {}).get(names.ANNOTATION_VIP_MASTER) if md else None

    annotated = workloads.poll("the VIP master annotation", master_annotation, 15)
    assert annotated == owner
    env = {**os.environ, "KUBECONFIG": str(Paths(lab.state_dir()).kubeconfig("admin"))}
    plugin = Path(sys.executable).parent / "kubectl-openelb"
    status = json.loads(subprocess.run([str(plugin), "status", "-o", "json"], capture_output=True, text=True,
                                       env=env, check=True).stdout)  # fmt: skip
    row = next(r for r in status["services"] if r["name"] == "vip-svc")
    assert row["announcer"] == owner and row["pool"] == "vip-pool"
    assert next(p for p in status["pools"] if p["name"] == "vip-pool")["protocol"] == "vip"
    m = scrape(f"http://{lab_plan.node(owner).lan_v4}:50053/metrics")
    assert m[("openelb_vip_master_ips", ())] >= 1 and m[("openelb_vip_adverts_sent_total", ())] > 0
    other = next(n for n in lab_plan.nodes if n.name != owner)
    m2 = scrape(f"http://{other.lan_v4}:50053/metrics")
    assert m2[("openelb_vip_master_ips", ())] == 0 and m2[("openelb_vip_adverts_received_total", ())] > 0


def test_master_power_off_fails_over(lab_plan: LabPlan, seed: str, speakers: dict[str, SpeakerProcess]) -> None:
    client = lab_plan.client.netns
    owner = lab_plan.node(one_holder(lab_plan, seed))
    old = iface_mac(owner.netns)
    speakers[owner.name].stop(signal.SIGKILL)
    topology.set_node_link(lab_plan, owner, up=False)
    t0 = time.monotonic()
    try:
        new = None
        while time.monotonic() - t0 < 5 and new is None:
            got = arping_macs(client, seed, count=1, wait=0.05)
            new = got[0] if got and got[0] != old else None
        took = time.monotonic() - t0
        assert new is not None, "no other node answered within 5 s"
        assert took < 1.5, f"failover took {took:.2f}s"
        # served by the new master (a request may first pick the Pod behind the cut link: retried)
        answers = workloads.collect_pod_names(client, workloads.url(seed, 80), expected=1, timeout=10)
        assert answers, "nothing answered on the VIP after the failover"
    finally:
        topology.set_node_link(lab_plan, owner, up=True)
    # killed, so its kernel still holds the IP until the restarted speaker removes what it marked
    kc = Paths(lab.state_dir()).kubeconfig("admin")
    speakers[owner.name] = SpeakerProcess(owner.name, owner.netns, kc, tag="-vip")
    workloads.poll("the restarted speaker", lambda: scrape(f"http://{owner.lan_v4}:50053/metrics"), 60, interval=0.5)
    one_holder(lab_plan, seed, timeout=30)  # one holder again (the returning node may preempt)
    workloads.poll("one ARP answer", lambda: len(set(arping_macs(client, seed, 2, 1))) == 1, 15)


def test_ipv6_with_ndisc6_ping_and_curl(kube: Client, lab_plan: LabPlan, seed: str) -> None:
    workloads.apply(kube, eip("vip-v6", "2001:db8:0:1::230-2001:db8:0:1::23f", protocol="vip", interface="eth0"))
    try:
        workloads.apply(kube, lb_service("vip6", NS, annotations={names.ANNOTATION_POOL: "vip-v6"},
                                         ipFamilies=["IPv6"], selector={"app": "layer2-openelb"}))  # fmt: skip
        (ip,) = wait_ips(kube, NS, "vip6")
        owner = one_holder(lab_plan, ip)
        client = lab_plan.client.netns
        mac = workloads.poll("NDP answer", lambda: ndisc_mac(client, ip), 15)
        assert mac == iface_mac(lab_plan.node(owner).netns)
        assert in_netns(client, "ping", "-6", "-c", "2", "-W", "1", ip).returncode == 0
        assert len(set(workloads.collect_pod_names(client, workloads.url(ip, 80), 2))) == 2
    finally:
        kube.delete(Service, "vip6", namespace=NS)
        delete_eip(kube, "vip-v6")
    assert holders(lab_plan, ip) == []


def test_local_policy_master_has_an_endpoint(kube: Client, lab_plan: LabPlan, seed: str) -> None:
    endpoints = {
        p.spec.nodeName  # type: ignore[union-attr]
        for p in kube.list(Pod, namespace=NS, labels={"app": "layer2-openelb"})
    }
    workloads.apply(kube, lb_service("vip-local", NS, annotations={names.ANNOTATION_POOL: "vip-pool"},
                                     selector={"app": "layer2-openelb"}, externalTrafficPolicy="Local"))  # fmt: skip
    try:
        (ip,) = wait_ips(kube, NS, "vip-local")
        owner = one_holder(lab_plan, ip)
        assert owner in endpoints, (owner, endpoints)
        seen = workloads.collect_pod_names(lab_plan.client.netns, workloads.url(ip, 80), 1)
        assert seen
    finally:
        kube.delete(Service, "vip-local", namespace=NS)
    workloads.poll(f"{ip} released", lambda: holders(lab_plan, ip) == [], 15, interval=0.2)


def test_deleting_the_eip_leaves_the_ip_on_no_node(
    kube: Client, lab_plan: LabPlan, ns: str, speakers: dict[str, SpeakerProcess]
) -> None:
    workloads.apply(kube, eip("vip-gone", "198.18.0.238-198.18.0.239", protocol="vip", interface="eth0"))
    workloads.apply(
        kube, lb_service("gone", ns, annotations={names.ANNOTATION_POOL: "vip-gone"}, selector={"app": "x"})
    )
    (ip,) = wait_ips(kube, ns, "gone")
    one_holder(lab_plan, ip)
    # disabled: announced by nobody at once (the IP stays assigned); enabled again: back
    workloads.apply(kube, eip("vip-gone", "198.18.0.238-198.18.0.239", protocol="vip", interface="eth0", disable=True))
    workloads.poll(f"{ip} on no node (Eip disabled)", lambda: holders(lab_plan, ip) == [], 15, interval=0.2)
    assert wait_ips(kube, ns, "gone") == [ip]
    workloads.apply(kube, eip("vip-gone", "198.18.0.238-198.18.0.239", protocol="vip", interface="eth0"))
    one_holder(lab_plan, ip)
    kube.delete(Service, "gone", namespace=ns)
    delete_eip(kube, "vip-gone")
    workloads.poll(f"{ip} on no node", lambda: holders(lab_plan, ip) == [], 15, interval=0.2)
