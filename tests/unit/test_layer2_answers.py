"""The responders' decision, "answer this frame or not", without sockets."""

from __future__ import annotations

import ipaddress

from openelb.protocols import arp, ndp
from openelb.speaker.layer2 import MALFORMED, arp_answer, ndp_answer

MAC = bytes.fromhex("02aabbccddee")
CLIENT = bytes.fromhex("020000000064")
OWNED4 = {ipaddress.IPv4Address("198.18.0.200")}
OWNED6 = {ipaddress.IPv6Address("2001:db8::200")}
CLIENT6 = ipaddress.IPv6Address("2001:db8::100")


def request(target: str, sender_mac: bytes = CLIENT, op: int = arp.OP_REQUEST) -> bytes:
    pkt = arp.ArpPacket(
        op, sender_mac, ipaddress.IPv4Address("198.18.0.100"), arp.ZERO_MAC, ipaddress.IPv4Address(target),
        eth_src=sender_mac,
    )  # fmt: skip
    return arp.build(pkt)


def test_arp_request_for_an_owned_ip_gets_a_reply_to_the_asker() -> None:
    reply = arp_answer(request("198.18.0.200"), OWNED4, MAC)
    assert isinstance(reply, bytes)
    pkt = arp.parse(reply)
    assert pkt.op == arp.OP_REPLY and pkt.sender_mac == MAC and pkt.eth_dst == CLIENT
    assert str(pkt.sender_ip) == "198.18.0.200"


def test_arp_silence_for_other_ips_replies_and_our_own_echo() -> None:
    assert arp_answer(request("198.18.0.201"), OWNED4, MAC) is None
    assert arp_answer(request("198.18.0.200", op=arp.OP_REPLY), OWNED4, MAC) is None
    assert arp_answer(request("198.18.0.200", sender_mac=MAC), OWNED4, MAC) is None  # our gratuitous ARP


def test_arp_garbage_is_counted_as_malformed() -> None:
    assert arp_answer(b"\x00" * 10, OWNED4, MAC) == MALFORMED


def ns(target: str) -> bytes:
    return ndp.build_ns(ndp.NeighborSolicitation(ipaddress.IPv6Address(target), CLIENT))


def test_ns_for_an_owned_ip_gets_a_solicited_na_to_the_asker() -> None:
    answer = ndp_answer(ns("2001:db8::200"), 255, CLIENT6, OWNED6, MAC)
    assert isinstance(answer, tuple)
    na, dst = answer
    assert na.solicited and na.override and na.mac == MAC and dst == CLIENT6


def test_duplicate_address_detection_is_answered_to_all_nodes_unsolicited() -> None:
    answer = ndp_answer(ns("2001:db8::200"), 255, ipaddress.IPv6Address("::"), OWNED6, MAC)
    assert isinstance(answer, tuple) and answer[1] == ndp.ALL_NODES and not answer[0].solicited


def test_ns_off_link_or_for_others_or_garbage() -> None:
    assert ndp_answer(ns("2001:db8::200"), 64, CLIENT6, OWNED6, MAC) == MALFORMED  # routed: not from this link
    assert ndp_answer(ns("2001:db8::200"), None, CLIENT6, OWNED6, MAC) == MALFORMED
    assert ndp_answer(ns("2001:db8::201"), 255, CLIENT6, OWNED6, MAC) is None
    na = ndp.build_na(ndp.NeighborAdvertisement(ipaddress.IPv6Address("2001:db8::200"), CLIENT, solicited=False))
    assert ndp_answer(na, 255, CLIENT6, OWNED6, MAC) is None
    assert ndp_answer(b"\x87\x00", 255, CLIENT6, OWNED6, MAC) == MALFORMED


class _FlappingSocket:
    """A packet socket whose link went down: one receive fails with ENETDOWN (the kernel reports
    the error once), later receives deliver frames again."""

    def __init__(self, *results: object) -> None:
        self.results = list(results)
        self.sent: list[bytes] = []

    def recvfrom(self, _size: int) -> tuple[bytes, tuple[str, int, int]]:
        result = self.results.pop(0) if self.results else BlockingIOError()
        if isinstance(result, BaseException):
            raise result
        assert isinstance(result, bytes)
        return result, ("eth0", 0x0806, 0)

    def send(self, frame: bytes) -> int:
        self.sent.append(frame)
        return len(frame)


def test_a_receive_error_is_counted_and_the_responder_answers_after_it() -> None:
    import errno

    from openelb.speaker import layer2

    responder = object.__new__(layer2.ArpResponder)
    responder.ifname, responder.mac, responder.owned = "eth0", MAC, set(OWNED4)
    sock = _FlappingSocket(OSError(errno.ENETDOWN, "Network is down"), request("198.18.0.200"))
    responder.sock = sock  # type: ignore[assignment]
    before = layer2.stats["receive_errors"]
    responder._readable()  # would raise out of the loop's reader callback before the fix
    assert layer2.stats["receive_errors"] == before + 1 and not sock.sent
    responder._readable()  # the link is back: the same socket answers
    assert len(sock.sent) == 1 and arp.parse(sock.sent[0]).op == arp.OP_REPLY
