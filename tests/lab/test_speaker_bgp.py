"""BGP mode end to end: speakers on every node peer with BIRD in the `router` namespace; the
`remote` host behind the router reaches the EXTERNAL-IP over ECMP routes; BFD, liveness,
externalTrafficPolicy Local, graceful restart, MD5, route refresh and status are checked against
the router's own view (birdc, the router's kernel routes)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import (
    SpeakerProcess,
    apiserver_outage,
    apply_yaml,
    delete_eip,
    in_netns,
    probe_during,
    running_speakers,
    scrape,
    wait_event,
    wait_ips,
)
from lightkube import Client
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Node, Pod, Service
from lightkube.types import PatchType

from openelb import status
from openelb.kube.resources import BgpConf, BgpPeer
from openelb_lab import lab, router, workloads
from openelb_lab.components import Paths
from openelb_lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.k8s_lab]
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples/bgp"
SPEAKER_ARGS = ("--bgp-status-interval=1", "--enable-layer2=false", "--api-hosts=127.0.0.1:50051")


@pytest.fixture(scope="module")
def bird(lab_plan: LabPlan) -> Iterator[router.Bird]:
    why = router.have_router_daemons()
    if why:
        pytest.skip(why)
    b = router.Bird(lab_plan, lab.state_dir(), router.BirdOptions(bfd_ms=100))
    try:
        yield b
    finally:
        b.stop()


def start_speaker(lab_plan: LabPlan, name: str) -> SpeakerProcess:
    node = next(n for n in lab_plan.nodes if n.name == name)
    return SpeakerProcess(node.name, node.netns, Paths(lab.state_dir()).kubeconfig("admin"), *SPEAKER_ARGS)


@pytest.fixture(scope="module")
def speakers(lab_plan: LabPlan, controller: dict[str, Any], bird: router.Bird) -> Iterator[dict[str, SpeakerProcess]]:
    with running_speakers(lab_plan, *SPEAKER_ARGS) as procs:
        yield procs


@pytest.fixture(scope="module")
def bgp_seed(kube: Client, speakers: dict[str, SpeakerProcess], bird: router.Bird) -> Iterator[tuple[str, str]]:
    for name in ("bgpconf.yaml", "bgppeer.yaml", "eip.yaml", "deployment.yaml", "svc.yaml"):
        apply_yaml(kube, (EXAMPLES / name).read_text(), namespace="default")
    (ip,) = wait_ips(kube, "default", "bgp-svc", timeout=30)
    (ip6,) = wait_ips(kube, "default", "bgp-svc-v6", timeout=30)
    workloads.poll(
        "2 ready endpoints",
        lambda: len(workloads.ready_endpoints(kube, "default", "bgp-svc").get("IPv4", [])) == 2,
        60,
    )
    yield ip, ip6
    for svc in ("bgp-svc", "bgp-svc-v6"):
        kube.delete(Service, svc, namespace="default")
    kube.delete(Deployment, "bgp-openelb", namespace="default")
    for pool in ("bgp-pool", "bgp-pool-v6"):
        delete_eip(kube, pool)
    for peer in ("router", "router-v6"):
        kube.delete(BgpPeer, peer)
    kube.delete(BgpConf, "default")


def yaml_dump(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(obj)


def node_ips(lab_plan: LabPlan, v6: bool = False) -> set[str]:
    return {str(n.lan_v6 if v6 else n.lan_v4) for n in lab_plan.nodes}


def wait_hops(lab_plan: LabPlan, ip: str, wanted: set[str], timeout: float = 15) -> float:
    t0 = time.monotonic()
    workloads.poll(
        f"router routes {ip} via {sorted(wanted)}",
        lambda: router.kernel_next_hops(lab_plan, ip) == wanted,
        timeout,
        0.02,
    )
    return time.monotonic() - t0


def remote_pods(lab_plan: LabPlan, ip: str, expected: int = 2) -> list[str]:
    target = f"http://[{ip}]/" if ":" in ip else f"http://{ip}/"
    return workloads.collect_pod_names(lab_plan.remote.netns, target, expected, timeout=30)


def test_sessions_ecmp_routes_and_remote_curl(lab_plan: LabPlan, bird: router.Bird, bgp_seed: tuple[str, str]) -> None:
    ip, ip6 = bgp_seed
    workloads.poll(
        "all BGP sessions Established", lambda: all(bird.established().values()) and len(bird.established()) == 6, 30
    )
    # ADD-PATH: one path per node, and BIRD installs them as one ECMP route
    wait_hops(lab_plan, ip, node_ips(lab_plan))
    wait_hops(lab_plan, ip6, node_ips(lab_plan, v6=True))
    shown = bird.birdc("show", "route", "for", ip, "all")
    assert "BGP.as_path: 50001" in shown, shown
    # the seed's result, through the router: both pods answer on the EXTERNAL-IP
    assert len(set(remote_pods(lab_plan, ip))) == 2
    assert len(set(remote_pods(lab_plan, ip6))) == 2
    out = in_netns(lab_plan.remote.netns, "ping", "-c", "3", "-i", "0.2", "-W", "1", ip)
    assert out.returncode == 0, out.stdout


def _gobgp(netns: str, *args: str) -> str:
    out = in_netns(netns, "gobgp", "-p", "50051", *args)
    assert out.returncode == 0, f"gobgp {' '.join(args)}: {out.stdout}{out.stderr}"
    return out.stdout


def _rib_hops(text: str) -> dict[str, set[str]]:
    """`gobgp global rib` → network → next hops."""
    hops: dict[str, set[str]] = {}
    for line in text.splitlines():
        parts = line.split()  # [symbols] [ID] Network Next-Hop ...
        net = next((i for i, p in enumerate(parts) if "/" in p), None)
        if net is not None and net + 1 < len(parts):
            hops.setdefault(parts[net], set()).add(parts[net + 1])
    return hops


def test_gobgp_cli_reads_our_speakers_as_bird_sees_them(
    lab_plan: LabPlan, bird: router.Bird, bgp_seed: tuple[str, str]
) -> None:
    """Go OpenELB's operator habits: Debian's `gobgp` CLI inside each node against our speaker's
    read-only GoBGP API, compared with BIRD's own view of the same sessions and routes."""
    ip, ip6 = bgp_seed
    workloads.poll("all BGP sessions Established", lambda: all(bird.established().values()), 30)
    wait_hops(lab_plan, ip, node_ips(lab_plan))
    wait_hops(lab_plan, ip6, node_ips(lab_plan, v6=True))
    for node in lab_plan.nodes:
        assert "AS:        50001" in _gobgp(node.netns, "global")  # the readiness probe of Go OpenELB
        table = _gobgp(node.netns, "neighbor")
        rows = {line.split()[0]: line for line in table.splitlines()[1:] if line.strip()}
        assert set(rows) == {"198.18.0.2", "2001:db8:0:1::2"}, table
        assert all("Establ" in r and "50000" in r for r in rows.values()), table
        detail = _gobgp(node.netns, "neighbor", "198.18.0.2")
        assert "BGP state = ESTABLISHED" in detail and "4-octet-as:\tadvertised and received" in detail, detail
        assert "ipv4-unicast:\tadvertised and received" in detail, detail
        advertised = int(detail.split("Advertised:")[1].split()[0])
        proto = node.name.replace("-", "_")
        imported = int(bird.birdc("show", "protocols", "all", proto).split("Routes:")[1].split()[0])
        assert advertised == imported > 0, (advertised, imported)
        v4 = _rib_hops(_gobgp(node.netns, "global", "rib"))
        assert v4.get(f"{ip}/32") == router.kernel_next_hops(lab_plan, ip), v4
        v6 = _rib_hops(_gobgp(node.netns, "global", "rib", "-a", "ipv6"))
        assert v6.get(f"{ip6}/128") == router.kernel_next_hops(lab_plan, ip6), v6
        adj_out = _gobgp(node.netns, "neighbor", "198.18.0.2", "adj-out")
        assert _rib_hops(adj_out).get(f"{ip}/32") == node_ips(lab_plan), adj_out  # ADD-PATH: every node's path
        refused = in_netns(node.netns, "gobgp", "-p", "50051", "neighbor", "add", "198.18.0.9", "as", "65000")
        assert refused.returncode != 0 and "BgpPeer" in refused.stdout + refused.stderr


def test_an_apiserver_outage_loses_no_request_and_moves_no_ip(
    kube: Client, lab_plan: LabPlan, bird: router.Bird, bgp_seed: tuple[str, str], controller: dict[str, Any]
) -> None:
    """Issue 14: the control plane gone for 20 s changes nothing on the data path (a client
    through the router every 10 ms), and the IP is the same when it returns."""
    ip, _ip6 = bgp_seed
    wait_hops(lab_plan, ip, node_ips(lab_plan))
    oks, fails = probe_during(lab_plan.remote.netns, ip, 26, lambda: apiserver_outage(kube, controller, 20))
    assert fails == 0 and oks > 1000, (oks, fails)
    assert wait_ips(kube, "default", "bgp-svc", timeout=30) == [ip]
    wait_hops(lab_plan, ip, node_ips(lab_plan))


def test_bfd_up_and_status_written(
    kube: Client, lab_plan: LabPlan, bird: router.Bird, bgp_seed: tuple[str, str]
) -> None:
    workloads.poll(
        "BFD Up with every node",
        lambda: (
            {k: v for k, v in bird.bfd_sessions().items() if k in node_ips(lab_plan)}
            == dict.fromkeys(node_ips(lab_plan), "Up")
        ),
        20,
    )

    def peer_status() -> dict[str, Any] | None:
        st = (kube.get(BgpPeer, "router").get("status") or {}).get("nodesPeerStatus") or {}
        # one path per node for the one IPv4 Service, on every node's session
        ok = len(st) == len(lab_plan.nodes) and all(
            v["peerState"]["sessionState"] == "ESTABLISHED" and v["bfd"] == "up" and v["prefixesSent"] == len(st)
            for v in st.values()
        )
        return st if ok else None

    st = workloads.poll("BgpPeer status for every node", peer_status, 15)
    entry = st[lab_plan.nodes[0].name]
    assert entry["peerState"]["peerAs"] == router.ROUTER_AS and entry["addPath"] is True
    assert int(entry["peerState"]["messages"]["sent"]["update"]) >= 1
    conf = workloads.poll(
        "BgpConf status",
        lambda: (kube.get(BgpConf, "default").get("status") or {}).get("nodesConfStatus"),
        15,
    )
    assert conf[lab_plan.nodes[0].name] == {"routerId": lab_plan.nodes[0].lan_v4, "as": router.NODES_AS}
    # `openelb status` shows the same facts: next hops per Service, sessions and BFD per node
    snap = status.collect(kube)
    row = next(s for s in snap.services if s.name == "bgp-svc")
    assert row.mode == "bgp" and row.announcer == ",".join(sorted(n.name for n in lab_plan.nodes))
    sessions = {(s.node, s.peer): s for s in snap.sessions}
    for n in lab_plan.nodes:
        assert sessions[(n.name, "router")].state == "ESTABLISHED" and sessions[(n.name, "router")].bfd == "up"
    # and the speaker's metrics
    m = scrape(f"http://{lab_plan.nodes[0].lan_v4}:50053/metrics")
    peer = (("address", "198.18.0.2"), ("peer", "router"))
    assert m[("openelb_bgp_session_established", peer)] == 1.0 and m[("openelb_bfd_up", peer)] == 1.0
    assert m[("openelb_bgp_paths_sent", peer)] == len(lab_plan.nodes)


def test_route_refresh_resends(kube: Client, lab_plan: LabPlan, bird: router.Bird, bgp_seed: tuple[str, str]) -> None:
    name = lab_plan.nodes[0].name

    def refreshes() -> int:
        st = (kube.get(BgpPeer, "router").get("status") or {}).get("nodesPeerStatus") or {}
        return int(st.get(name, {}).get("peerState", {}).get("messages", {}).get("received", {}).get("refresh", 0))

    before = refreshes()
    bird.birdc("reload", "in", name.replace("-", "_"))
    workloads.poll("ROUTE-REFRESH received", lambda: refreshes() > before, 10)
    wait_hops(lab_plan, bgp_seed[0], node_ips(lab_plan))


def test_etp_local_next_hops_follow_endpoints(kube: Client, lab_plan: LabPlan, bgp_seed: tuple[str, str]) -> None:
    ip = bgp_seed[0]
    kube.patch(
        Service,
        "bgp-svc",
        {"spec": {"externalTrafficPolicy": "Local"}},
        namespace="default",
        patch_type=PatchType.MERGE,
    )
    try:
        pods = list(kube.list(Pod, namespace="default", labels={"app": "bgp-openelb"}))
        nodes = {p.spec.nodeName for p in pods if p.spec}
        wanted = {str(n.lan_v4) for n in lab_plan.nodes if n.name in nodes}
        assert wanted
        wait_hops(lab_plan, ip, wanted)
        # The router hashes the remote's flows onto one next hop, whose local pod answers.
        names = {p.metadata.name for p in pods if p.metadata}
        answered = set(remote_pods(lab_plan, ip, expected=1))
        assert answered and answered <= names
    finally:
        kube.patch(
            Service,
            "bgp-svc",
            {"spec": {"externalTrafficPolicy": "Cluster"}},
            namespace="default",
            patch_type=PatchType.MERGE,
        )
    wait_hops(lab_plan, ip, node_ips(lab_plan))


def test_killed_node_leaves_every_next_hop_set_fast(
    lab_plan: LabPlan, bird: router.Bird, speakers: dict[str, SpeakerProcess], bgp_seed: tuple[str, str]
) -> None:
    ip = bgp_seed[0]
    wait_hops(lab_plan, ip, node_ips(lab_plan))
    victim = lab_plan.nodes[-1]
    workloads.poll("BFD Up", lambda: bird.bfd_sessions().get(str(victim.lan_v4)) == "Up", 20)
    speakers[victim.name].stop(signal.SIGKILL)
    t0 = time.monotonic()
    try:
        workloads.poll("BFD Down at the router", lambda: bird.bfd_sessions().get(str(victim.lan_v4)) != "Up", 5, 0.01)
        bfd_down = time.monotonic() - t0
        assert bfd_down < 0.3 + 0.3, f"BIRD's BFD saw the dead speaker after {bfd_down:.2f}s (3 x 100 ms + margin)"
        took = wait_hops(lab_plan, ip, node_ips(lab_plan) - {str(victim.lan_v4)}, timeout=5) + bfd_down
        # BFD 100 ms x 3 at the router and 200 ms heartbeats at the other speakers
        assert took < 1.0, f"dead node still a next hop after {took:.2f}s"
        assert len(set(remote_pods(lab_plan, ip))) == 2
    finally:
        speakers[victim.name] = start_speaker(lab_plan, victim.name)
    wait_hops(lab_plan, ip, node_ips(lab_plan), timeout=30)


def test_graceful_restart_loses_no_request(
    lab_plan: LabPlan, bird: router.Bird, speakers: dict[str, SpeakerProcess], bgp_seed: tuple[str, str]
) -> None:
    """Through the session without BFD (IPv6) the router keeps the restarting node's route (RFC 4724
    helper), so no route changes and no request fails. (Through the BFD session the stopping
    speaker's AdminDown withdraws the node at once, by design; an ECMP set that changes can reset
    a connection in flight, which is why this is measured on the GR-only path.)"""
    ip, ip6 = bgp_seed
    wait_hops(lab_plan, ip, node_ips(lab_plan))
    wait_hops(lab_plan, ip6, node_ips(lab_plan, v6=True))
    results: list[bool] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set() and len(results) < 2000:
            r = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    lab_plan.remote.netns,
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-m",
                    "2",
                    f"http://[{ip6}]/",
                ],
                capture_output=True,
                check=False,
            )
            results.append(r.returncode == 0)
            time.sleep(0.01)

    name = lab_plan.nodes[0].name
    proto = name.replace("-", "_")
    eor_before = bird.log_lines(proto, "Got END-OF-RIB")
    t = threading.Thread(target=client)
    t.start()
    try:
        time.sleep(1)
        speakers[name].stop(signal.SIGTERM)
        speakers[name] = start_speaker(lab_plan, name)
        workloads.poll(
            "sessions re-established",
            lambda: bird.established().get(proto) and bird.established().get(f"{proto}_v6"),
            30,
        )
        wait_hops(lab_plan, ip, node_ips(lab_plan))
        wait_hops(lab_plan, ip6, node_ips(lab_plan, v6=True))
        time.sleep(1)
    finally:
        stop.set()
        t.join(30)
    assert len(results) > 50 and all(results), f"{results.count(False)} of {len(results)} requests failed"
    assert bird.log_lines(proto, "Got END-OF-RIB") > eor_before  # the restarted speaker's initial dump ended
    # Without BFD (the IPv6 peer) the router kept the routes through the restart (RFC 4724 helper).
    # With BFD the stopping speaker's AdminDown ends the session, and the other nodes carry the traffic.
    assert bird.log_lines(f"{proto}_v6", "Neighbor graceful restart detected") >= 1


def test_md5_wrong_key_then_right_key(
    kube: Client, lab_plan: LabPlan, bird: router.Bird, bgp_seed: tuple[str, str]
) -> None:
    opts = bird.opts
    bird.reconfigure(router.BirdOptions(bfd_ms=opts.bfd_ms, password="lab-secret"))
    try:
        proto = lab_plan.nodes[0].name.replace("-", "_")
        kube.patch(BgpPeer, "router", {"spec": {"conf": {"authPassword": "wrong"}}}, patch_type=PatchType.MERGE)
        time.sleep(3)
        assert not bird.established().get(proto), "session up with a wrong TCP-MD5 key"
        kube.patch(BgpPeer, "router", {"spec": {"conf": {"authPassword": "lab-secret"}}}, patch_type=PatchType.MERGE)
        workloads.poll("Established with the right key", lambda: bird.established().get(proto), 30)
    finally:
        kube.patch(BgpPeer, "router", {"spec": {"conf": {"authPassword": None}}}, patch_type=PatchType.MERGE)
        bird.reconfigure(opts)
    workloads.poll("Established without key", lambda: all(bird.established().values()), 30)


GOBGP_PEER = {
    "apiVersion": "network.kubesphere.io/v1alpha2",
    "kind": "BgpPeer",
    "metadata": {"name": "gobgp"},
    "spec": {
        "conf": {"peerAs": 4200000002, "neighborAddress": "198.18.1.1", "localAs": 4200000001},
        "ebgpMultihop": {"enabled": True, "multihopTtl": 3},
        "transport": {"passiveMode": True, "remotePort": 1790, "tcpMss": 1400},
        "nodeSelector": {"matchExpressions": [{"key": "bgp-gobgp", "operator": "In", "values": ["yes"]}]},
    },
}


def label_node(kube: Client, name: str, value: str | None) -> None:
    kube.patch(Node, name, {"metadata": {"labels": {"bgp-gobgp": value}}}, patch_type=PatchType.MERGE)


def test_gobgpd_multihop_passive_4byte_asn_node_selector(
    kube: Client, lab_plan: LabPlan, bgp_seed: tuple[str, str]
) -> None:
    """gobgpd on the router's WAN address (two hops away) connects to the speakers' listen port
    (passive mode on our side) with 4-octet AS numbers; only nodes matching the selector peer, and
    labelling a node later brings its session up."""
    ip = bgp_seed[0]
    config = router.gobgpd_config(lab_plan, 4200000002, 4200000001, 1790, nodes_passive=True)
    gobgp = router.GoBgp(lab_plan, lab.state_dir(), config)
    first, *others = lab_plan.nodes
    try:
        for n in others:
            label_node(kube, n.name, "yes")
        apply_yaml(kube, yaml_dump(GOBGP_PEER))
        wanted = {str(n.lan_v4) for n in others}

        def sessions() -> dict[str, str]:
            return {a: s for a, s in gobgp.neighbors().items() if s.lower() in ("established", "6")}

        workloads.poll("gobgpd sessions with the labelled nodes", lambda: set(sessions()) == wanted, 40)
        # every speaker sends one path per eligible node (ADD-PATH): gobgpd holds all three next hops
        workloads.poll("gobgpd holds every next hop", lambda: gobgp.rib().get(f"{ip}/32") == node_ips(lab_plan), 20)
        # a field an announce-only speaker cannot honour is named, not silently dropped
        msg = wait_event(kube, "default", "gobgp", "UnsupportedFields")
        assert "spec.transport.tcpMss" in msg
        label_node(kube, first.name, "yes")  # node selector re-evaluated on a label change
        workloads.poll("the newly labelled node peers", lambda: set(sessions()) == node_ips(lab_plan), 40)
        label_node(kube, first.name, None)
        workloads.poll("an unlabelled node stops peering", lambda: str(first.lan_v4) not in sessions(), 20)
    finally:
        kube.delete(BgpPeer, "gobgp")
        for n in lab_plan.nodes:
            label_node(kube, n.name, None)
        gobgp.stop()


def test_bgpconf_edits_keep_routes(
    kube: Client, lab_plan: LabPlan, bird: router.Bird, bgp_seed: tuple[str, str]
) -> None:
    """OpenELB restarted GoBGP on any BgpConf change and lost its routes until the next Eip event.
    Here a listen-port edit only rebinds the listener, and an edit that changes the OPEN restarts
    the sessions gracefully: the router keeps every next hop throughout."""
    ip = bgp_seed[0]
    wait_hops(lab_plan, ip, node_ips(lab_plan))
    workloads.poll("all sessions up", lambda: all(bird.established().values()), 30)
    downs = {p: bird.log_lines(p, "State changed to down") for p in bird.established()}
    kube.patch(BgpConf, "default", {"spec": {"listenPort": 17901}}, patch_type=PatchType.MERGE)
    try:
        time.sleep(3)
        assert {p: bird.log_lines(p, "State changed to down") for p in downs} == downs, "listen port edit flapped"
        for n in lab_plan.nodes:
            out = in_netns(n.netns, "ss", "-Hltn", "sport", "= :17901")
            assert "17901" in out.stdout, f"{n.name} does not listen on the new port"
        detected = bird.log_lines("node_1", "Neighbor graceful restart detected")
        kube.patch(BgpConf, "default", {"spec": {"gracefulRestart": {"restartTime": 90}}}, patch_type=PatchType.MERGE)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            assert router.kernel_next_hops(lab_plan, ip) == node_ips(lab_plan), "a next hop was dropped"
            time.sleep(0.02)
        assert bird.log_lines("node_1", "Neighbor graceful restart detected") > detected, "sessions did not restart"
        workloads.poll("all sessions up again", lambda: all(bird.established().values()), 30)
    finally:
        kube.patch(
            BgpConf,
            "default",
            {"spec": {"listenPort": 17900, "gracefulRestart": {"restartTime": 120}}},
            patch_type=PatchType.MERGE,
        )


def test_frr_active_connect_remote_port_md5_add_path(
    kube: Client, lab_plan: LabPlan, bgp_seed: tuple[str, str]
) -> None:
    """FRR 8 (bgpd without zebra) on the router's WAN address, port 1791, waiting passively: the
    speakers connect out (transport.remotePort) over eBGP multihop with TCP-MD5; FRR receives one
    path per node (ADD-PATH) and the End-of-RIB of every speaker."""
    ip = bgp_seed[0]
    frr = router.Frr(lab_plan, lab.state_dir(), router.frr_config(lab_plan, 65010, router.NODES_AS, "frr-key"))
    peer = {
        "apiVersion": "network.kubesphere.io/v1alpha2",
        "kind": "BgpPeer",
        "metadata": {"name": "frr"},
        "spec": {
            "conf": {"peerAs": 65010, "neighborAddress": str(lab_plan.router.wan_v4), "authPassword": "frr-key"},
            "ebgpMultihop": {"enabled": True, "multihopTtl": 3},
            "transport": {"remotePort": router.FRR_PORT},
        },
    }
    try:
        apply_yaml(kube, yaml_dump(peer))
        nodes = node_ips(lab_plan)

        def established() -> set[str]:
            return {a for a, n in frr.neighbors().items() if n.get("bgpState") == "Established"}

        workloads.poll("FRR sessions with every node", lambda: established() == nodes, 40)
        workloads.poll("FRR holds a path per node", lambda: frr.next_hops(f"{ip}/32") == nodes, 20)
        for address, n in frr.neighbors().items():
            caps = n.get("neighborCapabilities") or {}
            assert isinstance(caps, dict) and "ipv4Unicast" in (caps.get("addPath") or {}), (address, caps)
            gr = n.get("gracefulRestartInfo") or {}
            assert isinstance(gr, dict) and (gr.get("endOfRibRecv") or {}).get("ipv4Unicast") is True, (address, gr)
    finally:
        kube.delete(BgpPeer, "frr")
        frr.stop()


GARBAGE_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 17900), timeout=5)
s.sendall(bytes.fromhex(sys.argv[2]))
data = b""
try:
    while chunk := s.recv(4096):
        data += chunk
except OSError:
    pass
print(data.hex())
"""


def test_garbage_from_a_peer_gets_a_notification_and_harms_nothing(
    kube: Client, lab_plan: LabPlan, bird: router.Bird, speakers: dict[str, SpeakerProcess], bgp_seed: tuple[str, str]
) -> None:
    """A configured peer (the `remote` host, passive) that sends a bad header is answered with
    NOTIFICATION Header Error / Connection Not Synchronized; the speaker and its other sessions
    carry on."""
    remote = str(lab_plan.remote.wan_v4)
    peer = {
        "apiVersion": "network.kubesphere.io/v1alpha2",
        "kind": "BgpPeer",
        "metadata": {"name": "garbage"},
        "spec": {
            "conf": {"peerAs": 65099, "neighborAddress": remote},
            "transport": {"passiveMode": True},
            "ebgpMultihop": {"enabled": True, "multihopTtl": 3},
        },
    }
    node = lab_plan.nodes[0]
    apply_yaml(kube, yaml_dump(peer))
    try:
        time.sleep(2)  # the speakers configure the peer
        before = dict(bird.established())
        garbage = "00" * 16 + "0013" + "04"  # a KEEPALIVE with a zeroed marker
        out = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                lab_plan.remote.netns,
                sys.executable,
                "-c",
                GARBAGE_CLIENT,
                str(node.lan_v4),
                garbage,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        reply = bytes.fromhex(out)
        # our OPEN first, then NOTIFICATION code 1 (header) subcode 1 (not synchronized)
        assert b"\xff" * 16 in reply and reply.endswith(bytes([0, 21, 3, 1, 1])), reply.hex()
        assert speakers[node.name].alive()
        time.sleep(1)
        assert bird.established() == before
        wait_hops(lab_plan, bgp_seed[0], node_ips(lab_plan))
    finally:
        kube.delete(BgpPeer, "garbage")
