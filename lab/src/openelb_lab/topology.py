"""Build and remove the lab network: a switch namespace with two bridges and one namespace per host.

    root ns: olab0 198.18.0.1 (apiserver) ── veth ─┐
    olab-sw: br-lan ── node-1..N, client, router    │  (LAN 198.18.0.0/24, 2001:db8:0:1::/64)
             br-wan ── router, remote                  (WAN 198.18.1.0/24, 2001:db8:0:2::/64)

The bridges live in their own namespace so the machine's own netfilter and forwarding settings
never see lab traffic; the only root-namespace change is the `olab0` veth end (its address and a
route to the service CIDR through node-1), removed by `down`.
Multicast snooping is off so Neighbor Solicitations reach every port, as on a dumb switch.
"""

from __future__ import annotations

from openelb_lab import netns
from openelb_lab.plan import (
    CLUSTER_CIDR_V4,
    CLUSTER_CIDR_V6,
    LAN_V4,
    LAN_V6,
    SERVICE_CIDR_V4,
    SERVICE_CIDR_V6,
    WAN_V4,
    WAN_V6,
    Host,
    LabPlan,
    NodePlan,
)


def build(plan: LabPlan) -> None:
    sw = plan.switch_netns
    netns.add_netns(sw)
    netns.ip_batch(
        [
            f"link add {plan.lan_bridge} type bridge mcast_snooping 0 stp_state 0 forward_delay 0",
            f"link add {plan.wan_bridge} type bridge mcast_snooping 0 stp_state 0 forward_delay 0",
            f"link set {plan.lan_bridge} up",
            f"link set {plan.wan_bridge} up",
        ],
        netns=sw,
    )
    # The root-namespace end: the apiserver's address, and a route to the service CIDR (below).
    netns.run(["ip", "link", "add", plan.root_link, "type", "veth", "peer", "name", "p-root", "netns", sw])
    netns.ip_batch(
        [
            f"addr add {plan.api_v4}/{LAN_V4.prefixlen} dev {plan.root_link}",
            f"link set {plan.root_link} up",
        ]
    )
    netns.ip_batch([f"link set p-root master {plan.lan_bridge}", "link set p-root up"], netns=sw)
    for index, host in enumerate(plan.hosts):
        _attach_host(plan, host, index)
    # The control plane reaches ClusterIPs (webhook Services) through node-1's kube-proxy, as an
    # apiserver on a cluster node does. The route lives on the lab's own veth and goes with it.
    netns.ip_batch([f"route replace {SERVICE_CIDR_V4} via {plan.nodes[0].lan_v4} dev {plan.root_link}"])
    _routes(plan)


def _attach_host(plan: LabPlan, host: Host, index: int) -> None:
    forwarding = host in plan.nodes or host is plan.router
    netns.add_netns(host.netns, forwarding=forwarding)
    if host is plan.router:  # ECMP by flow (ports included), as routers in front of clusters do
        netns.sysctl(host.netns, ["net.ipv4.fib_multipath_hash_policy=1", "net.ipv6.fib_multipath_hash_policy=1"])
    for seg, bridge, v4, v6, prefix4, prefix6 in (
        ("lan", plan.lan_bridge, host.lan_v4, host.lan_v6, LAN_V4.prefixlen, LAN_V6.prefixlen),
        ("wan", plan.wan_bridge, host.wan_v4, host.wan_v6, WAN_V4.prefixlen, WAN_V6.prefixlen),
    ):
        if v4 is None and v6 is None:
            continue
        port = f"p{index}-{seg}"
        dev = "eth0" if seg == "lan" or host.lan_v4 is None else "eth1"
        netns.run(
            [
                "ip",
                "-n",
                plan.switch_netns,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                dev,
                "netns",
                host.netns,
            ]
        )
        netns.ip_batch([f"link set {port} master {bridge}", f"link set {port} up"], netns=plan.switch_netns)
        cmds = [f"link set {dev} up"]
        if v4:
            cmds.append(f"addr add {v4}/{prefix4} dev {dev}")
        if v6:
            cmds.append(f"addr add {v6}/{prefix6} dev {dev} nodad")
        netns.ip_batch(cmds, netns=host.netns)


def node_routes(plan: LabPlan, node: NodePlan) -> list[str]:
    """A node's routes (idempotent `replace`): service CIDRs on the LAN, other nodes' pod CIDRs."""
    cmds = [
        # Locally originated traffic to a ClusterIP needs a route before kube-proxy's DNAT.
        f"route replace {SERVICE_CIDR_V4} dev eth0",
        f"route replace {SERVICE_CIDR_V6} dev eth0",
        # Replies to clients behind the router (BGP mode) go back through it.
        f"route replace {WAN_V4} via {plan.router.lan_v4}",
        f"route replace {WAN_V6} via {plan.router.lan_v6}",
    ]
    for other in plan.nodes:
        if other is not node:
            cmds.append(f"route replace {other.pod_cidr_v4} via {other.lan_v4}")
            cmds.append(f"route replace {other.pod_cidr_v6} via {other.lan_v6}")
    return cmds


def set_node_link(plan: LabPlan, node: NodePlan, up: bool) -> None:
    """Take a node's LAN link down or bring it back (failure tests). The kernel drops the routes
    of a link that goes down, so bringing it up restores them too, as a node's network
    configuration would after a cable is plugged back."""
    netns.ip_batch([f"link set eth0 {'up' if up else 'down'}"], netns=node.netns)
    if up:
        netns.ip_batch(node_routes(plan, node), netns=node.netns)


def _routes(plan: LabPlan) -> None:
    for node in plan.nodes:
        netns.ip_batch(node_routes(plan, node), netns=node.netns)
        # Pods reach the apiserver (root ns) and other lab hosts masqueraded as their node, as a
        # CNI's ipMasq does: the root namespace has no route to pod CIDRs and must never need one.
        netns.run(
            ["ip", "netns", "exec", node.netns, "nft", "-f", "-"],
            input_text=masquerade_rules(node.pod_cidr_v4, node.pod_cidr_v6),
        )
    remote = plan.remote
    netns.ip_batch(
        [f"route add default via {plan.router.wan_v4}", f"route add default via {plan.router.wan_v6}"],
        netns=remote.netns,
    )


def masquerade_rules(pod_v4: str, pod_v6: str) -> str:
    return f"""
table inet olab-masq {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "eth0" ip saddr {pod_v4} ip daddr != {{ {CLUSTER_CIDR_V4}, {SERVICE_CIDR_V4} }} masquerade
    oifname "eth0" ip6 saddr {pod_v6} ip6 daddr != {{ {CLUSTER_CIDR_V6}, {SERVICE_CIDR_V6} }} masquerade
  }}
}}
"""


def teardown(plan: LabPlan | None) -> list[str]:
    """Delete every lab namespace (pods included) and the root veth; return what was removed."""
    removed = []
    for name in netns.lab_netns():
        netns.del_netns(name)
        removed.append(f"netns {name}")
    root_link = plan.root_link if plan else "olab0"
    if netns.link_exists(root_link):
        netns.run(["ip", "link", "del", root_link], check=False)
        removed.append(f"link {root_link}")
    return removed
