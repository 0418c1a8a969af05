"""Layer2 announcers: answer ARP (IPv4) and Neighbor Solicitations (IPv6) for owned IPs.

Thin socket adapters around the sans-IO codecs in `openelb.protocols`: an AF_PACKET socket per
interface for ARP, a raw ICMPv6 socket (hop limit 255, solicited-node groups joined per owned IP)
for NDP, both driven by the asyncio loop's readers. Gaining an IP sends a gratuitous burst
(immediately, then after 0.5, 1 and 2 s, each only if the IP is still owned); losing it stops
the answers at once. A garbage frame is counted and dropped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import struct
import subprocess
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from openelb.protocols import arp, ndp

log = logging.getLogger("openelb.speaker.layer2")

ETH_P_ARP = 0x0806
PACKET_OUTGOING = 4
ICMP6_FILTER = 1
IPV6_FREEBIND = 78
BURST = (0.0, 0.5, 1.0, 2.0)

stats: Counter[str] = Counter()
"""requests_received, responses_sent, gratuitous_sent, malformed (exported as metrics)."""


def resolve_interface(spec: str) -> str:
    """An Eip `interface`: a name, or `can_reach:<ip>` (the interface of the route to that IP)."""
    if spec.startswith("can_reach:"):
        target = spec.split(":", 1)[1]
        out = subprocess.run(["ip", "-j", "route", "get", target], capture_output=True, text=True, check=True)
        return str(json.loads(out.stdout)[0]["dev"])
    return spec


def mac_of(ifname: str) -> bytes:
    return arp.mac_from_str(Path(f"/sys/class/net/{ifname}/address").read_text().strip())


class ArpResponder:
    def __init__(self, loop: asyncio.AbstractEventLoop, ifname: str) -> None:
        self.loop = loop
        self.ifname = ifname
        self.mac = mac_of(ifname)
        self.owned: set[ipaddress.IPv4Address] = set()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        self.sock.bind((ifname, ETH_P_ARP))
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(64):
            try:
                frame, addr = self.sock.recvfrom(2048)
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            try:
                pkt = arp.parse(frame)
            except arp.ArpError:
                stats["malformed"] += 1
                continue
            if pkt.op != arp.OP_REQUEST or pkt.target_ip not in self.owned or pkt.sender_mac == self.mac:
                continue
            stats["requests_received"] += 1
            self._send(arp.build(arp.reply_to(pkt, self.mac)))
            stats["responses_sent"] += 1

    def _send(self, frame: bytes) -> None:
        try:
            self.sock.send(frame)
        except OSError as exc:
            log.warning("ARP send on %s failed: %s", self.ifname, exc)

    def own(self, ip: ipaddress.IPv4Address) -> None:
        if ip in self.owned:
            return
        self.owned.add(ip)
        for delay in BURST:
            self.loop.call_later(delay, self.announce, ip)

    def announce(self, ip: ipaddress.IPv4Address) -> None:
        if ip in self.owned:
            self._send(arp.build(arp.gratuitous(ip, self.mac, arp.OP_REQUEST)))
            self._send(arp.build(arp.gratuitous(ip, self.mac, arp.OP_REPLY)))
            stats["gratuitous_sent"] += 2

    def disown(self, ip: ipaddress.IPv4Address) -> None:
        self.owned.discard(ip)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class NdpResponder:
    def __init__(self, loop: asyncio.AbstractEventLoop, ifname: str) -> None:
        self.loop = loop
        self.ifname = ifname
        self.index = socket.if_nametoindex(ifname)
        self.mac = mac_of(ifname)
        self.owned: set[ipaddress.IPv6Address] = set()
        self.groups: Counter[ipaddress.IPv6Address] = Counter()
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.index)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        # The target may not be a local address (without the local-address link): allow it as source.
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        # Only Neighbor Solicitations reach us: ICMP6_FILTER bit set = blocked.
        blocked = [0xFFFFFFFF] * 8
        blocked[ndp.ICMP6_NS >> 5] &= ~(1 << (ndp.ICMP6_NS & 31))
        s.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *blocked))
        s.setblocking(False)
        self.sock = s
        loop.add_reader(s.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(64):
            try:
                data, anc, _flags, addr = self.sock.recvmsg(2048, socket.CMSG_SPACE(4))
            except BlockingIOError:
                return
            hop = next(
                (
                    int.from_bytes(d[:4], "little")
                    for lvl, typ, d in anc
                    if lvl == socket.IPPROTO_IPV6 and typ == socket.IPV6_HOPLIMIT
                ),
                None,
            )
            if hop != 255:  # RFC 4861 §7.1.1: anything else did not come from this link
                stats["malformed"] += 1
                continue
            try:
                msg = ndp.parse(data)
            except ndp.NdpError:
                stats["malformed"] += 1
                continue
            if not isinstance(msg, ndp.NeighborSolicitation) or msg.target not in self.owned:
                continue
            stats["requests_received"] += 1
            src = ipaddress.IPv6Address(addr[0].split("%")[0])
            if src.is_unspecified:  # duplicate address detection: answer to all nodes, not solicited
                self._send(ndp.NeighborAdvertisement(msg.target, self.mac, solicited=False), ndp.ALL_NODES)
            else:
                self._send(ndp.NeighborAdvertisement(msg.target, self.mac, solicited=True), src)
            stats["responses_sent"] += 1

    def _send(self, na: ndp.NeighborAdvertisement, dst: ipaddress.IPv6Address) -> None:
        """Sent from the target address itself, as the kernel does for its own addresses (tools
        such as ndisc6 match the reply's source against the solicited target)."""
        pktinfo = na.target.packed + struct.pack("@I", self.index)
        try:
            self.sock.sendmsg(
                [ndp.build_na(na)],
                [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo)],
                0,
                (str(dst), 0, 0, self.index),
            )
        except OSError as exc:
            log.warning("NA send on %s failed: %s", self.ifname, exc)

    def _group(self, ip: ipaddress.IPv6Address, join: bool) -> None:
        group = ndp.solicited_node(ip)
        mreq = group.packed + struct.pack("@I", self.index)
        if join:
            self.groups[group] += 1
            if self.groups[group] == 1:
                self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        else:
            self.groups[group] -= 1
            if self.groups[group] <= 0:
                del self.groups[group]
                self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_LEAVE_GROUP, mreq)

    def own(self, ip: ipaddress.IPv6Address) -> None:
        if ip in self.owned:
            return
        self.owned.add(ip)
        self._group(ip, True)
        for delay in BURST:
            self.loop.call_later(delay, self.announce, ip)

    def announce(self, ip: ipaddress.IPv6Address) -> None:
        if ip in self.owned:
            self._send(ndp.NeighborAdvertisement(ip, self.mac, solicited=False, override=True), ndp.ALL_NODES)
            stats["gratuitous_sent"] += 1

    def disown(self, ip: ipaddress.IPv6Address) -> None:
        if ip in self.owned:
            self.owned.discard(ip)
            self._group(ip, False)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


def _plen(ip: str) -> int:
    return 32 if ipaddress.ip_address(ip).version == 4 else 128


class LocalAddresses:
    """Owned IPs as /32 and /128 addresses on a dummy link, so the owner answers ping like an
    IPVS-mode node does (kube-proxy's nftables and iptables modes only DNAT the Service ports).
    Only the owner holds an IP (Layer2), or the nodes that are BGP next hops for it; each mode
    claims its set and the link holds the union. A restart starts from an empty link."""

    def __init__(self, link: str = "openelb0") -> None:
        self.link = link
        self._claims: dict[str, set[str]] = {}
        self._held: set[str] = set()
        if subprocess.run(["ip", "link", "show", link], capture_output=True, check=False).returncode != 0:
            # A dummy link where the kernel has the module; a port-less bridge behaves the same.
            for kind in ("dummy", "bridge"):
                if (
                    subprocess.run(
                        ["ip", "link", "add", link, "type", kind], capture_output=True, check=False
                    ).returncode
                    == 0
                ):
                    break
            else:
                raise OSError(f"cannot create link {link} (neither dummy nor bridge)")
        subprocess.run(["ip", "addr", "flush", "dev", link], capture_output=True, check=True)
        subprocess.run(["ip", "link", "set", link, "up"], capture_output=True, check=True)

    def strict_arp(self, ifname: str) -> None:
        """The kernel must not answer ARP on `ifname` for addresses it holds elsewhere (ours on
        the dummy link), or a crashed speaker's node would keep answering: arp_ignore=1 and
        arp_announce=2 on that interface, what kube-proxy's strictARP sets for IPVS."""
        for knob, value in (("arp_ignore", "1"), ("arp_announce", "2")):
            path = Path(f"/proc/sys/net/ipv4/conf/{ifname}/{knob}")
            try:
                if path.read_text().strip() != value:
                    path.write_text(value)
            except OSError as exc:
                log.warning("cannot set %s on %s: %s", knob, ifname, exc)

    def claim(self, who: str, ips: Iterable[str]) -> None:
        """`who` (a mode) wants exactly `ips` on the link; the link holds every mode's claims."""
        self._claims[who] = set(ips)
        wanted = set().union(*self._claims.values())
        self.apply(wanted - self._held, self._held - wanted)
        self._held = wanted

    def apply(self, add: Iterable[str], remove: Iterable[str]) -> None:
        """One `ip -batch` for a whole ownership change: a node taking over thousands of IPs must
        not run a process per IP (nor block its event loop, and so its heartbeats, for seconds)."""
        lines = [f"addr del {ip}/{_plen(ip)} dev {self.link}" for ip in remove]
        lines += [
            f"addr replace {ip}/{_plen(ip)} dev {self.link}" + ("" if _plen(ip) == 32 else " nodad") for ip in add
        ]
        if lines:
            subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n", text=True,
                           capture_output=True, check=False)  # fmt: skip

    def close(self) -> None:
        subprocess.run(["ip", "addr", "flush", "dev", self.link], capture_output=True, check=False)


class Layer2Announcer:
    """Owns IPs on interfaces: creates the responders of an interface on first use."""

    def __init__(self, loop: asyncio.AbstractEventLoop, local: LocalAddresses | None = None) -> None:
        self.loop = loop
        self.arp: dict[str, ArpResponder] = {}
        self.ndp: dict[str, NdpResponder] = {}
        self.owned: dict[str, str] = {}
        self.local = local

    def set_owned(self, wanted: dict[str, str]) -> tuple[set[str], set[str]]:
        """Make `wanted` (ip -> interface) the owned set; returns (gained, lost)."""
        lost = {ip for ip, ifname in self.owned.items() if wanted.get(ip) != ifname}
        for ip in lost:
            self._disown(ip, self.owned.pop(ip))
        gained = set()
        for ip, ifname in wanted.items():
            if ip in self.owned:
                continue
            try:
                self._own(ip, ifname)
            except OSError as exc:
                log.warning("cannot announce %s on %s: %s", ip, ifname, exc)
                continue
            self.owned[ip] = ifname
            gained.add(ip)
        if self.local:  # after the responders: the ARP/NDP answers and bursts go out first
            self.local.claim("layer2", self.owned)
        return gained, lost

    def _own(self, ip: str, ifname: str) -> None:
        addr = ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv4Address):
            if ifname not in self.arp:
                self.arp[ifname] = ArpResponder(self.loop, ifname)
                if self.local:
                    self.local.strict_arp(ifname)
            self.arp[ifname].own(addr)
        else:
            if ifname not in self.ndp:
                self.ndp[ifname] = NdpResponder(self.loop, ifname)
            self.ndp[ifname].own(addr)

    def refresh(self) -> None:
        for a in self.arp.values():
            for ip4 in list(a.owned):
                a.announce(ip4)
        for n in self.ndp.values():
            for ip6 in list(n.owned):
                n.announce(ip6)

    def _disown(self, ip: str, ifname: str) -> None:
        addr = ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv4Address):
            if ifname in self.arp:
                self.arp[ifname].disown(addr)
        elif ifname in self.ndp:
            self.ndp[ifname].disown(addr)

    def close(self) -> None:
        if self.local:
            self.local.claim("layer2", ())
        for a in self.arp.values():
            a.close()
        for n in self.ndp.values():
            n.close()
