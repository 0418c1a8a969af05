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
