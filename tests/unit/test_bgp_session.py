"""The BGP session state machine, driven sans-IO: two sessions talk to each other through bytes."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from openelb.protocols.bgp import codec as c
from openelb.protocols.bgp.session import Closed, Established, Session, SessionConfig, State, parse_prefix

V4, V6 = c.IPV4_UNICAST, c.IPV6_UNICAST


def cfg(local_as: int, peer_as: int, rid: str, **kw: object) -> SessionConfig:
    base: dict[str, object] = {
        "next_hops": {4: rid, 6: "2001:db8::" + rid.rsplit(".", maxsplit=1)[-1]},
        "families": frozenset({V4, V6}),
        "add_path_send": frozenset({V4, V6}),
    }
    base.update(kw)
    return SessionConfig(local_as, peer_as, rid, **base)  # type: ignore[arg-type]


class Router:
    """A receiving peer built from the same codec: applies UPDATEs into a table."""

    def __init__(self, session: Session, add_path: frozenset[c.Family] = frozenset()) -> None:
        self.s = session
        self.add_path = add_path
        self.table: dict[tuple[int, str], str] = {}
        self.eor: set[c.Family] = set()
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data
        for kind, body in c.split_messages(self.buf):
            if kind != c.UPDATE:
                continue
            upd = c.decode_update(body, self.add_path)
            if upd.end_of_rib:
                self.eor.add(upd.family)
            for pid, p in upd.withdrawn:
                self.table.pop((pid, str(p)), None)
            for pid, p in upd.nlri:
                assert upd.attrs is not None
                self.table[(pid, str(p))] = upd.attrs.next_hop


def pump(a: Session, b: Session, now: float, spy: Router | None = None) -> list[object]:
    events: list[object] = []
    for _ in range(20):
        da, db = a.data_to_send(), b.data_to_send()
        if not da and not db:
            break
        if spy is not None:
            spy.feed(da)
        events += b.receive_data(da, now) + a.receive_data(db, now)
    return events


def established_pair(a_cfg: SessionConfig, b_cfg: SessionConfig) -> tuple[Session, Session, Router, list[object]]:
    a, b = Session(a_cfg, 0.0), Session(b_cfg, 0.0)
    spy = Router(b)
    a.start(0.0)
    b.start(0.0)
    events = pump(a, b, 0.0, spy)
    return a, b, spy, events


def test_sessions_establish_and_negotiate() -> None:
    a, b, spy, events = established_pair(cfg(65001, 65000, "192.0.2.11"), cfg(65000, 65001, "192.0.2.2"))
    assert a.state == b.state == State.ESTABLISHED
    ests = [e for e in events if isinstance(e, Established)]
    assert len(ests) == 2
    neg = a.negotiated
    assert neg is not None and neg.peer_as == 65000 and neg.hold_time == 90 and neg.keepalive == 30
    assert neg.add_path == frozenset()  # b does not advertise ADD-PATH receive
    assert spy.eor == {V4, V6}  # End-of-RIB after the (empty) initial dump


def test_without_add_path_only_the_own_next_hop_is_sent_and_diffs_are_incremental() -> None:
    a, b, spy, _ = established_pair(cfg(65001, 65000, "192.0.2.11"), cfg(65000, 65001, "192.0.2.2"))
    ip = parse_prefix("198.51.100.7")
    a.set_routes({ip: ["192.0.2.11", "192.0.2.12"], parse_prefix("198.51.100.8"): ["192.0.2.12"]})
    pump(a, b, 1.0, spy)
    assert spy.table == {(0, "198.51.100.7/32"): "192.0.2.11"}  # not a next hop itself: .8 not sent
    a.set_routes({})
    pump(a, b, 2.0, spy)
    assert spy.table == {}
    assert a.counters.sent["withdrawPrefix"] == 1


def test_add_path_sends_one_path_per_next_hop_with_fnv_ids() -> None:
    b_caps = cfg(65000, 65001, "192.0.2.2")
    a = Session(cfg(65001, 65000, "192.0.2.11"), 0.0)
    b = Session(b_caps, 0.0)
    # b accepts several paths: advertise ADD-PATH receive by hand
    open_b = c.encode_open(
        c.Open(65000, 90, "192.0.2.2", c.Capabilities(frozenset({V4, V6}), 65000, True, None, ((V4, 1), (V6, 1))))
    )
    a.start(0.0)
    a.receive_data(open_b + c.encode_keepalive(), 0.0)
    assert a.state == State.ESTABLISHED and a.negotiated and a.negotiated.add_path == {V4, V6}
    spy = Router(b, frozenset({V4, V6}))
    spy.feed(a.data_to_send())
    a.set_routes(
        {parse_prefix("198.51.100.7"): ["192.0.2.11", "192.0.2.12"], parse_prefix("2001:db8:ff::7"): ["2001:db8::11"]}
    )
    spy.feed(a.data_to_send())
    assert spy.table == {
        (c.fnv32a("192.0.2.11"), "198.51.100.7/32"): "192.0.2.11",
        (c.fnv32a("192.0.2.12"), "198.51.100.7/32"): "192.0.2.12",
        (c.fnv32a("2001:db8::11"), "2001:db8:ff::7/128"): "2001:db8::11",
    }
    # a dead node leaves the next-hop set: only its path is withdrawn
    a.set_routes({parse_prefix("198.51.100.7"): ["192.0.2.11"], parse_prefix("2001:db8:ff::7"): ["2001:db8::11"]})
    spy.feed(a.data_to_send())
    assert set(spy.table) == {
        (c.fnv32a("192.0.2.11"), "198.51.100.7/32"),
        (c.fnv32a("2001:db8::11"), "2001:db8:ff::7/128"),
    }
    # route refresh re-sends the family's Adj-RIB-Out
    a.receive_data(c.encode_route_refresh(V4), 1.0)
    again = Router(b, frozenset({V4, V6}))
    again.feed(a.data_to_send())
    assert set(again.table) == {(c.fnv32a("192.0.2.11"), "198.51.100.7/32")}


def test_ebgp_as_path_and_ibgp_local_pref() -> None:
    a, _b, _spy, _ = established_pair(cfg(65001, 65001, "192.0.2.11"), cfg(65001, 65001, "192.0.2.2"))
    a.set_routes({parse_prefix("198.51.100.7"): ["192.0.2.11"]})
    buf = bytearray(a.data_to_send())
    (upd,) = [c.decode(k, body) for k, body in c.split_messages(buf)]
    assert isinstance(upd, c.Update) and upd.attrs is not None
    assert upd.attrs.as_path == () and upd.attrs.local_pref == 100


def test_wrong_peer_as_gets_open_error() -> None:
    a, b = Session(cfg(65001, 65999, "192.0.2.11"), 0.0), Session(cfg(65000, 65001, "192.0.2.2"), 0.0)
    a.start(0.0)
    b.start(0.0)
    events = pump(a, b, 0.0)
    closed = [e for e in events if isinstance(e, Closed)]
    assert a.state == State.IDLE and b.state == State.IDLE
    assert any(e.sent == c.Notification(c.OPEN_ERROR, c.OPEN_BAD_PEER_AS) for e in closed)
    assert any(e.received is not None and e.received.code == c.OPEN_ERROR for e in closed)


def test_hold_timer_expiry_and_keepalives() -> None:
    a, _b, _spy, _ = established_pair(cfg(65001, 65000, "192.0.2.11", hold_time=9), cfg(65000, 65001, "192.0.2.2"))
    assert a.negotiated and a.negotiated.hold_time == 9
    assert a.next_deadline() == 3.0
    assert a.tick(3.0) == [] and a.data_to_send() == c.encode_keepalive()
    events = a.tick(9.5)
    assert a.state == State.IDLE and events == [Closed("hold timer expired", sent=c.Notification(c.HOLD_EXPIRED, 0))]


def test_garbage_and_fsm_errors_end_the_session_with_a_notification() -> None:
    a = Session(cfg(65001, 65000, "192.0.2.11"), 0.0)
    a.start(0.0)
    a.data_to_send()
    events = a.receive_data(c.encode_keepalive(), 0.0)  # KEEPALIVE before OPEN
    assert a.state == State.IDLE and isinstance(events[0], Closed) and events[0].sent == c.Notification(c.FSM_ERROR, 1)
    a = Session(cfg(65001, 65000, "192.0.2.11"), 0.0)
    a.start(0.0)
    events = a.receive_data(b"\x00" * 40, 0.0)
    assert events[0].sent == c.Notification(c.HEADER_ERROR, c.HDR_NOT_SYNC)  # type: ignore[union-attr]
    assert a.data_to_send().endswith(c.encode_notification(c.Notification(c.HEADER_ERROR, c.HDR_NOT_SYNC)))


def test_admin_close_sends_cease_with_shutdown_message() -> None:
    a, _b, _spy, _ = established_pair(cfg(65001, 65000, "192.0.2.11"), cfg(65000, 65001, "192.0.2.2"))
    a.close(c.CEASE_ADMIN_SHUTDOWN, "maintenance")
    buf = bytearray(a.data_to_send())
    (note,) = [c.decode(k, body) for k, body in c.split_messages(buf)]
    assert isinstance(note, c.Notification) and note.describe() == "cease (subcode 2): maintenance"


def test_graceful_restart_capability_sets_r_and_f_bits() -> None:
    gr = c.GracefulRestart(120, True, ((V4, True),))
    a = Session(cfg(65001, 65000, "192.0.2.11", graceful_restart=gr), 0.0)
    a.start(0.0)
    buf = bytearray(a.data_to_send())
    (op,) = [c.decode(k, body) for k, body in c.split_messages(buf)]
    assert isinstance(op, c.Open) and op.caps.graceful_restart == gr


def test_parse_prefix() -> None:
    assert parse_prefix("198.51.100.7") == ipaddress.ip_network("198.51.100.7/32")
    assert parse_prefix("2001:db8::7") == ipaddress.ip_network("2001:db8::7/128")


def test_partial_updates_end_where_full_intent_does() -> None:
    """`update_routes` sends UPDATEs for the touched prefixes only; after any sequence the peer's
    table and our Adj-RIB-Out equal those of a session given the whole intent at once."""
    import random

    rng = random.Random(7)
    hops = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
    prefixes = [parse_prefix(f"198.51.100.{i}") for i in range(20)]
    open_b = c.encode_open(
        c.Open(65000, 90, "192.0.2.2", c.Capabilities(frozenset({V4, V6}), 65000, True, None, ((V4, 1), (V6, 1))))
    )
    for add_path in (True, False):
        a = Session(cfg(65001, 65000, "192.0.2.11"), 0.0)
        a.start(0.0)
        opened = (
            open_b
            if add_path
            else c.encode_open(
                c.Open(65000, 90, "192.0.2.2", c.Capabilities(frozenset({V4, V6}), 65000, True, None, ()))
            )
        )
        a.receive_data(opened + c.encode_keepalive(), 0.0)
        fams = frozenset({V4, V6}) if add_path else frozenset()
        spy = Router(a, fams)
        spy.feed(a.data_to_send())
        intent: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, list[str]] = {}
        for _ in range(200):
            changes: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, list[str] | None] = {}
            for p in rng.sample(prefixes, 3):
                chosen = rng.sample(hops, rng.randint(0, 3))
                changes[p] = chosen or None
                if chosen:
                    intent[p] = chosen
                else:
                    intent.pop(p, None)
            a.update_routes(changes)
            spy.feed(a.data_to_send())
        b = Session(cfg(65001, 65000, "192.0.2.11"), 0.0)
        b.start(0.0)
        b.receive_data(opened + c.encode_keepalive(), 0.0)
        b.set_routes(intent)
        full = Router(b, fams)
        full.feed(b.data_to_send())
        assert spy.table == full.table and a.rib_out() == b.rib_out()
        assert spy.table  # the sequence left something announced


def test_hold_time_zero_means_no_hold_timer_and_no_keepalives() -> None:
    """Issue 14 #1: with a negotiated hold time of 0 the session was torn down 240 s after OPEN."""
    a, b, _spy, _ = established_pair(cfg(65001, 65000, "192.0.2.11", hold_time=0), cfg(65000, 65001, "192.0.2.2"))
    assert a.state == b.state == State.ESTABLISHED and a.negotiated and a.negotiated.hold_time == 0
    a.data_to_send()
    assert a.next_deadline() is None
    for hour in range(1, 25):  # a day of silence
        assert a.tick(hour * 3600.0) == [] and a.data_to_send() == b""
    assert a.state == State.ESTABLISHED


def test_a_negative_keepalive_interval_never_busy_loops() -> None:
    """Issue 14 #2: keepaliveInterval -1 put the next deadline always in the past."""
    a, _b, _spy, _ = established_pair(cfg(65001, 65000, "192.0.2.11", hold_time=90, keepalive=-1),
                                      cfg(65000, 65001, "192.0.2.2"))  # fmt: skip
    assert a.negotiated and a.negotiated.keepalive == 30.0
    a.data_to_send()
    now, sent = 0.0, 0
    for _ in range(1000):  # deadline-driven, as the transport runs it, over 100 s of clock
        deadline = a.next_deadline()
        assert deadline is not None and deadline > now
        now = deadline
        if now > 100:
            break
        a.tick(now)
        sent += a.data_to_send().count(c.encode_keepalive())
        a.receive_data(c.encode_keepalive(), now)  # the peer's keepalives keep the hold timer fresh
    assert sent == 3  # at 30, 60 and 90 s


def _update_of_default_routes(count: int) -> bytes:
    """An UPDATE whose MP_REACH carries `count` x ::/0 (one byte each): issue 14 #9's input."""
    nh = ipaddress.IPv6Address("2001:db8::1").packed
    mp = struct.pack("!HBB", c.AFI_IP6, c.SAFI_UNICAST, len(nh)) + nh + b"\x00" + b"\x00" * count
    attrs = bytes([c.F_TRANSITIVE, c.ORIGIN, 1, 0, c.F_TRANSITIVE, c.AS_PATH, 0])
    attrs += bytes([c.F_OPTIONAL | c.F_EXTENDED, c.MP_REACH]) + struct.pack("!H", len(mp)) + mp
    body = struct.pack("!H", 0) + struct.pack("!H", len(attrs)) + attrs
    return b"\xff" * 16 + struct.pack("!HB", 19 + len(body), c.UPDATE) + body


def test_an_update_before_established_is_refused_without_being_decoded(monkeypatch: object) -> None:
    """Issue 14 #9: a 4 KiB UPDATE was decoded in full before OPEN (29-65 ms each)."""
    import pytest

    mp = pytest.MonkeyPatch()
    decoded: list[int] = []
    real = c.decode_update
    mp.setattr(c, "decode_update", lambda *a, **k: decoded.append(1) or real(*a, **k))
    try:
        a = Session(cfg(65001, 65000, "192.0.2.11"), 0.0)
        a.start(0.0)
        a.data_to_send()
        events = a.receive_data(_update_of_default_routes(4000), 0.0)
    finally:
        mp.undo()
    assert decoded == [] and a.state == State.IDLE
    assert isinstance(events[0], Closed) and events[0].sent == c.Notification(c.FSM_ERROR, 1)


def test_repeated_prefixes_decode_to_the_same_routes() -> None:
    upd = c.decode_update(_update_of_default_routes(4000)[19:])
    assert len(upd.nlri) == 4000 and {p for _i, p in upd.nlri} == {ipaddress.ip_network("::/0")}
    host_bits = bytes([60]) + ipaddress.IPv6Address("2001:db8:0:1::").packed[:8]  # /60 with bit 64 set
    with pytest.raises(c.BgpError, match="host bits"):
        c._decode_prefixes(host_bits, c.AFI_IP6, False)
