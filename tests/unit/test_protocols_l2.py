import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openelb.protocols import arp, ndp

MAC = bytes.fromhex("02aabbccddee")
CLIENT = bytes.fromhex("020000000064")


def test_arp_request_reply_round_trip() -> None:
    req = arp.ArpPacket(
        arp.OP_REQUEST,
        CLIENT,
        ipaddress.IPv4Address("198.18.0.100"),
        arp.ZERO_MAC,
        ipaddress.IPv4Address("198.18.0.200"),
        eth_src=CLIENT,
    )
    frame = arp.build(req)
    assert len(frame) == 60
    assert arp.parse(frame) == req
    rep = arp.reply_to(arp.parse(frame), MAC)
    assert rep.op == arp.OP_REPLY and rep.sender_ip == req.target_ip and rep.target_mac == CLIENT
    assert rep.eth_dst == CLIENT and rep.eth_src == MAC
    assert arp.parse(arp.build(rep)) == rep


def test_gratuitous_arp() -> None:
    g = arp.gratuitous(ipaddress.IPv4Address("198.18.0.200"), MAC)
    assert g.is_gratuitous and g.eth_dst == arp.BROADCAST and g.target_mac == arp.ZERO_MAC
    assert arp.gratuitous(g.sender_ip, MAC, arp.OP_REPLY).target_mac == arp.BROADCAST
    assert arp.mac_from_str(arp.mac_to_str(MAC)) == MAC


@pytest.mark.parametrize(
    "frame", [b"", b"\x00" * 20, bytes(12) + b"\x08\x00" + bytes(46), bytes(12) + b"\x08\x06" + bytes(46)]
)
def test_garbage_arp_is_refused_cleanly(frame: bytes) -> None:
    with pytest.raises(arp.ArpError):
        arp.parse(frame)


@given(st.binary(max_size=120))
def test_arp_parser_never_crashes(frame: bytes) -> None:
    with contextlib.suppress(arp.ArpError):
        arp.parse(frame)


def test_ndp_ns_na_round_trip_and_flags() -> None:
    target = ipaddress.IPv6Address("2001:db8:0:1::200")
    ns = ndp.NeighborSolicitation(target, CLIENT)
    assert ndp.parse(ndp.build_ns(ns)) == ns
    na = ndp.NeighborAdvertisement(target, MAC, solicited=True, override=True)
    raw = ndp.build_na(na)
    assert raw[0] == ndp.ICMP6_NA and raw[4] == 0x60  # S and O set, R clear
    assert ndp.parse(raw) == na
    assert ndp.solicited_node(target) == ipaddress.IPv6Address("ff02::1:ff00:200")


@pytest.mark.parametrize(
    "message",
    [
        b"",
        bytes([135, 1]) + bytes(22),
        bytes([135, 0, 0, 0]) + bytes(4) + ipaddress.IPv6Address("ff02::1").packed,
        bytes([135, 0, 0, 0]) + bytes(4) + bytes(16) + bytes([1, 0]),
        bytes([128, 0]) + bytes(22),
    ],
)
def test_garbage_ndp_is_refused_cleanly(message: bytes) -> None:
    with pytest.raises(ndp.NdpError):
        ndp.parse(message)


@given(st.binary(max_size=120))
def test_ndp_parser_never_crashes(message: bytes) -> None:
    with contextlib.suppress(ndp.NdpError):
        ndp.parse(message)
