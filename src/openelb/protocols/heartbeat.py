"""Speaker heartbeats: a tiny authenticated UDP message, and the membership it feeds (sans-IO).

Message: b"OELB" | version (1) | kind | seq (u64) | name length (u8) | name
| HMAC-SHA256(key, everything before), first 16 bytes. `seq` is the sender's wall clock in
nanoseconds, so it keeps growing across restarts and replays are refused. Kinds: 1 alive,
2 leaving, 3 joining (liveness); 4 probe and 5 reply (round-trip time: a reply echoes the probe's
`seq`, so the prober's RTT is its clock now minus that value).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

MAGIC = b"OELB"
VERSION = 1
ALIVE = 1
LEAVING = 2
JOINING = 3
"""Up but not announcing yet: peers keep their IPs until it says ALIVE (make-before-break)."""
PROBE = 4
REPLY = 5
MAC_LEN = 16
HEAD = struct.Struct("!4sBBQB")


class HeartbeatError(ValueError):
    pass


@dataclass(frozen=True)
class Heartbeat:
    node: str
    seq: int
    kind: int = ALIVE


def encode(hb: Heartbeat, key: bytes) -> bytes:
    name = hb.node.encode()
    if len(name) > 255:
        raise HeartbeatError("node name too long")
    body = HEAD.pack(MAGIC, VERSION, hb.kind, hb.seq, len(name)) + name
    return body + hmac.new(key, body, hashlib.sha256).digest()[:MAC_LEN]


def decode(data: bytes, key: bytes) -> Heartbeat:
    if len(data) < HEAD.size + MAC_LEN:
        raise HeartbeatError("heartbeat too short")
    magic, version, kind, seq, n = HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise HeartbeatError("not an OpenELB heartbeat")
    body_len = HEAD.size + n
    if len(data) != body_len + MAC_LEN:
        raise HeartbeatError("heartbeat length mismatch")
    body, mac = data[:body_len], data[body_len:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()[:MAC_LEN]):
        raise HeartbeatError("heartbeat authentication failed (wrong key?)")
    if kind not in (ALIVE, LEAVING, JOINING, PROBE, REPLY):
        raise HeartbeatError(f"unknown heartbeat kind {kind}")
    try:
        node = data[HEAD.size : body_len].decode()
    except UnicodeDecodeError:
        raise HeartbeatError("node name is not UTF-8") from None
    return Heartbeat(node, seq, kind)


@dataclass
class Membership:
    """Who is alive, from heartbeats: a node is alive while heard within `timeout` seconds."""

    me: str
    timeout: float = 0.2
    _last: dict[str, float] = field(default_factory=dict)
    _seq: dict[str, int] = field(default_factory=dict)

    def receive(self, hb: Heartbeat, now: float) -> bool:
        """Apply a heartbeat; True when the set of live nodes changed."""
        if hb.kind in (PROBE, REPLY):
            return False  # round-trip measurement, not liveness
        if hb.node == self.me or hb.seq <= self._seq.get(hb.node, -1):
            return False  # our own echo, or a replay / reordering
        self._seq[hb.node] = hb.seq
        was = hb.node in self._last
        if hb.kind in (LEAVING, JOINING):  # not (or no longer) a candidate for any IP
            self._last.pop(hb.node, None)
            return was
        self._last[hb.node] = now
        return not was

    def expire(self, now: float) -> set[str]:
        """Forget nodes not heard within the timeout; returns those that died."""
        dead = {n for n, t in self._last.items() if now - t > self.timeout}
        for n in dead:
            del self._last[n]
        return dead

    def alive(self) -> set[str]:
        return {self.me, *self._last}
