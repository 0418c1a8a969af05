"""BFD state machine and codec (RFC 5880), sans-IO."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openelb.protocols import bfd
from openelb.protocols.bfd import BfdSession, BfdState


def exchange(a: BfdSession, b: BfdSession, now: float) -> None:
    for src, dst in ((a, b), (b, a)):
        dst.receive(bfd.decode(src.packet().encode()), now)


def test_three_way_handshake_then_fast_rate_then_detection() -> None:
    a = BfdSession(1, 100_000, 100_000, 3, 0.0)
    b = BfdSession(2, 100_000, 100_000, 3, 0.0)
    assert a.tx_interval() == 1.0  # slow until Up (RFC 5880 §6.8.3)
    exchange(a, b, 0.0)  # a Down -> b Init; b Init -> a Up
    assert a.state == BfdState.UP and b.state == BfdState.INIT
    pkt = a.packet()
    assert pkt.poll  # the faster rate is announced with a Poll sequence
    b.receive(pkt, 0.1)
    assert b.state == BfdState.UP and b.reply_due
    final = b.packet()
    assert final.final
    a.receive(final, 0.1)
    assert not a.packet().poll  # the Poll sequence ended
    assert a.tx_interval() == 0.1 and a.detect_time() == pytest.approx(0.3)
    # silence: detection time passes -> Down with diag "control detection time expired"
    _pkt, changed = a.tick(0.1 + 0.31)
    assert changed == BfdState.DOWN and a.diag == bfd.DIAG_DETECT_EXPIRED


def test_neighbor_signals_down_and_admin_down() -> None:
    a = BfdSession(1, 100_000, 100_000, 3, 0.0)
    b = BfdSession(2, 100_000, 100_000, 3, 0.0)
    exchange(a, b, 0.0)
    exchange(a, b, 0.0)
    b.state = BfdState.ADMIN_DOWN
    assert a.receive(bfd.decode(b.packet().encode()), 0.1) == BfdState.DOWN
    assert a.diag == bfd.DIAG_NEIGHBOR_DOWN


def test_jitter_stays_within_75_to_100_percent() -> None:
    a = BfdSession(1, 100_000, 100_000, 3, 0.0)
    a.remote_min_rx = 1
    a.state = BfdState.UP
    gaps = []
    now = 0.0
    for _ in range(200):
        pkt, _ = a.tick(now)
        assert pkt is not None
        nxt = a.next_deadline()
        gaps.append(nxt - now)
        now = nxt
    assert min(gaps) >= 0.075 - 1e-9 and max(gaps) <= 0.1 + 1e-9


def test_packet_for_another_discriminator_is_ignored() -> None:
    a = BfdSession(1, 100_000, 100_000, 3, 0.0)
    pkt = bfd.Packet(BfdState.INIT, 9, 12345, 100_000, 100_000, 3)
    assert a.receive(pkt, 0.0) is None and a.state == BfdState.DOWN


@given(st.binary(max_size=64))
def test_garbage_raises_only_bfd_error(data: bytes) -> None:
    with contextlib.suppress(bfd.BfdError):
        bfd.decode(data)


def up_pair() -> tuple[BfdSession, BfdSession]:
    a = BfdSession(1, 100_000, 100_000, 3, 0.0)
    b = BfdSession(2, 100_000, 100_000, 3, 0.0)
    for _ in range(3):
        exchange(a, b, 0.0)
    assert a.state == b.state == BfdState.UP
    return a, b


def run_link(a: BfdSession, b: BfdSession, start: float, seconds: float) -> float:
    """A perfect link: every packet either side sends reaches the other at once."""
    now = start
    for _ in range(200_000):
        now = min(a.next_deadline(), b.next_deadline())
        if now > start + seconds:
            break
        for src, dst in ((a, b), (b, a)):
            pkt, _changed = src.tick(now)
            if pkt is not None:
                dst.receive(bfd.decode(pkt.encode()), now)
                if dst.reply_due:
                    src.receive(bfd.decode(dst.packet().encode()), now)
    return now


def test_a_forged_admin_down_is_healed_after_a_detection_time() -> None:
    """Issue 14 #3: one spoofed AdminDown (Your Discriminator 0) to each side left both Down for good:
    each kept the forged remote discriminator and dropped the other's packets."""
    a, b = up_pair()
    for victim, forged in ((a, 0xDEAD), (b, 0xBEEF)):
        victim.receive(bfd.Packet(BfdState.ADMIN_DOWN, forged, 0, 1_000_000, 1_000_000, 3), 1.0)
    assert a.state == b.state == BfdState.DOWN
    run_link(a, b, 1.0, 10.0)
    assert a.state == b.state == BfdState.UP


def test_a_forged_huge_required_min_rx_does_not_stall_sending() -> None:
    """Issue 14 #4: Required Min RX 0xFFFFFFFF pushed the next send ~1 h out, and a genuine packet
    restored the value but not the send timer."""
    a, b = up_pair()
    run_link(a, b, 0.0, 2.0)
    a.receive(bfd.Packet(BfdState.UP, 2, 1, 100_000, 0xFFFFFFFF, 3), 2.0)
    t = 2.0
    while t < 2.15:  # whatever was due goes out; then silence at the forged rate
        t += 0.005
        a.tick(t)
    a.receive(bfd.decode(b.packet().encode()), 2.15)  # the genuine peer's next packet
    first = None
    while t < 2.4:  # before a's detection time of b (0.3 s) could send one anyway
        t += 0.005
        pkt, _ = a.tick(t)
        if pkt is not None:
            first = t
            break
    assert first is not None and first - 2.15 <= 0.1 + 1e-9, first
    assert a.state == BfdState.UP


def test_forged_packets_with_huge_timers_do_not_keep_a_clean_link_down_for_long() -> None:
    """Found by the bfd_session fuzz target: a forged Down (Required Min RX 8.8 s) to one side and a
    forged AdminDown (Detect Mult 255) to the other planted stale discriminators whose reset waited
    for a Detection Time made of the forged values; on a clean link both stayed down for minutes."""
    from openelb.protocols import bfd as b_

    a = b_.BfdSession(1, 100_000, 100_000, 3, 0.0)
    b = b_.BfdSession(2, 100_000, 100_000, 3, 0.0)
    a.receive(b_.Packet(b_.BfdState.DOWN, 7, 0, 3_383_297, 8_816_288, 3), 0.05)
    b.receive(b_.Packet(b_.BfdState.ADMIN_DOWN, 9, 0, 2**32 - 1, 1, 255), 0.11)
    now, end = 0.11, 10.11
    while now < end and not (a.state == b.state == b_.BfdState.UP):
        now = min(a.next_deadline(), b.next_deadline(), end)
        for me, peer in ((a, b), (b, a)):
            pkt, _ = me.tick(now)
            if pkt is not None:
                peer.receive(b_.decode(pkt.encode()), now)
    assert a.state == b.state == b_.BfdState.UP, (a.state, b.state, now)
