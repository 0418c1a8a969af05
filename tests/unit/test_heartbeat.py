"""The heartbeat codec and membership (sans-IO): liveness, and what an attacker on the node
network can no longer do with recorded packets (issue 14 #8)."""

import contextlib
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openelb.protocols import heartbeat as hbp
from openelb.protocols.heartbeat import (
    ALIVE,
    JOINING,
    LEAVING,
    PROBE,
    REPLY,
    Heartbeat,
    HeartbeatError,
    Membership,
    decode,
    encode,
)

KEY = b"k" * 16
ADDR = {"a": "198.51.100.1", "b": "198.51.100.2"}


class Net:
    """Two or more memberships wired in memory: what one sends, the addressee receives."""

    def __init__(self, *members: Membership) -> None:
        self.m = {x.me: x for x in members}
        self.by_addr = {ADDR[x.me]: x.me for x in members}
        self.now = 0.0
        self.log: list[tuple[str, str, bytes]] = []
        self.rtts: list[float] = []

    def deliver(self, data: bytes, src: str, dst: str, depth: int = 0) -> hbp.Received:
        self.log.append((src, dst, data))
        got = self.m[dst].receive(data, ADDR[src], self.now)
        if got.rtt is not None:
            self.rtts.append(got.rtt)
        for out, to in got.send:
            name = self.by_addr.get(to)
            if name is not None and name in self.m and depth < 4:
                self.deliver(out, dst, name, depth + 1)
        return got

    def beat(self, src: str, dst: str, kind: int = ALIVE) -> hbp.Received:
        return self.deliver(self.m[src].message(kind), src, dst)


def test_round_trip_authentication_and_key_rotation() -> None:
    hb = Heartbeat("node-1", 7, 42, ALIVE)
    raw = encode(hb, KEY)
    assert decode(raw, [KEY]) == hb
    with pytest.raises(HeartbeatError, match="authentication"):
        decode(raw, [b"other-key-000000"])
    assert decode(raw, [b"new-key", KEY]) == hb  # rotation: any listed key verifies
    tampered = raw[:-20] + bytes([raw[-20] ^ 1]) + raw[-19:]
    with pytest.raises(HeartbeatError):
        decode(tampered, [KEY])
    old = raw[:4] + bytes([1]) + raw[5:]
    with pytest.raises(HeartbeatError, match="version 1"):
        decode(old, [KEY])


@given(st.binary(max_size=120))
def test_garbage_never_crashes(data: bytes) -> None:
    with contextlib.suppress(HeartbeatError):
        decode(data, [KEY])
    assert Membership("me", [KEY]).receive(data, "198.51.100.9", 0.0).refused in ("garbage", None)


def test_a_peer_is_verified_by_a_probe_then_alive_then_expires_or_leaves() -> None:
    a, b = Membership("a", [KEY], timeout=0.35), Membership("b", [KEY], timeout=0.35)
    net = Net(a, b)
    first = net.beat("a", "b")
    assert first.refused == "unverified" and b.alive() == {"b"}  # b probed a, a answered
    # b probes a, a answers and (not knowing b either) probes back: both verified in one exchange
    assert [hbp.decode(d, [KEY]).kind for _s, _d, d in net.log] == [ALIVE, PROBE, REPLY, PROBE, REPLY]
    net.now = 0.05
    assert net.beat("a", "b").changed == "a is alive" and b.alive() == {"a", "b"}
    net.now = 0.3
    assert net.beat("a", "b").changed is None
    assert b.expire(0.6) == set()
    assert b.expire(0.7) == {"a"} and b.alive() == {"b"}
    net.now = 1.0
    assert net.beat("a", "b").changed == "a is alive"
    assert net.beat("a", "b", LEAVING).changed == "a is leaving" and b.alive() == {"b"}


def test_joining_is_not_a_candidate_until_alive() -> None:
    a, b = Membership("a", [KEY]), Membership("b", [KEY])
    net = Net(a, b)
    net.beat("a", "b", JOINING)
    assert net.beat("a", "b", JOINING).changed is None and b.alive() == {"b"}
    assert net.beat("a", "b", ALIVE).changed == "a is alive"
    # a restarted speaker (new incarnation) is verified again and stays out until it announces
    a2 = Membership("a", [KEY])
    net.m["a"] = a2
    net.now = 1.0
    net.beat("a", "b", JOINING)
    assert net.beat("a", "b", JOINING).changed == "a is restarting" and b.alive() == {"b"}


def test_replays_are_refused_also_by_a_restarted_receiver() -> None:
    a, b = Membership("a", [KEY]), Membership("b", [KEY])
    net = Net(a, b)
    net.beat("a", "b")
    net.beat("a", "b")
    recorded_alive = a.message(ALIVE)
    net.deliver(recorded_alive, "a", "b")
    recorded_leaving = a.message(LEAVING)
    assert net.deliver(recorded_leaving, "a", "b").refused is None and b.alive() == {"b"}  # real, recorded
    # the attacker replays the LEAVING after newer heartbeats
    net.beat("a", "b")
    assert b.alive() == {"a", "b"}
    assert net.deliver(recorded_leaving, "a", "b").refused == "replay" and b.alive() == {"a", "b"}
    # a is gone for good; b restarts; the attacker replays a's ALIVE to the new b
    del net.m["a"]
    b2 = Membership("b", [KEY])
    net.m["b"] = b2
    for i in range(20):
        net.now = 10 + i * 0.05
        assert b2.receive(recorded_alive, ADDR["a"], net.now).refused == "unverified"
    assert b2.alive() == {"b"}, "a replayed heartbeat made a dead node alive"


def test_a_forged_high_counter_heals_at_the_next_verification() -> None:
    a, b = Membership("a", [KEY]), Membership("b", [KEY])
    net = Net(a, b)
    net.beat("a", "b")
    net.beat("a", "b")
    # a key holder sends counter 2^64-1 in a's incarnation (version 1: a's heartbeats refused forever)
    forged = encode(Heartbeat("a", a.incarnation, 2**64 - 1, ALIVE), KEY)
    net.deliver(forged, "a", "b")
    net.now = 1.0
    assert net.beat("a", "b").refused == "replay"  # ... and b re-verified a: a answered its probe
    net.now = 1.05
    assert net.beat("a", "b").refused is None


def test_probe_replays_reflect_nothing_and_old_replies_measure_nothing() -> None:
    a, b = Membership("a", [KEY]), Membership("b", [KEY])
    net = Net(a, b)
    net.beat("a", "b")
    net.beat("a", "b")
    old_probe = a.probe(net.now)
    assert old_probe is not None
    before = len(net.rtts)
    net.deliver(old_probe, "a", "b")  # answered once: a measures an RTT
    assert len(net.rtts) == before + 1
    net.now = 3600.0
    sent = sum(len(b.receive(old_probe, ADDR["a"], net.now).send) for _ in range(1000))
    assert sent <= 1, f"{sent} replies to 1,000 replays of an hour-old probe"  # one re-verification probe
    # probes of an unknown incarnation (a peer restarting, or spoofed): replies rate-limited
    stranger = Membership("c", [KEY])
    replies = 0
    for i in range(1000):
        got = b.receive(stranger.probe(net.now + i * 0.001) or b"", "203.0.113.5", net.now + i * 0.001)
        replies += sum(1 for d, _to in got.send if decode(d, [KEY]).kind == REPLY)
    assert replies <= hbp.REPLY_BURST + 1 * hbp.REPLY_RATE + 1
    # an old reply (or one for a probe never sent) records no round-trip time
    reply = encode(Heartbeat("b", b.incarnation, b.counter + 10, REPLY, nonce=12345), KEY)
    assert a.receive(reply, ADDR["b"], 3600.0).rtt is None


def test_no_wall_clock_a_step_back_refuses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = Membership("a", [KEY]), Membership("b", [KEY])
    net = Net(a, b)
    net.beat("a", "b")
    wall = [time.time_ns()]
    monkeypatch.setattr(time, "time_ns", lambda: wall[0])
    monkeypatch.setattr(time, "time", lambda: wall[0] / 1e9)
    refused = 0
    for i in range(100):
        wall[0] -= 50_000_000  # the wall clock runs backwards (NTP step, 5 s over the run)
        net.now = 0.05 * (i + 1)
        refused += net.beat("a", "b").refused is not None
    assert refused == 0 and b.alive() == {"a", "b"}


def test_rotation_signs_with_the_first_key_and_accepts_any() -> None:
    a, b = Membership("a", [b"old"]), Membership("b", [b"old"])
    net = Net(a, b)
    net.beat("a", "b")
    net.beat("a", "b")
    b.set_keys([b"old", b"new"])  # step 1 everywhere: accept both, still sign with old
    a.set_keys([b"new", b"old"])  # step 2 reached a first: a signs with new
    assert net.beat("a", "b").refused is None and b.alive() == {"a", "b"}
    b.set_keys([b"new"])
    a.set_keys([b"new"])
    assert net.beat("a", "b").refused is None
    with pytest.raises(HeartbeatError):
        b.set_keys([])


def test_tables_stay_bounded_under_a_flood() -> None:
    b = Membership("b", [KEY])
    for i in range(20_000):
        stranger = Membership(f"x{i}", [KEY])
        b.receive(stranger.message(ALIVE), f"203.0.113.{i % 250}", i * 0.0001)
    assert len(b._peers) <= hbp.MAX_TABLE and len(b._probes) <= hbp.MAX_TABLE
