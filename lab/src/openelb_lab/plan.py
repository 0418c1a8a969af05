"""The lab's address and name plan: a pure function of (node count, options).

Every address comes from the benchmarking range 198.18.0.0/15 and the documentation range
2001:db8::/32, so no lab packet can ever be meant for a real network. Keeping the plan pure lets
tests check it without root, and lets `down` find every name `up` may have created.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

PREFIX = "olab"
"""Every network namespace and root-namespace link the lab creates starts with this."""

MAX_NODES = 60
FULL_NODES = 3
"""Nodes beyond this many are light by default (see NodePlan.light)."""

LAN_V4 = ipaddress.IPv4Network("198.18.0.0/24")
LAN_V6 = ipaddress.IPv6Network("2001:db8:0:1::/64")
WAN_V4 = ipaddress.IPv4Network("198.18.1.0/24")
WAN_V6 = ipaddress.IPv6Network("2001:db8:0:2::/64")
CLUSTER_CIDR_V4 = ipaddress.IPv4Network("198.18.64.0/18")
CLUSTER_CIDR_V6 = ipaddress.IPv6Network("2001:db8:1::/48")
SERVICE_CIDR_V4 = ipaddress.IPv4Network("198.19.0.0/16")
SERVICE_CIDR_V6 = ipaddress.IPv6Network("2001:db8:ff::/112")


@dataclass(frozen=True)
class Host:
    """A lab host: one network namespace with addresses on the LAN and/or WAN segment."""

    name: str
    netns: str
    lan_v4: str | None = None
    lan_v6: str | None = None
    wan_v4: str | None = None
    wan_v6: str | None = None


@dataclass(frozen=True)
class NodePlan(Host):
    """An emulated Kubernetes node: a host plus its pod CIDRs."""

    pod_cidr_v4: str = ""
    pod_cidr_v6: str = ""
    light: bool = False
    """A light node, for scale runs on one machine: its Node object (kept Ready by its agent,
    tainted so no Pod lands there) and its namespace on the LAN, where a speaker can run; no
    kube-proxy and no Pods, so it forwards no Service traffic."""

    @property
    def pod_gateway_v4(self) -> str:
        """The node-side address of every pod veth; pods use it as default gateway."""
        return str(ipaddress.IPv4Network(self.pod_cidr_v4)[1])


@dataclass(frozen=True)
class Ports:
    """Loopback/LAN ports of the control plane, away from the well-known defaults."""

    etcd_client: int = 23790
    etcd_peer: int = 23800
    apiserver: int = 6443
    controller_manager: int = 10257
    scheduler: int = 10259


@dataclass(frozen=True)
class LabPlan:
    """Everything `lab up` creates, named and addressed."""

    nodes: tuple[NodePlan, ...]
    client: Host
    router: Host
    remote: Host
    switch_netns: str = f"{PREFIX}-sw"
    lan_bridge: str = "br-lan"
    wan_bridge: str = "br-wan"
    root_link: str = f"{PREFIX}0"
    """The root-namespace end of the veth where the apiserver listens."""
    api_v4: str = str(LAN_V4[1])
    ports: Ports = field(default_factory=Ports)
    proxy_mode: str = "nftables"
    runtime: str = "image"
    """How OpenELB's containers run: "image" (the OCI image under runc, as users run it) or
    "checkout" (this checkout's Python: no image build, for quick iterations on the code)."""

    @property
    def api_url(self) -> str:
        return f"https://{self.api_v4}:{self.ports.apiserver}"

    @property
    def service_cidrs(self) -> str:
        return f"{SERVICE_CIDR_V4},{SERVICE_CIDR_V6}"

    @property
    def cluster_cidrs(self) -> str:
        return f"{CLUSTER_CIDR_V4},{CLUSTER_CIDR_V6}"

    @property
    def hosts(self) -> tuple[Host, ...]:
        return (*self.nodes, self.client, self.router, self.remote)

    def host(self, name: str) -> Host:
        """Look a host up by the name users type (`node-1`, `client`, `router`, `remote`)."""
        for h in self.hosts:
            if h.name == name:
                return h
        known = ", ".join(h.name for h in self.hosts)
        raise KeyError(f"no lab host {name!r}; known hosts: {known}")

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no lab node {name!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabPlan:
        return cls(
            nodes=tuple(NodePlan(**n) for n in data["nodes"]),
            client=Host(**data["client"]),
            router=Host(**data["router"]),
            remote=Host(**data["remote"]),
            switch_netns=data["switch_netns"],
            lan_bridge=data["lan_bridge"],
            wan_bridge=data["wan_bridge"],
            root_link=data["root_link"],
            api_v4=data["api_v4"],
            ports=Ports(**data["ports"]),
            proxy_mode=data["proxy_mode"],
            runtime=data.get("runtime", "image"),
        )


RUNTIMES = ("image", "checkout")


def make_plan(
    node_count: int = 3, proxy_mode: str = "nftables", full_nodes: int = FULL_NODES, runtime: str = "image"
) -> LabPlan:
    """Name and address every lab host.

    LAN 198.18.0.0/24 + 2001:db8:0:1::/64: apiserver .1, router .2, nodes .11 upwards, client .100.
    WAN 198.18.1.0/24 + 2001:db8:0:2::/64: router .1, remote .10 (default route via the router).
    Node i owns pod CIDRs 198.18.(64+i).0/24 and 2001:db8:1:i::/64. Nodes after the first
    `full_nodes` are light.
    """
    if not 1 <= node_count <= MAX_NODES:
        raise ValueError(f"node count must be between 1 and {MAX_NODES}, got {node_count}")
    if proxy_mode not in ("nftables", "iptables"):
        raise ValueError(f"kube-proxy mode must be nftables or iptables, got {proxy_mode!r}")
    if runtime not in RUNTIMES:
        raise ValueError(f"container runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    nodes = []
    for i in range(1, node_count + 1):
        name = f"node-{i}"
        nodes.append(
            NodePlan(
                name=name,
                netns=f"{PREFIX}-{name}",
                lan_v4=str(LAN_V4[10 + i]),
                lan_v6=str(LAN_V6[0x10 + i]),
                pod_cidr_v4=str(ipaddress.IPv4Network(f"198.18.{64 + i}.0/24")),
                pod_cidr_v6=str(ipaddress.IPv6Network(f"2001:db8:1:{i:x}::/64")),
                light=i > full_nodes,
            )
        )
    client = Host("client", f"{PREFIX}-client", lan_v4=str(LAN_V4[100]), lan_v6=str(LAN_V6[0x100]))
    router = Host(
        "router",
        f"{PREFIX}-router",
        lan_v4=str(LAN_V4[2]),
        lan_v6=str(LAN_V6[2]),
        wan_v4=str(WAN_V4[1]),
        wan_v6=str(WAN_V6[1]),
    )
    remote = Host("remote", f"{PREFIX}-remote", wan_v4=str(WAN_V4[10]), wan_v6=str(WAN_V6[0x10]))
    return LabPlan(
        nodes=tuple(nodes), client=client, router=router, remote=remote, proxy_mode=proxy_mode, runtime=runtime
    )


def pod_addresses(node: NodePlan, index: int) -> tuple[str, str]:
    """The IPv4 and IPv6 address of the pod in slot `index` (2..253) of a node."""
    if not 2 <= index <= 253:
        raise ValueError(f"pod slot must be within 2..253, got {index}")
    v4 = ipaddress.IPv4Network(node.pod_cidr_v4)[index]
    v6 = ipaddress.IPv6Network(node.pod_cidr_v6)[index]
    return str(v4), str(v6)
