"""ARP over Ethernet (RFC 826): parse and build frames. Sans-IO: bytes in, dataclasses out.

Malformed input raises `ArpError`; a responder drops such frames and counts them, it never crashes.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ETH_P_ARP = 0x0806
ETH_HEADER = struct.Struct("!6s6sH")
ARP_IPV4 = struct.Struct("!HHBBH6s4s6s4s")
HTYPE_ETHERNET = 1
PTYPE_IPV4 = 0x0800
OP_REQUEST = 1
OP_REPLY = 2
BROADCAST = b"\xff" * 6
ZERO_MAC = b"\x00" * 6


class ArpError(ValueError):
    pass


@dataclass(frozen=True)
class ArpPacket:
    op: int
    sender_mac: bytes
    sender_ip: ipaddress.IPv4Address
    target_mac: bytes
    target_ip: ipaddress.IPv4Address
    eth_src: bytes = ZERO_MAC
    eth_dst: bytes = BROADCAST

    @property
    def is_gratuitous(self) -> bool:
        return self.sender_ip == self.target_ip


def mac_to_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def mac_from_str(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6:
        raise ArpError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def parse(frame: bytes) -> ArpPacket:
    """Parse an Ethernet frame carrying ARP for IPv4 over Ethernet."""
    if len(frame) < ETH_HEADER.size + ARP_IPV4.size:
        raise ArpError(f"frame too short for ARP: {len(frame)} bytes")
    dst, src, ethertype = ETH_HEADER.unpack_from(frame)
    if ethertype != ETH_P_ARP:
        raise ArpError(f"not an ARP frame (ethertype {ethertype:#06x})")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = ARP_IPV4.unpack_from(frame, ETH_HEADER.size)
    if (htype, ptype, hlen, plen) != (HTYPE_ETHERNET, PTYPE_IPV4, 6, 4):
        raise ArpError("not IPv4-over-Ethernet ARP")
    if op not in (OP_REQUEST, OP_REPLY):
        raise ArpError(f"unknown ARP operation {op}")
    return ArpPacket(op, sha, ipaddress.IPv4Address(spa), tha, ipaddress.IPv4Address(tpa), eth_src=src, eth_dst=dst)


def build(pkt: ArpPacket) -> bytes:
    """An Ethernet frame (padded to the 60-byte minimum)."""
    frame = ETH_HEADER.pack(pkt.eth_dst, pkt.eth_src, ETH_P_ARP) + ARP_IPV4.pack(
        HTYPE_ETHERNET,
        PTYPE_IPV4,
        6,
        4,
        pkt.op,
        pkt.sender_mac,
        pkt.sender_ip.packed,
        pkt.target_mac,
        pkt.target_ip.packed,
    )
    return frame.ljust(60, b"\x00")


def reply_to(request: ArpPacket, mac: bytes) -> ArpPacket:
    """The unicast reply that says `request.target_ip` is at `mac`."""
    return ArpPacket(
        OP_REPLY,
        sender_mac=mac,
        sender_ip=request.target_ip,
        target_mac=request.sender_mac,
        target_ip=request.sender_ip,
        eth_src=mac,
        eth_dst=request.sender_mac,
    )


def gratuitous(ip: ipaddress.IPv4Address, mac: bytes, op: int = OP_REQUEST) -> ArpPacket:
    """A broadcast gratuitous ARP (request or reply) announcing `ip` at `mac` (RFC 5227 §3)."""
    target_mac = ZERO_MAC if op == OP_REQUEST else BROADCAST
    return ArpPacket(op, mac, ip, target_mac, ip, eth_src=mac, eth_dst=BROADCAST)
