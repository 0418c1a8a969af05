"""Layer2 mode end to end: the seed walkthrough with real kernel clients (ping, curl, arping,
ndisc6), one answering node, sub-second failover, graceful handover, visible announcer."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    SpeakerProcess,
    apiserver_outage,
    apply_yaml,
    arping_macs,
    delete_eip,
    eip,
    iface_mac,
    in_netns,
    lb_service,
    ndisc_mac,
    probe_during,
    running_speakers,
    scrape,
    wait_event,
    wait_ips,
    wait_live_peers,
)
from lightkube import Client
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap, Pod, Service

from openelb_lab import lab, topology, workloads
from openelb_lab.components import Paths
from openelb_lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.k8s_lab]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def speakers(lab_plan: LabPlan, controller: dict[str, Any]) -> Iterator[dict[str, SpeakerProcess]]:
    with running_speakers(lab_plan) as procs:
        yield procs


@pytest.fixture(scope="module")
def seed(kube: Client, speakers: dict[str, SpeakerProcess]) -> Iterator[str]:
    """The seed walkthrough's manifests (lab addresses) applied in the default namespace."""
    for name in ("layer2-eip.yaml", "layer2-deployment.yaml", "layer2-svc.yaml"):
        apply_yaml(kube, (REPO / "examples/seed" / name).read_text(), namespace="default")
    (ip,) = wait_ips(kube, "default", "layer2-svc", timeout=30)
    workloads.poll(
        "2 ready endpoints",
        lambda: len(workloads.ready_endpoints(kube, "default", "layer2-svc").get("IPv4", [])) == 2,
        60,
    )
    yield ip
    kube.delete(Service, "layer2-svc", namespace="default")
    kube.delete(Deployment, "layer2-openelb", namespace="default")
    delete_eip(kube, "eip-pool")


def owner_of(lab_plan: LabPlan, mac: str) -> str:
    return next(n.name for n in lab_plan.nodes if iface_mac(n.netns) == mac)


def test_seed_walkthrough_ping_curl_and_one_mac(kube: Client, lab_plan: LabPlan, seed: str) -> None:
    client = lab_plan.client.netns
    macs = workloads.poll("ARP answers", lambda: arping_macs(client, seed), 15)
    assert len(set(macs)) == 1, macs
    owner = owner_of(lab_plan, macs[0])
    ping = in_netns(client, "ping", "-c", "3", "-W", "1", seed)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    names = {p.removeprefix("You've hit ") for p in workloads.collect_pod_names(client, workloads.url(seed, 80), 2)}
    pods = {
        p.metadata.name
        for p in kube.list(
            Pod,
            namespace="default",
            labels={"app": "layer2-openelb"},
        )
    }  # type: ignore[union-attr]
    assert names == pods, (names, pods)
    metrics = scrape(f"http://{lab_plan.node(owner).lan_v4}:50053/metrics")
    assert metrics[("openelb_speaker_owned_ips", (("family", "IPv4"),))] >= 1
    assert metrics[("openelb_layer2_responses_sent_total", ())] >= 1
    assert metrics[("openelb_speaker_live_peers", ())] == 3
    rtt = workloads.poll(
        "heartbeat RTT samples",
        lambda: scrape(f"http://{lab_plan.node(owner).lan_v4}:50053/metrics").get(
            ("openelb_speaker_heartbeat_rtt_seconds_count", ())
        ),
        10,
    )
    assert rtt >= 1
    svc = workloads.poll(
        "announcer annotation",
        lambda: (
            (s := kube.get(Service, "layer2-svc", namespace="default")).metadata.annotations.get(  # type: ignore[union-attr]
                "layer2.openelb.kubesphere.io/v1alpha1"
            )
            == owner
            and s
        ),
        10,
    )
    assert svc


def test_a_second_speaker_on_a_node_names_the_taken_port(
    lab_plan: LabPlan, speakers: dict[str, SpeakerProcess]
) -> None:
    """Two speakers on one node (a leftover process, a second DaemonSet): the newcomer exits at
    once saying which port and why, and the running one is untouched."""
    node = lab_plan.nodes[0]
    extra = SpeakerProcess(node.name, node.netns, Paths(lab.state_dir()).kubeconfig("admin"), tag="-extra")
    try:
        code = extra.proc.wait(30)
    finally:
        extra.stop()
    log = extra.log.read_text()
    assert code == 1, log
    assert "cannot listen on UDP 0.0.0.0:7946 (speaker heartbeats, --bind-port)" in log, log
    assert "Traceback" not in log, log
    assert speakers[node.name].alive()
    wait_live_peers(speakers, [str(n.lan_v4) for n in lab_plan.nodes], timeout=5)


def test_ipv6_with_ndisc6_ping_and_curl(kube: Client, lab_plan: LabPlan, speakers: dict[str, SpeakerProcess]) -> None:
    workloads.apply(kube, eip("l2-v6", "2001:db8:0:1::220-2001:db8:0:1::22f", protocol="layer2", interface="eth0"))
    ns = "default"
    try:
        workloads.apply(
            kube,
            lb_service(
                "v6",
                ns,
                annotations={"eip.openelb.kubesphere.io/v1alpha2": "l2-v6"},
                ipFamilies=["IPv6"],
                selector={"app": "layer2-openelb"},
            ),
        )
        (ip,) = wait_ips(kube, ns, "v6")
        client = lab_plan.client.netns
        mac = workloads.poll("NDP answer", lambda: ndisc_mac(client, ip), 15)
        assert mac in {iface_mac(n.netns) for n in lab_plan.nodes}
        assert in_netns(client, "ping", "-6", "-c", "2", "-W", "1", ip).returncode == 0
        seen = workloads.collect_pod_names(client, workloads.url(ip, 80), 2)
        assert len(set(seen)) == 2
    finally:
        kube.delete(Service, "v6", namespace=ns)
        delete_eip(kube, "l2-v6")


def _mac_changes_within(lab_plan: LabPlan, ip: str, old: str, limit: float) -> tuple[str, float]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        macs = arping_macs(lab_plan.client.netns, ip, count=1, wait=0.1)
        if macs and macs[0] != old:
            return macs[0], time.monotonic() - t0
    raise AssertionError(f"no other node answered for {ip} within {limit}s")


def test_killed_owner_fails_over_within_a_second(
    lab_plan: LabPlan, seed: str, speakers: dict[str, SpeakerProcess]
) -> None:
    old = arping_macs(lab_plan.client.netns, seed, count=1)[0]
    owner = owner_of(lab_plan, old)
    speakers[owner].stop(signal.SIGKILL)
    _new, took = _mac_changes_within(lab_plan, seed, old, 5)
    assert took < 1.5, f"failover took {took:.2f}s"
    assert in_netns(lab_plan.client.netns, "curl", "-s", "--max-time", "2", f"http://{seed}/").stdout.startswith(
        "You've hit"
    )
    # the DaemonSet would restart it: the restarted speaker starts clean and the owner stays unique
    kc = Paths(lab.state_dir()).kubeconfig("admin")
    speakers[owner] = SpeakerProcess(owner, lab_plan.node(owner).netns, kc)
    wait_live_peers(speakers, [str(n.lan_v4) for n in lab_plan.nodes])  # back, and heard as ALIVE
    macs = arping_macs(lab_plan.client.netns, seed)
    assert len(set(macs)) == 1


def test_graceful_stop_hands_over_at_once(lab_plan: LabPlan, seed: str, speakers: dict[str, SpeakerProcess]) -> None:
    old = arping_macs(lab_plan.client.netns, seed, count=1)[0]
    owner = owner_of(lab_plan, old)
    speakers[owner].stop(signal.SIGTERM)
    _new, took = _mac_changes_within(lab_plan, seed, old, 5)
    assert took < 1.0, f"graceful handover took {took:.2f}s"
    kc = Paths(lab.state_dir()).kubeconfig("admin")
    speakers[owner] = SpeakerProcess(owner, lab_plan.node(owner).netns, kc)


def _pinned_pod(name: str, ns: str, node: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "luksa/kubia", "ports": [{"containerPort": 8080}]}],
        },
    }


def test_local_traffic_policy_follows_the_pods(
    kube: Client, lab_plan: LabPlan, ns: str, speakers: dict[str, SpeakerProcess]
) -> None:
    workloads.apply(kube, eip("l2-local", "198.18.0.230-198.18.0.235", protocol="layer2", interface="eth0"))
    client = lab_plan.client.netns
    try:
        workloads.apply(
            kube,
            _pinned_pod("p1", ns, "node-2", "etp"),
            lb_service(
                "etp",
                ns,
                annotations={"eip.openelb.kubesphere.io/v1alpha2": "l2-local"},
                externalTrafficPolicy="Local",
                selector={"app": "etp"},
            ),
        )
        (ip,) = wait_ips(kube, ns, "etp")
        mac = workloads.poll("ARP from node-2", lambda: (m := arping_macs(client, ip, count=1, wait=1)) and m[0], 20)
        assert mac == iface_mac(lab_plan.node("node-2").netns)
        # kube-proxy programs the new Service's local endpoint on its own sync period: retry briefly
        assert workloads.collect_pod_names(client, workloads.url(ip, 80), 1, timeout=10)[-1:] == ["p1"]
        # move the only endpoint to node-3: the announcement follows it
        kube.delete(Pod, "p1", namespace=ns)
        workloads.apply(kube, _pinned_pod("p2", ns, "node-3", "etp"))
        want = iface_mac(lab_plan.node("node-3").netns)
        workloads.poll("ARP from node-3", lambda: arping_macs(client, ip, count=1, wait=1) == [want], 30)
        assert workloads.collect_pod_names(client, workloads.url(ip, 80), 1, timeout=10)[-1] == "p2"
    finally:
        delete_eip(kube, "l2-local")


PARTITION = """
table inet olab-partition {
  chain in { type filter hook input priority 0; udp dport 7946 drop; }
  chain out { type filter hook output priority 0; udp dport 7946 drop; }
}
"""


def test_partition_keeps_ips_answered_and_heals_within_a_second(
    lab_plan: LabPlan, seed: str, speakers: dict[str, SpeakerProcess]
) -> None:
    client = lab_plan.client.netns
    old = arping_macs(client, seed, count=1)[0]
    owner = lab_plan.node(owner_of(lab_plan, old))
    nft = ["ip", "netns", "exec", owner.netns, "nft"]
    assert subprocess.run([*nft, "-f", "-"], input=PARTITION, text=True, check=False).returncode == 0
    try:
        # Both sides announce: the isolated owner keeps it, the others elect one of theirs.
        assert workloads.poll("two answers", lambda: len(set(arping_macs(client, seed, 4, 1))) == 2, 10)
    finally:
        subprocess.run([*nft, "delete", "table", "inet", "olab-partition"], check=True)
    healed_at = time.monotonic()
    workloads.poll("one answer after healing", lambda: set(arping_macs(client, seed, 2, 0.3)) == {old}, 5, 0.02)
    took = time.monotonic() - healed_at
    assert took < 1.3, f"double answers lasted {took:.2f}s after healing (probe window 0.3 s included)"


def test_range_outside_the_interface_subnet_is_served_with_a_warning(
    kube: Client, lab_plan: LabPlan, ns: str, speakers: dict[str, SpeakerProcess]
) -> None:
    workloads.apply(kube, eip("l2-offnet", "203.0.113.10-203.0.113.12", protocol="layer2", interface="eth0"))
    try:
        workloads.apply(
            kube,
            lb_service(
                "off", ns, annotations={"eip.openelb.kubesphere.io/v1alpha2": "l2-offnet"}, selector={"app": "none"}
            ),
        )
        (ip,) = wait_ips(kube, ns, "off")
        msg = wait_event(kube, "default", "l2-offnet", "Layer2RangeOutsideSubnet")
        assert "outside the subnets of eth0 (198.18.0.0/24" in msg
        macs = workloads.poll("ARP answer", lambda: arping_macs(lab_plan.client.netns, ip, 2, 1), 15)
        assert len(set(macs)) == 1
    finally:
        delete_eip(kube, "l2-offnet")


def test_ipvs_without_strict_arp_is_reported(
    kube: Client, lab_plan: LabPlan, speakers: dict[str, SpeakerProcess]
) -> None:
    conf = "\n".join(
        [
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1",
            "kind: KubeProxyConfiguration",
            "mode: ipvs",
            "ipvs:",
            "  strictARP: false",
            "",
        ]
    )
    workloads.apply(
        kube,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
            "data": {"config.conf": conf},
        },
    )
    try:
        speakers["node-1"].stop()
        speakers["node-1"] = SpeakerProcess(
            "node-1", lab_plan.node("node-1").netns, Paths(lab.state_dir()).kubeconfig("admin")
        )
        assert "strictARP" in wait_event(kube, "default", "node-1", "IPVSWithoutStrictARP")
    finally:
        kube.delete(ConfigMap, "kube-proxy", namespace="kube-system")


def _neigh_mac(client: str, ip: str) -> str | None:
    out = in_netns(client, "ip", "neigh", "show", ip).stdout.split()
    return out[out.index("lladdr") + 1].lower() if "lladdr" in out else None


def _reach_again(lab_plan: LabPlan, ip: str, old: str, limit: float = 5) -> str:
    """Poll with curl until the IP answers through another node; that node's MAC must then be
    in the client's neighbour table (learned from the gratuitous burst or a fresh ARP)."""
    client = lab_plan.client.netns
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ok = in_netns(client, "curl", "-s", "--max-time", "0.5", f"http://{ip}/").stdout.startswith("You've hit")
        mac = _neigh_mac(client, ip)
        if ok and mac and mac != old:
            return mac
        time.sleep(0.05)
    raise AssertionError(f"{ip} not reachable through another node within {limit}s")


@pytest.mark.parametrize("failure", ["link-down", "power-off"])
def test_owner_link_loss_and_power_off(
    lab_plan: LabPlan, seed: str, speakers: dict[str, SpeakerProcess], failure: str
) -> None:
    client = lab_plan.client.netns
    old = workloads.poll("an owner", lambda: (m := arping_macs(client, seed, 1, 1)) and m[0], 10)
    owner = lab_plan.node(owner_of(lab_plan, old))
    if failure == "power-off":  # every OpenELB process on it dies and its link goes dark
        speakers[owner.name].stop(signal.SIGKILL)
    topology.set_node_link(lab_plan, owner, up=False)
    try:
        new = _reach_again(lab_plan, seed, old)
        assert new in {iface_mac(n.netns) for n in lab_plan.nodes if n is not owner}
    finally:
        topology.set_node_link(lab_plan, owner, up=True)
        if failure == "power-off":
            kc = Paths(lab.state_dir()).kubeconfig("admin")
            speakers[owner.name] = SpeakerProcess(owner.name, owner.netns, kc)
        # back to one answer once the node is back
        workloads.poll("one owner again", lambda: len(set(arping_macs(client, seed, 2, 0.5))) == 1, 15)


def test_interface_by_route_can_reach(
    kube: Client, lab_plan: LabPlan, ns: str, speakers: dict[str, SpeakerProcess]
) -> None:
    router = lab_plan.router.lan_v4
    workloads.apply(
        kube, eip("l2-reach", "198.18.0.240-198.18.0.241", protocol="layer2", interface=f"can_reach:{router}")
    )
    try:
        workloads.apply(
            kube,
            lb_service(
                "reach", ns, annotations={"eip.openelb.kubesphere.io/v1alpha2": "l2-reach"}, selector={"app": "x"}
            ),
        )
        (ip,) = wait_ips(kube, ns, "reach")
        macs = workloads.poll("ARP answer via can_reach", lambda: arping_macs(lab_plan.client.netns, ip, 2, 1), 15)
        assert len(set(macs)) == 1 and macs[0] in {iface_mac(n.netns) for n in lab_plan.nodes}  # eth0 of the owner
    finally:
        delete_eip(kube, "l2-reach")


def test_status_cli_reports_pools_services_announcer_and_pending(
    kube: Client, lab_plan: LabPlan, seed: str, ns: str
) -> None:
    import json
    import os
    import sys

    workloads.apply(kube, lb_service("stuck", ns, annotations={"eip.openelb.kubesphere.io/v1alpha1": "203.0.113.99"}))
    wait_event(kube, ns, "stuck", "AssignIPFailed")
    owner = owner_of(lab_plan, arping_macs(lab_plan.client.netns, seed, 1)[0])
    env = {**os.environ, "KUBECONFIG": str(Paths(lab.state_dir()).kubeconfig("admin"))}
    plugin = Path(sys.executable).parent / "kubectl-openelb"
    out = json.loads(subprocess.run([str(plugin), "status", "-o", "json"], capture_output=True, text=True,
                                    env=env, check=True).stdout)  # fmt: skip
    pool = next(p for p in out["pools"] if p["name"] == "eip-pool")
    assert pool["usage"] == 1 and pool["size"] == 11 and pool["protocol"] == "layer2" and pool["default"]
    svc = next(s for s in out["services"] if s["name"] == "layer2-svc")
    assert svc["ips"] == [seed] and svc["pool"] == "eip-pool" and svc["announcer"] == owner
    stuck = next(s for s in out["services"] if s["name"] == "stuck")
    assert stuck["ips"] == [] and "203.0.113.99" in stuck["pending"]


def test_an_apiserver_outage_loses_no_request_and_moves_no_ip(
    kube: Client, lab_plan: LabPlan, seed: str, controller: dict[str, Any]
) -> None:
    """Issue 14: the control plane gone for 20 s changes nothing on the data path (a client on the
    LAN every 10 ms), and the IP and its announcer are the same when it returns."""
    before = kube.get(Service, "layer2-svc", namespace="default").metadata.annotations  # type: ignore[union-attr]
    oks, fails = probe_during(lab_plan.client.netns, seed, 26, lambda: apiserver_outage(kube, controller, 20))
    assert fails == 0 and oks > 1000, (oks, fails)
    assert wait_ips(kube, "default", "layer2-svc", timeout=30) == [seed]
    after = kube.get(Service, "layer2-svc", namespace="default").metadata.annotations  # type: ignore[union-attr]
    key = "layer2.openelb.kubesphere.io/v1alpha1"
    assert (after or {}).get(key) == (before or {}).get(key)
