"""IPv6 Neighbor Discovery (RFC 4861) Neighbor Solicitation / Advertisement messages.

Sans-IO: the ICMPv6 message bytes as a raw ICMPv6 socket delivers and sends them (the kernel adds
the IPv6 header and the checksum). Malformed input raises `NdpError`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ICMP6_NS = 135
ICMP6_NA = 136
OPT_SOURCE_LL = 1
OPT_TARGET_LL = 2
FLAG_ROUTER = 0x80000000
FLAG_SOLICITED = 0x40000000
FLAG_OVERRIDE = 0x20000000
HEADER = struct.Struct("!BBHI16s")
ALL_NODES = ipaddress.IPv6Address("ff02::1")


class NdpError(ValueError):
    pass


@dataclass(frozen=True)
class NeighborSolicitation:
    target: ipaddress.IPv6Address
    source_mac: bytes | None = None


@dataclass(frozen=True)
class NeighborAdvertisement:
    target: ipaddress.IPv6Address
    mac: bytes
    solicited: bool
    override: bool = True
    router: bool = False


def solicited_node(ip: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """ff02::1:ffXX:XXXX, the multicast group where solicitations for `ip` are sent."""
    return ipaddress.IPv6Address(int(ipaddress.IPv6Address("ff02::1:ff00:0")) | (int(ip) & 0xFFFFFF))


def _options(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    i = 0
    while i + 2 <= len(data):
        kind, length = data[i], data[i + 1]
        if length == 0:
            raise NdpError("NDP option with length 0")
        end = i + length * 8
        if end > len(data):
            raise NdpError("NDP option runs past the message")
        out.setdefault(kind, data[i + 2 : end])
        i = end
    return out


def parse(message: bytes) -> NeighborSolicitation | NeighborAdvertisement:
    if len(message) < HEADER.size:
        raise NdpError(f"message too short for NS/NA: {len(message)} bytes")
    kind, code, _checksum, word, target = HEADER.unpack_from(message)
    if code != 0:
        raise NdpError(f"NDP code must be 0, got {code}")
    addr = ipaddress.IPv6Address(target)
    if addr.is_multicast:
        raise NdpError("NDP target is a multicast address")
    opts = _options(message[HEADER.size :])
    if kind == ICMP6_NS:
        src = opts.get(OPT_SOURCE_LL)
        return NeighborSolicitation(addr, src[:6] if src and len(src) >= 6 else None)
    if kind == ICMP6_NA:
        mac = opts.get(OPT_TARGET_LL, b"")[:6]
        return NeighborAdvertisement(
            addr, mac, bool(word & FLAG_SOLICITED), bool(word & FLAG_OVERRIDE), bool(word & FLAG_ROUTER)
        )
    raise NdpError(f"not a Neighbor Solicitation/Advertisement (type {kind})")


def build_na(na: NeighborAdvertisement) -> bytes:
    flags = (FLAG_SOLICITED if na.solicited else 0) | (FLAG_OVERRIDE if na.override else 0)
    flags |= FLAG_ROUTER if na.router else 0
    return HEADER.pack(ICMP6_NA, 0, 0, flags, na.target.packed) + bytes([OPT_TARGET_LL, 1]) + na.mac


def build_ns(ns: NeighborSolicitation) -> bytes:
    body = HEADER.pack(ICMP6_NS, 0, 0, 0, ns.target.packed)
    if ns.source_mac:
        body += bytes([OPT_SOURCE_LL, 1]) + ns.source_mac
    return body
