"""Coverage-guided fuzz targets (atheris): every decoder, the BGP and BFD state machines, the
heartbeat membership and admission. Each target takes bytes and checks invariants; anything but
the code's own error types is a finding. Seeds come from the codecs' own encodings.

Invariants, beyond "raises only its own error type":
- bgp_session: after any input the session is either closed (IDLE, with a NOTIFICATION sent for
  our reasons) or has a next deadline in the future; never a busy loop.
- bfd_session: whatever spoofed packets came first, two real sessions exchanging packets on a
  clean link are both Up within 10 s of simulated time (no stuck state).
- heartbeat: tables stay bounded; a forged-looking datagram never changes the live set.
- admission: the verdict serializes to JSON of at most 4 KiB (nothing unbounded echoed).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import struct
from collections.abc import Callable, Iterator

from openelb.controller import admission
from openelb.protocols import arp, bfd, heartbeat, ndp, vrrp
from openelb.protocols.bgp import codec as c
from openelb.protocols.bgp import session as bgp

Target = Callable[[bytes], None]
KEY = b"fuzz-key"


def bgp_decode(data: bytes) -> None:
    buf = bytearray(data)
    try:
        for kind, body in c.split_messages(buf):
            for as4 in (True, False):
                with contextlib.suppress(c.BgpError):
                    c.decode(kind, body, frozenset({c.IPV4_UNICAST, c.IPV6_UNICAST}) if as4 else frozenset(), as4)
    except c.BgpError:
        pass


def _cfg() -> bgp.SessionConfig:
    return bgp.SessionConfig(65001, 0, "192.0.2.11", {4: "192.0.2.11", 6: "2001:db8::11"},
                             families=frozenset({c.IPV4_UNICAST, c.IPV6_UNICAST}))  # fmt: skip


def bgp_session(data: bytes) -> None:
    s = bgp.Session(_cfg(), 0.0)
    s.start(0.0)
    now = 0.0
    for i in range(0, len(data), 64):
        chunk = data[i : i + 64]
        now += chunk[0] / 10 if chunk else 0.1
        s.receive_data(bytes(chunk[1:]), now)
        s.tick(now)
        s.data_to_send()
        if s.state == bgp.State.IDLE:
            return
        deadline = s.next_deadline()
        assert deadline is None or deadline > now - 1e-9, (deadline, now, s.state)


def bfd_session(data: bytes) -> None:
    a = bfd.BfdSession(1, 100_000, 100_000, 3, 0.0)
    b = bfd.BfdSession(2, 100_000, 100_000, 3, 0.0)
    now = 0.0
    for i in range(0, len(data) - 24, 25):
        now += data[i] / 100
        try:
            pkt = bfd.decode(bytes(data[i + 1 : i + 25]))
        except bfd.BfdError:
            continue
        (a if data[i] & 1 else b).receive(pkt, now)
    end = now + 10.0
    while now < end:
        now = min(a.next_deadline(), b.next_deadline(), end)
        for me, peer in ((a, b), (b, a)):
            pkt, _ = me.tick(now)
            if pkt is not None:
                peer.receive(bfd.decode(pkt.encode()), now)
    assert a.state == b.state == bfd.BfdState.UP, (a.state, b.state)


def arp_ndp(data: bytes) -> None:
    with contextlib.suppress(arp.ArpError):
        arp.parse(data)
    with contextlib.suppress(ndp.NdpError):
        ndp.parse(data)


def vrrp_decode(data: bytes) -> None:
    for src, dst in (("192.0.2.1", "224.0.0.18"), ("fe80::1", "ff02::12")):
        with contextlib.suppress(vrrp.VrrpError):
            vrrp.decode(data, ipaddress.ip_address(src), ipaddress.ip_address(dst))  # type: ignore[arg-type]


def heartbeat_membership(data: bytes) -> None:
    m = heartbeat.Membership("me", [KEY])
    for i in range(0, len(data), 48):
        got = m.receive(bytes(data[i : i + 48]), "198.51.100.9", i / 1000)
        assert got.changed is None, got  # without the key nothing may join or leave
    assert len(m._peers) <= heartbeat.MAX_TABLE and len(m._probes) <= heartbeat.MAX_TABLE


def admission_json(data: bytes) -> None:
    try:
        review = json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        return
    req = review.get("request") if isinstance(review, dict) else None
    req = req if isinstance(req, dict) else {}
    for fn in (lambda r: admission.review_eip(r, []), admission.review_bgpconf, admission.review_bgppeer):
        try:
            verdict = fn(req)
        except (TypeError, AttributeError, ValueError, KeyError):
            # the webhook's `answer()` turns these into a denial; they must stay types of bad input
            continue
        out = json.dumps(admission.response(review if isinstance(review, dict) else {}, verdict))
        assert len(out) <= 4096, len(out)


TARGETS: dict[str, Target] = {
    "bgp_decode": bgp_decode,
    "bgp_session": bgp_session,
    "bfd_session": bfd_session,
    "arp_ndp": arp_ndp,
    "vrrp_decode": vrrp_decode,
    "heartbeat": heartbeat_membership,
    "admission": admission_json,
}


def seeds(name: str) -> Iterator[bytes]:
    """A starting corpus from the codecs' own encodings."""
    if name in ("bgp_decode", "bgp_session"):
        cfg = _cfg()
        opened = c.encode_open(c.Open(65000, 90, "192.0.2.2", cfg.capabilities()))
        yield opened + c.encode_keepalive()
        yield b"\x01" + opened + b"\x05" + c.encode_keepalive()
        yield c.encode_notification(c.Notification(c.CEASE, 2))
        yield c.encode_keepalive() * 3
    elif name == "bfd_session":
        pkt = bfd.Packet(bfd.BfdState.DOWN, 7, 0, 100_000, 100_000, 3)
        yield b"\x05" + pkt.encode() + b"\x06" + bfd.Packet(bfd.BfdState.ADMIN_DOWN, 9, 0, 1, 1, 0).encode()
    elif name == "arp_ndp":
        yield arp.build(arp.gratuitous(ipaddress.IPv4Address("192.0.2.1"), b"\x02" * 6))
        yield ndp.build_ns(ndp.NeighborSolicitation(ipaddress.IPv6Address("2001:db8::1"), b"\x02" * 6))
    elif name == "vrrp_decode":
        yield struct.pack("!BBBBHH", 0x31, 1, 100, 1, 100, 0) + ipaddress.IPv4Address("192.0.2.10").packed
    elif name == "heartbeat":
        other = heartbeat.Membership("peer", [b"other-key"])
        yield other.message(heartbeat.ALIVE) + other.message(heartbeat.LEAVING)
    elif name == "admission":
        yield json.dumps(
            {"request": {"operation": "CREATE", "object": {"spec": {"address": "198.51.100.0/28"}}}}
        ).encode()
        yield json.dumps(
            {
                "request": {
                    "operation": "CREATE",
                    "object": {
                        "spec": {"conf": {"peerAs": 65000, "neighborAddress": "198.51.100.2"}, "bfd": {"enabled": True}}
                    },
                }
            }
        ).encode()
