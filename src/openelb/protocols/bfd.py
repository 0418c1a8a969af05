"""BFD (RFC 5880, single hop RFC 5881), asynchronous mode, sans-IO.

A `BfdSession` is fed received control packets and the clock, and says what to send and when.
Timers follow §6.8: transmit at max(our DesiredMinTx, their RequiredMinRx) jittered to 75-100 %
(75-90 % with a multiplier of 1), at most one packet a second until Up (§6.8.3), then the
configured rate announced with a Poll sequence; detection time = their multiplier * max(our
RequiredMinRx, their DesiredMinTx). Echo, demand mode and authentication are not implemented.
"""

from __future__ import annotations

import enum
import random
import struct
from dataclasses import dataclass

PORT = 3784
PACKET = struct.Struct("!BBBBIIIII")
SLOW_US = 1_000_000


class BfdState(enum.IntEnum):
    ADMIN_DOWN = 0
    DOWN = 1
    INIT = 2
    UP = 3


DIAG_NONE, DIAG_DETECT_EXPIRED, DIAG_NEIGHBOR_DOWN, DIAG_ADMIN_DOWN = 0, 1, 3, 7
POLL, FINAL = 0x20, 0x10


class BfdError(ValueError):
    pass


@dataclass(frozen=True)
class Packet:
    state: BfdState
    my_discr: int
    your_discr: int
    desired_min_tx: int
    """Microseconds."""
    required_min_rx: int
    detect_mult: int
    diag: int = DIAG_NONE
    poll: bool = False
    final: bool = False

    def encode(self) -> bytes:
        flags = (self.state << 6) | (POLL if self.poll else 0) | (FINAL if self.final else 0)
        return PACKET.pack(
            (1 << 5) | self.diag,
            flags,
            self.detect_mult,
            PACKET.size,
            self.my_discr,
            self.your_discr,
            self.desired_min_tx,
            self.required_min_rx,
            0,
        )


def decode(data: bytes) -> Packet:
    """Validate per RFC 5880 §6.8.6 (the checks that need no session)."""
    if len(data) < PACKET.size:
        raise BfdError("short packet")
    vd, flags, mult, length, mine, yours, tx, rx, _echo = PACKET.unpack_from(data)
    if vd >> 5 != 1:
        raise BfdError(f"version {vd >> 5}")
    if length < PACKET.size or length > len(data):
        raise BfdError(f"bad length {length}")
    if flags & 0x04:  # A bit: authentication, not configured here
        raise BfdError("authentication present but not configured")
    if mult == 0 or mine == 0 or flags & 0x01:  # M bit must be zero
        raise BfdError("zero multiplier, zero discriminator or multipoint bit")
    state = BfdState(flags >> 6)
    if yours == 0 and state not in (BfdState.DOWN, BfdState.ADMIN_DOWN):
        raise BfdError("zero Your Discriminator outside Down/AdminDown")
    return Packet(state, mine, yours, tx, rx, mult, vd & 0x1F, bool(flags & POLL), bool(flags & FINAL))


MIN_DOWN_RESET = 1.0
"""Seconds in Down before the remote discriminator is forgotten, at least (a forged packet may
claim a Detect Mult of 0)."""
MAX_DOWN_RESET = 3.0
"""... and at most: the Detection Time comes from the remote's values, and a forged packet may
claim a Detect Mult of 255 and 71-minute intervals, which kept both sides dropping each other's
packets for hours (found by the bfd_session fuzz target)."""


class BfdSession:
    def __init__(self, discr: int, min_tx_us: int, min_rx_us: int, multiplier: int, now: float) -> None:
        self.discr = discr
        self.min_tx = min_tx_us
        self.min_rx = min_rx_us
        self.mult = multiplier
        self.state = BfdState.DOWN
        self.diag = DIAG_NONE
        self.remote_discr = 0
        self.remote_min_rx = 1
        self.remote_min_tx = 0
        self.remote_mult = 0
        self._poll = False
        self._final = False
        self._next_tx = now
        self._detect_at: float | None = None
        self._down_since: float | None = now

    @property
    def desired_tx(self) -> int:
        return self.min_tx if self.state == BfdState.UP else max(self.min_tx, SLOW_US)

    def tx_interval(self) -> float:
        return max(self.desired_tx, self.remote_min_rx) / 1e6

    def detect_time(self) -> float:
        return self.remote_mult * max(self.min_rx, self.remote_min_tx) / 1e6

    def _jitter(self) -> float:
        top = 0.9 if self.mult == 1 else 1.0
        return self.tx_interval() * random.uniform(0.75, top)  # noqa: S311 - timer jitter, not crypto

    def packet(self) -> Packet:
        pkt = Packet(
            self.state,
            self.discr,
            self.remote_discr,
            self.desired_tx,
            self.min_rx,
            self.mult,
            self.diag,
            poll=self._poll and not self._final,
            final=self._final,
        )
        self._final = False
        return pkt

    def receive(self, pkt: Packet, now: float) -> BfdState | None:
        """Apply a received packet; returns the new state when it changed. The caller sends
        `packet()` at once when `reply_due` (a Final answers the peer's Poll)."""
        if pkt.your_discr and pkt.your_discr != self.discr:
            return None
        before = self.tx_interval()
        self.remote_discr = pkt.my_discr
        self.remote_min_rx = max(pkt.required_min_rx, 1)
        self.remote_min_tx = pkt.desired_min_tx
        self.remote_mult = pkt.detect_mult
        if pkt.final:
            self._poll = False
        if pkt.poll:
            self._final = True
        old = self.state
        if pkt.state == BfdState.ADMIN_DOWN:
            if self.state != BfdState.DOWN:
                self._down(DIAG_NEIGHBOR_DOWN, now)
        elif self.state == BfdState.DOWN:
            if pkt.state == BfdState.DOWN:
                self.state = BfdState.INIT
            elif pkt.state == BfdState.INIT:
                self.state = BfdState.UP
        elif self.state == BfdState.INIT:
            if pkt.state in (BfdState.INIT, BfdState.UP):
                self.state = BfdState.UP
        elif self.state == BfdState.UP and pkt.state == BfdState.DOWN:
            self._down(DIAG_NEIGHBOR_DOWN, now)
        if self.state in (BfdState.INIT, BfdState.UP):
            self._detect_at = now + self.detect_time()
        if self.tx_interval() < before:
            # A slower rate the peer asked for (or a forged Required Min RX) no longer holds: the
            # next packet goes out at the new rate, not when the old one would have sent it.
            self._next_tx = min(self._next_tx, now + self._jitter())
        if self.state != old:
            if self.state != BfdState.DOWN:
                self._down_since = None
            if self.state == BfdState.UP:
                self.diag = DIAG_NONE
                self._poll = self.min_tx < SLOW_US  # announce the faster rate (§6.8.3)
            self._next_tx = now  # tell the peer at once
            return self.state
        return None

    @property
    def reply_due(self) -> bool:
        return self._final

    def _down(self, diag: int, now: float) -> None:
        self.state = BfdState.DOWN
        self.diag = diag
        self.remote_discr = 0 if diag == DIAG_DETECT_EXPIRED else self.remote_discr
        self._detect_at = None
        self._poll = False
        self._down_since = now

    def tick(self, now: float) -> tuple[Packet | None, BfdState | None]:
        changed = None
        if (
            self.state == BfdState.DOWN
            and self.remote_discr
            and self._down_since is not None
            and now >= self._down_since + min(max(self.detect_time(), MIN_DOWN_RESET), MAX_DOWN_RESET)
        ):
            # RFC 5880 §6.8.1: Down for a Detection Time, forget the remote discriminator, so a
            # stale one (a forged AdminDown planted it) cannot keep both sides dropping each other.
            self.remote_discr = 0
        if self._detect_at is not None and now >= self._detect_at:
            self._down(DIAG_DETECT_EXPIRED, now)
            self.remote_min_rx = 1
            changed = BfdState.DOWN
            self._next_tx = now
        pkt = None
        if now >= self._next_tx and self.remote_min_rx > 0:
            pkt = self.packet()
            self._next_tx = now + self._jitter()
        return pkt, changed

    def next_deadline(self) -> float:
        return min(d for d in (self._next_tx, self._detect_at) if d is not None)
