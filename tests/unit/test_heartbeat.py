import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def test_round_trip_and_authentication() -> None:
    hb = Heartbeat("node-1", 42, ALIVE)
    raw = encode(hb, KEY)
    assert decode(raw, KEY) == hb
    with pytest.raises(HeartbeatError, match="authentication"):
        decode(raw, b"other-key-000000")
    tampered = raw[:-20] + bytes([raw[-20] ^ 1]) + raw[-19:]
    with pytest.raises(HeartbeatError):
        decode(tampered, KEY)


@given(st.binary(max_size=80))
def test_garbage_never_crashes(data: bytes) -> None:
    with contextlib.suppress(HeartbeatError):
        decode(data, KEY)


def test_membership_alive_expiry_leaving_and_replay() -> None:
    m = Membership("me", timeout=0.35)
    assert m.alive() == {"me"}
    assert m.receive(Heartbeat("b", 1), now=0.0) is True
    assert m.receive(Heartbeat("b", 2), now=0.1) is False  # still alive: no change
    assert m.receive(Heartbeat("b", 2), now=0.2) is False  # replay refused
    assert m.expire(0.4) == set() and m.alive() == {"me", "b"}
    assert m.expire(0.5) == {"b"} and m.alive() == {"me"}  # 0.4 s of silence > 0.35 s
    assert m.receive(Heartbeat("b", 3), now=1.0) is True
    assert m.receive(Heartbeat("b", 4, LEAVING), now=1.1) is True and m.alive() == {"me"}
    assert m.receive(Heartbeat("me", 99), now=1.2) is False  # our own echo


def test_joining_is_not_a_candidate_until_alive() -> None:
    m = Membership("me")
    assert m.receive(Heartbeat("b", 1, JOINING), now=0.0) is False and m.alive() == {"me"}
    assert m.receive(Heartbeat("b", 2, ALIVE), now=0.05) is True and m.alive() == {"me", "b"}
    # a restarted speaker says JOINING again: it stops being a candidate until it announces
    assert m.receive(Heartbeat("b", 3, JOINING), now=0.1) is True and m.alive() == {"me"}


def test_probes_and_replies_round_trip_and_do_not_touch_liveness() -> None:
    probe = Heartbeat("a", 123456789, PROBE)
    assert decode(encode(probe, KEY), KEY) == probe
    reply = Heartbeat("b", probe.seq, REPLY)  # echoes the probe's seq (the prober's clock)
    assert decode(encode(reply, KEY), KEY).seq == probe.seq
    m = Membership("me")
    assert m.receive(probe, now=0.0) is False and m.receive(reply, now=0.0) is False and m.alive() == {"me"}
