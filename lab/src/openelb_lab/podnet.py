"""Pod sandboxes: a network namespace per pod, wired to its node like a simple routed CNI.

    pod ns:  eth0 198.18.65.5/32, 2001:db8:1:1::5/128; default via 198.18.65.1 / fe80::1
    node ns: vp<id> 198.18.65.1/32 + fe80::1/64; route 198.18.65.5/32 dev vp<id>

Every pod veth on a node carries the same gateway address (like Calico's 169.254.1.1), so pods
need no per-node subnet on the wire and nodes route pod CIDRs to each other over the LAN.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from openelb_lab import netns, processes
from openelb_lab.plan import PREFIX, NodePlan, pod_addresses


@dataclass(frozen=True)
class Sandbox:
    uid: str
    node: str
    namespace: str
    name: str
    netns: str | None
    """None for hostNetwork pods, which share the node's namespace."""
    veth: str | None
    slot: int
    ipv4: str
    ipv6: str
    daemon: str | None
    """Name of the pod's server process in the lab's pidfile registry."""


def sandbox_ids(uid: str) -> tuple[str, str]:
    """(netns name, node-side veth name) for a pod uid; the veth name fits IFNAMSIZ."""
    short = hashlib.sha256(uid.encode()).hexdigest()[:10]
    return f"{PREFIX}-pod-{short}", f"vp{short}"


def create(node: NodePlan, uid: str, namespace: str, name: str, slot: int) -> Sandbox:
    ns, veth = sandbox_ids(uid)
    v4, v6 = pod_addresses(node, slot)
    netns.add_netns(ns)
    try:
        netns.run(["ip", "-n", node.netns, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        gw = node.pod_gateway_v4
        netns.ip_batch(
            [
                f"link set {veth} up",
                f"addr add {gw}/32 dev {veth}",
                f"addr add fe80::1/64 dev {veth} nodad",
                # `replace`: a route left by an earlier pod with this address must not block this one
                f"route replace {v4}/32 dev {veth}",
                f"route replace {v6}/128 dev {veth}",
            ],
            netns=node.netns,
        )
        netns.ip_batch(
            [
                "link set eth0 up",
                f"addr add {v4}/32 dev eth0",
                f"addr add {v6}/128 dev eth0 nodad",
                f"route add {gw}/32 dev eth0",
                f"route add default via {gw} dev eth0",
                "route add default via fe80::1 dev eth0",
            ],
            netns=ns,
        )
    except Exception:
        _del_veth(node, veth)
        netns.del_netns(ns)
        raise
    return Sandbox(uid, node.name, namespace, name, ns, veth, slot, v4, v6, None)


def _del_veth(node: NodePlan, veth: str) -> None:
    """Delete the pod's veth pair from the node's side: at once, with its routes. Deleting the
    pod's namespace deletes it too, but the kernel destroys a namespace asynchronously (seconds
    later under load), and until then the next pod given the same address cannot route to it."""
    netns.run(["ip", "-n", node.netns, "link", "del", veth], check=False)


def host_network(node: NodePlan, uid: str, namespace: str, name: str) -> Sandbox:
    assert node.lan_v4 and node.lan_v6
    return Sandbox(uid, node.name, namespace, name, None, None, 0, node.lan_v4, node.lan_v6, None)


def start_server(state: Path, node: NodePlan, box: Sandbox, ports: list[int]) -> Sandbox:
    """Run the kubia-like server inside the pod's namespace (or the node's, for hostNetwork)."""
    if not ports:
        return box
    daemon = f"pod-{box.uid}"
    argv = [sys.executable, "-m", "openelb_lab.podserver", "--name", box.name]
    for p in ports:
        argv += ["--port", str(p)]
    processes.start(state, daemon, netns.exec_argv(box.netns or node.netns, argv))
    return Sandbox(**{**asdict(box), "daemon": daemon})


def remove(state: Path, node: NodePlan, box: Sandbox) -> None:
    if box.daemon:
        for d in processes.recorded(state):
            if d.name == box.daemon:
                processes.stop(state, d, timeout=3)
    if box.veth:
        _del_veth(node, box.veth)
    if box.netns:
        netns.del_netns(box.netns)
    record_path(state, box.uid).unlink(missing_ok=True)


def record_path(state: Path, uid: str) -> Path:
    d = state / "sandboxes"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{uid}.json"


def save(state: Path, box: Sandbox) -> None:
    record_path(state, box.uid).write_text(json.dumps(asdict(box)))


def load_all(state: Path, node: str) -> list[Sandbox]:
    """The sandboxes a node's agent created before it restarted."""
    d = state / "sandboxes"
    if not d.is_dir():
        return []
    out = []
    for f in d.glob("*.json"):
        try:
            box = Sandbox(**json.loads(f.read_text()))
        except (OSError, ValueError, TypeError):
            f.unlink(missing_ok=True)
            continue
        if box.node == node:
            out.append(box)
    return out
