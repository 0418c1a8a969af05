"""The README's main job: the seed walkthrough in the lab.

Part 1 proves the cluster: two kubia pods behind a NodePort, curled from the client host through
every node. Part 2 is the seed's OpenELB steps with its own manifests (lab addresses): install
OpenELB with `deploy/openelb.yaml` (its Pods run in the lab), apply the Eip, the Deployment and
the LoadBalancer Service, show `kubectl get eip` / `kubectl get svc` with the EXTERNAL-IP, ping
and curl it. Part 3 is BGP mode through the lab's router.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lightkube import Client

from openelb.kube.client import sync_client
from openelb.kube.resources import Eip
from openelb_lab import binaries, install, netns, processes, router, workloads
from openelb_lab.components import Paths
from openelb_lab.lab import LabError, Progress, load_plan, state_dir
from openelb_lab.plan import LabPlan, NodePlan


def run(namespace: str = "demo") -> int:
    say = Progress()
    paths = Paths(state_dir())
    plan = load_plan(paths)
    if plan is None:
        raise LabError("the lab is not up (run: openelb-lab up)")
    client = sync_client(paths.kubeconfig("admin"), field_manager="openelb-demo")
    say(f"creating namespace {namespace}, Deployment kubia (2 replicas) and NodePort Service kubia")
    workloads.ensure_namespace(client, namespace)
    workloads.apply(
        client,
        workloads.kubia_deployment("kubia", namespace),
        workloads.service("kubia", namespace, "kubia"),
    )
    say("waiting for both pods to be Ready in the Service's EndpointSlices")
    workloads.poll(
        "2 ready endpoints",
        lambda: len(workloads.ready_endpoints(client, namespace, "kubia").get("IPv4", [])) == 2,
        120,
    )
    port = workloads.node_port(client, namespace, "kubia")
    kubectl = str(binaries.ensure(build=False) / "kubectl")
    kc = f"--kubeconfig={paths.kubeconfig('admin')}"
    for what in (["get", "nodes", "-o", "wide"], ["-n", namespace, "get", "pods,svc", "-o", "wide"]):
        print(f"$ kubectl {' '.join(what)}", flush=True)
        subprocess.run([kubectl, kc, *what], check=False)
    names: set[str] = set()
    for node in plan.nodes:
        for addr in (node.lan_v4, node.lan_v6):
            assert addr is not None
            target = workloads.url(addr, port)
            seen = workloads.collect_pod_names(plan.client.netns, target, expected=2)
            print(f"$ curl {target}   (from the client host, through {node.name})")
            for name in dict.fromkeys(seen):
                print(f"You've hit {name}")
            names.update(seen)
    if len(names) < 2:
        print(f"demo FAILED: only {sorted(names)} answered; see {paths.state / 'logs'}", file=sys.stderr)
        return 1
    say(f"NodePort works: both pods answered through every node: {', '.join(sorted(names))}")
    return seed_walkthrough(client, plan, paths, kubectl, kc)


def seed_walkthrough(client: Client, plan: LabPlan, paths: Paths, kubectl: str, kc: str) -> int:
    say = Progress()
    say("installing OpenELB from the install manifest; waiting for its Pods (controller x2, a speaker per node)")
    print("$ kubectl apply --server-side -f deploy/openelb.yaml", flush=True)
    install.install(client)
    print("$ kubectl -n openelb-system get pods -o wide", flush=True)
    subprocess.run([kubectl, kc, "-n", "openelb-system", "get", "pods", "-o", "wide"], check=False)
    seed = Path(__file__).resolve().parents[3] / "examples" / "seed"
    for name in ("layer2-eip.yaml", "layer2-deployment.yaml", "layer2-svc.yaml"):
        print(f"$ kubectl apply -f examples/seed/{name}", flush=True)
        subprocess.run([kubectl, kc, "apply", "-f", str(seed / name)], check=True)
    ip = workloads.external_ip(client, "default", "layer2-svc")
    workloads.poll("eip usage", lambda: (client.get(Eip, "eip-pool").get("status") or {}).get("usage") == 1, 30)
    for what in (["get", "eip"], ["get", "svc"]):
        print(f"$ kubectl {' '.join(what)}", flush=True)
        subprocess.run([kubectl, kc, *what], check=False)
    say(f"layer2-svc got EXTERNAL-IP {ip} from eip-pool; from the client host:")
    client_ns = plan.client.netns
    workloads.poll(f"an ARP answer for {ip}", lambda: _arp_answered(client_ns, ip), 30)
    if not _ping_and_curl(client_ns, ip, pings=5):
        return 1
    say(f"seed walkthrough done: {ip} answers ping, and curl reaches both pods")
    vip = vip_walkthrough(client, plan, paths, kubectl, kc)
    if vip is None:
        return 1
    bgp_ip = bgp_walkthrough(client, plan, paths, kubectl, kc)
    if bgp_ip is None:
        return 1
    print(
        "\nThe lab stays up: `openelb-lab exec client -- curl http://"
        f"{ip}/`, `openelb-lab exec remote -- curl http://{bgp_ip}/`, `openelb-lab status`,"
        " `openelb-lab down` when finished."
    )
    return 0


def vip_walkthrough(client: Client, plan: LabPlan, paths: Paths, kubectl: str, kc: str) -> str | None:
    """The seed's third mode: an Eip with `protocol: vip`. The VRRP master node holds the IP on
    its eth0; its kernel answers ARP and ping and takes the Service's traffic."""
    say = Progress()
    seed = Path(__file__).resolve().parents[3] / "examples" / "seed"
    for name in ("vip-eip.yaml", "vip-svc.yaml"):
        print(f"$ kubectl apply -f examples/seed/{name}", flush=True)
        subprocess.run([kubectl, kc, "apply", "-f", str(seed / name)], check=True)
    ip = workloads.external_ip(client, "default", "vip-svc")
    say(f"vip-svc got EXTERNAL-IP {ip} from vip-pool; waiting for the VRRP master to hold it")
    holder = workloads.poll(f"a node holding {ip}", lambda: _holder(plan, ip), 30)
    print(f"$ ip -br addr show eth0   (on {holder.name}, the VRRP master)", flush=True)
    subprocess.run(netns.exec_argv(holder.netns, ["ip", "-br", "addr", "show", "eth0"]), check=False)
    if not _ping_and_curl(plan.client.netns, ip, pings=3):
        return None
    say(f"VIP mode done: {holder.name} is VRRP master for {ip}; it answers ping and curl reaches both pods")
    return ip


def _ping_and_curl(client_ns: str, ip: str, pings: int) -> bool:
    """From the client host: ping the IP, then curl it until both pods answered (shown)."""
    print(f"$ ping {ip} -c {pings}", flush=True)
    ping = subprocess.run(netns.exec_argv(client_ns, ["ping", ip, "-c", str(pings)]), check=False)
    seen = workloads.collect_pod_names(client_ns, workloads.url(ip, 80), expected=2)
    for name in seen[:6]:
        print(f"$ curl {ip}\nYou've hit {name}")
    if ping.returncode != 0 or len(set(seen)) < 2:
        print(f"demo FAILED: {ip}: ping exit {ping.returncode}, pods answering {sorted(set(seen))}", file=sys.stderr)
        return False
    return True


def _holder(plan: LabPlan, ip: str) -> NodePlan | None:
    for n in plan.nodes:
        out = subprocess.run(netns.exec_argv(n.netns, ["ip", "-o", "addr", "show", "eth0"]), capture_output=True,
                             text=True, check=False).stdout  # fmt: skip
        if f" {ip}/" in out:
            return n
    return None


def bgp_walkthrough(client: Client, plan: LabPlan, paths: Paths, kubectl: str, kc: str) -> str | None:
    """BGP mode: BIRD in the router namespace peers with every node; the `remote` host behind the
    router reaches the EXTERNAL-IP over the ECMP route the speakers announced."""
    say = Progress()
    if not any(d.name == "bird" and processes.is_running(d) for d in processes.recorded(paths.state)):
        say("starting BIRD in the router namespace (AS 50000, BFD 100 ms, ADD-PATH receive)")
        router.Bird(plan, paths.state, router.BirdOptions(bfd_ms=100))
    bgp = Path(__file__).resolve().parents[3] / "examples" / "bgp"
    for name in ("bgpconf.yaml", "bgppeer.yaml", "eip.yaml", "deployment.yaml", "svc.yaml"):
        print(f"$ kubectl apply -f examples/bgp/{name}", flush=True)
        subprocess.run([kubectl, kc, "apply", "-f", str(bgp / name)], check=True)
    ip = workloads.external_ip(client, "default", "bgp-svc")
    ip6 = workloads.external_ip(client, "default", "bgp-svc-v6")
    print("$ kubectl get svc bgp-svc bgp-svc-v6", flush=True)
    subprocess.run([kubectl, kc, "get", "svc", "bgp-svc", "bgp-svc-v6"], check=False)
    hops = {str(n.lan_v4) for n in plan.nodes}
    say(f"waiting for the router to route {ip} over every node")
    workloads.poll(f"ECMP route for {ip}", lambda: router.kernel_next_hops(plan, ip) == hops, 60)
    sock = str(paths.state / "bird" / "bird.ctl")
    for shown, argv in (
        (f"birdc show route for {ip}", ["birdc", "-s", sock, "show", "route", "for", ip]),
        (f"ip route show {ip}", ["ip", "route", "show", ip]),
    ):
        print(f"$ {shown}   (on the router)", flush=True)
        subprocess.run(netns.exec_argv(plan.router.netns, argv), check=False)
    remote = plan.remote.netns
    ok = True
    for target in (ip, ip6):
        print(f"$ ping {target} -c 3   (from the remote host, behind the router)", flush=True)
        ok &= subprocess.run(netns.exec_argv(remote, ["ping", target, "-c", "3"]), check=False).returncode == 0
        seen = workloads.collect_pod_names(remote, workloads.url(target, 80), expected=2)
        for name in seen[:4]:
            print(f"$ curl {workloads.url(target, 80)}\nYou've hit {name}")
        ok &= len(set(seen)) == 2
    if not ok:
        print(f"demo FAILED: BGP path to {ip}/{ip6}; see {paths.state / 'logs'}", file=sys.stderr)
        return None
    say(f"BGP path done: the remote host pings and curls {ip} and {ip6} through the router")
    return ip


def _arp_answered(client_ns: str, ip: str) -> bool:
    out = subprocess.run(
        netns.exec_argv(client_ns, ["arping", "-c", "1", "-w", "1", "-I", "eth0", ip]),
        capture_output=True,
        text=True,
        check=False,
    )
    return out.returncode == 0
