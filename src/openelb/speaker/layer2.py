"""Layer2 announcers: answer ARP (IPv4) and Neighbor Solicitations (IPv6) for owned IPs.

Thin socket adapters around the sans-IO codecs in `openelb.protocols`: an AF_PACKET socket per
interface for ARP, a raw ICMPv6 socket (hop limit 255, solicited-node groups joined per owned IP)
for NDP, both driven by the asyncio loop's readers. Whether a frame gets an answer is decided by
the pure `arp_answer` / `ndp_answer`. Gaining IPs sends a gratuitous burst (immediately, then
after 0.5, 1 and 2 s, each only for the IPs still owned; one timer per batch, not per IP); losing
one stops the answers at once. A garbage frame is counted and dropped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections import Counter
from collections.abc import Collection, Mapping
from pathlib import Path

from openelb.protocols import arp, ndp
from openelb.speaker.hostnet import HostAddresses, strict_arp

log = logging.getLogger("openelb.speaker.layer2")

ETH_P_ARP = 0x0806
PACKET_OUTGOING = 4
ICMP6_FILTER = 1
IPV6_FREEBIND = 78
BURST = (0.0, 0.5, 1.0, 2.0)

stats: Counter[str] = Counter()
"""requests_received, responses_sent, gratuitous_sent, malformed (exported as metrics)."""

MALFORMED = "malformed"


def arp_answer(frame: bytes, owned: Collection[ipaddress.IPv4Address], mac: bytes) -> bytes | str | None:
    """The reply frame to send for a received ARP frame, None to stay silent, or MALFORMED.
    Only requests for an owned IP get one, and never our own (an echo of our gratuitous ARP)."""
    try:
        pkt = arp.parse(frame)
    except arp.ArpError:
        return MALFORMED
    if pkt.op != arp.OP_REQUEST or pkt.target_ip not in owned or pkt.sender_mac == mac:
        return None
    return arp.build(arp.reply_to(pkt, mac))


def ndp_answer(
    data: bytes,
    hop_limit: int | None,
    source: ipaddress.IPv6Address,
    owned: Collection[ipaddress.IPv6Address],
    mac: bytes,
) -> tuple[ndp.NeighborAdvertisement, ipaddress.IPv6Address] | str | None:
    """The Neighbor Advertisement and its destination for a received ICMPv6 message, None to
    stay silent, or MALFORMED. RFC 4861 §7.1.1: hop limit 255 or it did not come from this link;
    a solicitation from :: is duplicate address detection, answered to all nodes, unsolicited."""
    if hop_limit != 255:
        return MALFORMED
    try:
        msg = ndp.parse(data)
    except ndp.NdpError:
        return MALFORMED
    if not isinstance(msg, ndp.NeighborSolicitation) or msg.target not in owned:
        return None
    if source.is_unspecified:
        return ndp.NeighborAdvertisement(msg.target, mac, solicited=False), ndp.ALL_NODES
    return ndp.NeighborAdvertisement(msg.target, mac, solicited=True), source


_last_receive_error: dict[str, int | None] = {}


def receive_failed(ifname: str, exc: OSError) -> None:
    """A socket error from a receive (ENETDOWN while the link is down, reported once per socket
    by the kernel) is counted, logged when it differs from the last one on that interface, and
    the responder keeps its socket: once the link is back, frames arrive again. Raising out of
    the reader callback would only print a traceback per link flap."""
    stats["receive_errors"] += 1
    if _last_receive_error.get(ifname) != exc.errno:
        _last_receive_error[ifname] = exc.errno
        log.warning("receive on %s failed: %s; still listening", ifname, exc)


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
            except OSError as exc:
                receive_failed(self.ifname, exc)
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            reply = arp_answer(frame, self.owned, self.mac)
            if reply == MALFORMED:
                stats["malformed"] += 1
            elif isinstance(reply, bytes):
                stats["requests_received"] += 1
                self._send(reply)
                stats["responses_sent"] += 1

    def _send(self, frame: bytes) -> None:
        try:
            self.sock.send(frame)
        except OSError as exc:
            log.warning("ARP send on %s failed: %s", self.ifname, exc)

    def own(self, ip: ipaddress.IPv4Address) -> None:
        self.owned.add(ip)

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
            except OSError as exc:
                receive_failed(self.ifname, exc)
                return
            hop = next(
                (
                    int.from_bytes(d[:4], "little")
                    for lvl, typ, d in anc
                    if lvl == socket.IPPROTO_IPV6 and typ == socket.IPV6_HOPLIMIT
                ),
                None,
            )
            src = ipaddress.IPv6Address(addr[0].split("%")[0])
            answer = ndp_answer(data, hop, src, self.owned, self.mac)
            if answer == MALFORMED:
                stats["malformed"] += 1
            elif isinstance(answer, tuple):
                stats["requests_received"] += 1
                self._send(*answer)
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


class Layer2Announcer:
    """Owns IPs on interfaces: creates the responders of an interface on first use."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: HostAddresses | None = None) -> None:
        self.loop = loop
        self.arp: dict[str, ArpResponder] = {}
        self.ndp: dict[str, NdpResponder] = {}
        self.owned: dict[str, str] = {}
        self.host = host

    def apply(self, changes: Mapping[str, str | None]) -> tuple[set[str], set[str]]:
        """IP → the interface to answer on, None = stop; returns (gained, lost)."""
        gained: set[str] = set()
        lost: set[str] = set()
        for ip, ifname in changes.items():
            held = self.owned.get(ip)
            if held == ifname:
                continue
            if held is not None:
                self._disown(ip, held)
                del self.owned[ip]
                lost.add(ip)
            if ifname is None:
                continue
            try:
                self._own(ip, ifname)
            except OSError as exc:
                log.warning("cannot announce %s on %s: %s", ip, ifname, exc)
                continue
            self.owned[ip] = ifname
            gained.add(ip)
            lost.discard(ip)
        if gained:
            fresh = [(ip, self.owned[ip]) for ip in gained]
            for delay in BURST:
                self.loop.call_later(delay, self._burst, fresh)
        if self.host:  # after the responders: the ARP/NDP answers and bursts go out first
            self.host.update("layer2", gained, lost)
        return gained, lost

    def _burst(self, ips: list[tuple[str, str]]) -> None:
        for ip, ifname in ips:
            if self.owned.get(ip) == ifname:
                self._announce(ip, ifname)

    def _announce(self, ip: str, ifname: str) -> None:
        addr = ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv4Address):
            if ifname in self.arp:
                self.arp[ifname].announce(addr)
        elif ifname in self.ndp:
            self.ndp[ifname].announce(addr)

    def _own(self, ip: str, ifname: str) -> None:
        addr = ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv4Address):
            if ifname not in self.arp:
                self.arp[ifname] = ArpResponder(self.loop, ifname)
                if self.host:
                    strict_arp(ifname)
            self.arp[ifname].own(addr)
        else:
            if ifname not in self.ndp:
                self.ndp[ifname] = NdpResponder(self.loop, ifname)
            self.ndp[ifname].own(addr)

    def refresh(self) -> None:
        """A slow gratuitous refresh heals switches and neighbours that missed the burst."""
        for ip, ifname in list(self.owned.items()):
            self._announce(ip, ifname)

    def _disown(self, ip: str, ifname: str) -> None:
        addr = ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv4Address):
            if ifname in self.arp:
                self.arp[ifname].disown(addr)
        elif ifname in self.ndp:
            self.ndp[ifname].disown(addr)

    def close(self) -> None:
        if self.host:
            self.host.update("layer2", (), set(self.owned))
        self.owned.clear()
        for a in self.arp.values():
            a.close()
        for n in self.ndp.values():
            n.close()
