"""Batched rtnetlink address messages (issue 12: takeover time): what we build is what pyroute2,
the reference we replaced on this path, decodes; acknowledgements are matched by sequence."""

from __future__ import annotations

import struct

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from openelb.protocols import rtnl


def decode(data: bytes) -> ifaddrmsg:
    msg = ifaddrmsg(data)
    msg.decode()
    return msg


def test_an_added_ipv6_address_is_marked_skips_dad_and_gets_no_prefix_route() -> None:
    raw = rtnl.address_message("replace", 7, "2001:db8::5", seq=42, proto=99)
    msg = decode(raw)
    assert msg["header"]["type"] == rtnl.RTM_NEWADDR and msg["header"]["sequence_number"] == 42
    assert msg["header"]["flags"] == rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK | rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
    assert msg["header"]["length"] == len(raw)
    assert (msg["family"], msg["prefixlen"], msg["index"]) == (10, 128, 7)
    assert msg.get_attr("IFA_LOCAL") == "2001:db8::5" and msg.get_attr("IFA_ADDRESS") == "2001:db8::5"
    assert msg.get_attr("IFA_FLAGS") == rtnl.IFA_F_NODAD | rtnl.IFA_F_NOPREFIXROUTE
    assert msg.get_attr("IFA_PROTO") == 99


def test_a_deleted_ipv4_address_and_a_batch_of_them() -> None:
    batch = b"".join(rtnl.address_message("del", 3, f"198.51.100.{i}", seq=i) for i in range(1, 4))
    first = decode(batch[: len(batch) // 3])
    assert first["header"]["type"] == rtnl.RTM_DELADDR
    assert (first["family"], first["prefixlen"], first.get_attr("IFA_LOCAL")) == (2, 32, "198.51.100.1")
    assert first.get_attr("IFA_PROTO") is None and first.get_attr("IFA_FLAGS") is None
    with pytest.raises(ValueError, match="replace or del"):
        rtnl.address_message("add", 3, "198.51.100.1", seq=1)


def ack(seq: int, errno: int) -> bytes:
    original = struct.pack("=IHHII", 16, rtnl.RTM_NEWADDR, 0, seq, 0)
    body = struct.pack("=i", -errno) + original
    return struct.pack("=IHHII", 16 + len(body), rtnl.NLMSG_ERROR, 0, seq, 0) + body


def test_acknowledgements_by_sequence_and_garbage_tolerated() -> None:
    other = struct.pack("=IHHII", 16, 3, 0, 9, 0)  # NLMSG_DONE: not an ack
    assert list(rtnl.acks(ack(1, 0) + other + ack(2, 17))) == [(1, 0), (2, 17)]
    assert list(rtnl.acks(ack(1, 0)[:-3])) == []  # truncated
    assert list(rtnl.acks(struct.pack("=IHHII", 4, 2, 0, 1, 0))) == []  # a length below the header
