"""Speaker heartbeats: a tiny authenticated UDP message, and the membership it feeds (sans-IO).

Message (version 2): b"OELB" | version | kind | incarnation (u64) | counter (u64) | nonce (u64)
| name length (u8) | name | HMAC-SHA256(key, everything before), first 16 bytes.

Kinds: 1 alive, 2 leaving, 3 joining (liveness); 4 probe, 5 reply (a reply echoes the probe's
nonce: round-trip time, and proof that the peer is there now).

Why incarnation + counter + nonce, and no clock (version 1 used the sender's wall clock as
sequence): a wall clock stepping back made every real heartbeat look like a replay, and a
receiver that restarted accepted any old heartbeat it was shown. Now a sender picks a random
incarnation when it starts and counts its messages; a receiver accepts a liveness message only
from the incarnation it has *verified* — by a probe with a fresh random nonce that the sender
answered with that incarnation — and only with a counter above the last one. So a replayed
LEAVING or ALIVE is refused whether the receiver restarted or not, and a forged high counter
heals at the next verification. Probes are replay-checked too and replies are rate-limited per
address, so the port reflects at most a few packets per second to anyone; a reply counts only
for a probe this node sent in the last `PROBE_TTL` seconds (an old reply records no RTT).

Keys: the first signs, any verifies — rotation is "add the new key second, make it first, drop
the old one", each step live, no speaker restart and no failover (`docs/security.md`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAGIC = b"OELB"
VERSION = 2
ALIVE = 1
LEAVING = 2
JOINING = 3
"""Up but not announcing yet: peers keep their IPs until it says ALIVE (make-before-break)."""
PROBE = 4
REPLY = 5
KINDS = (ALIVE, LEAVING, JOINING, PROBE, REPLY)
MAC_LEN = 16
HEAD = struct.Struct("!4sBBQQQB")
PROBE_TTL = 2.0
"""A reply is accepted for this long after its probe went out."""
CHALLENGE_EVERY = 0.25
"""At most one verification probe per peer this often (an unverified peer keeps sending)."""
REPLY_RATE, REPLY_BURST = 4.0, 8.0
"""Replies per second per address (token bucket): a peer's own probes need one per second, and
a verification or two; replayed or spoofed probes get no more than this."""
UNVERIFIED = -1
"""The incarnation of a peer we heard but have not verified yet (no u64 equals it)."""
MAX_TABLE = 4096
"""Bound on outstanding probes and rate-limit buckets: a flood cannot grow memory."""


class HeartbeatError(ValueError):
    pass


@dataclass(frozen=True)
class Heartbeat:
    node: str
    incarnation: int
    counter: int
    kind: int = ALIVE
    nonce: int = 0


def encode(hb: Heartbeat, key: bytes) -> bytes:
    name = hb.node.encode()
    if len(name) > 255:
        raise HeartbeatError("node name too long")
    body = HEAD.pack(MAGIC, VERSION, hb.kind, hb.incarnation, hb.counter, hb.nonce, len(name)) + name
    return body + hmac.new(key, body, hashlib.sha256).digest()[:MAC_LEN]


def decode(data: bytes, keys: Sequence[bytes]) -> Heartbeat:
    """Check length, magic, version, then the MAC against each key; the fields only after that."""
    if len(data) < HEAD.size + MAC_LEN:
        raise HeartbeatError("heartbeat too short")
    magic, version, kind, inc, ctr, nonce, n = HEAD.unpack_from(data)
    if magic != MAGIC:
        raise HeartbeatError("not an OpenELB heartbeat")
    if version != VERSION:
        raise HeartbeatError(f"heartbeat version {version} (this speaker speaks {VERSION}: upgrade every speaker)")
    body_len = HEAD.size + n
    if len(data) != body_len + MAC_LEN:
        raise HeartbeatError("heartbeat length mismatch")
    body, mac = data[:body_len], data[body_len:]
    if not any(hmac.compare_digest(mac, hmac.new(k, body, hashlib.sha256).digest()[:MAC_LEN]) for k in keys):
        raise HeartbeatError("heartbeat authentication failed (wrong key?)")
    if kind not in KINDS:
        raise HeartbeatError(f"unknown heartbeat kind {kind}")
    try:
        node = data[HEAD.size : body_len].decode()
    except UnicodeDecodeError:
        raise HeartbeatError("node name is not UTF-8") from None
    return Heartbeat(node, inc, ctr, kind, nonce)


@dataclass
class _Peer:
    incarnation: int
    counter: int
    last: float | None = None
    """When last heard alive (monotonic); None while not a live member."""
    challenged: float = float("-inf")


@dataclass
class Received:
    """What one datagram did: packets to send back, a measured RTT, a change of the live set."""

    send: list[tuple[bytes, str]] = field(default_factory=list)
    changed: str | None = None
    """A log line when the live set changed."""
    rtt: float | None = None
    refused: str | None = None
    """Why the datagram was dropped: garbage, replay, unverified, stale-reply, rate-limited."""


class Membership:
    """Who is alive, from heartbeats: a verified peer is alive while heard within `timeout` s.

    Sans-IO: the caller passes datagrams and the monotonic clock in, and sends what comes out.
    """

    def __init__(self, me: str, keys: Sequence[bytes], timeout: float = 0.2, incarnation: int | None = None) -> None:
        self.me = me
        self.timeout = timeout
        self.keys: tuple[bytes, ...] = ()
        self.set_keys(keys)
        self.incarnation = (secrets.randbits(64) or 1) if incarnation is None else incarnation
        self.counter = 0
        self._peers: dict[str, _Peer] = {}
        self._probes: dict[int, tuple[str | None, float]] = {}
        """nonce -> (node it verifies or None for an RTT probe, when sent)."""
        self._buckets: dict[str, tuple[float, float]] = {}
        """address -> (tokens, when last refilled): replies we may still send there."""

    def set_keys(self, keys: Iterable[bytes]) -> None:
        ks = tuple(k for k in keys if k)
        if not ks:
            raise HeartbeatError("no heartbeat key")
        self.keys = ks

    # ---- sending --------------------------------------------------------------------------------

    def message(self, kind: int, nonce: int = 0) -> bytes:
        self.counter += 1
        return encode(Heartbeat(self.me, self.incarnation, self.counter, kind, nonce), self.keys[0])

    def probe(self, now: float, verifies: str | None = None) -> bytes | None:
        """A probe with a fresh nonce (one per destination: a nonce is good for one reply)."""
        if len(self._probes) >= MAX_TABLE:
            self._prune(now)
            if len(self._probes) >= MAX_TABLE:
                return None
        nonce = secrets.randbits(64) or 1
        self._probes[nonce] = (verifies, now)
        return self.message(PROBE, nonce)

    # ---- receiving ------------------------------------------------------------------------------

    def receive(self, data: bytes, addr: str, now: float) -> Received:
        out = Received()
        try:
            hb = decode(data, self.keys)
        except HeartbeatError:
            out.refused = "garbage"
            return out
        if hb.node == self.me:
            return out  # our own echo
        peer = self._peers.get(hb.node)
        if hb.kind == REPLY:
            self._reply(hb, peer, now, out)
        elif peer is None or peer.incarnation != hb.incarnation:
            if hb.kind == PROBE:
                self._answer(hb, addr, now, out)  # a peer that restarted verifies us first
            out.refused = out.refused or "unverified"
            self._challenge(hb.node, addr, now, out)
        elif hb.counter <= peer.counter:
            out.refused = "replay"
            self._challenge(hb.node, addr, now, out)  # heals a forged high counter
        else:
            peer.counter = hb.counter
            if hb.kind == PROBE:
                self._answer(hb, addr, now, out)
            else:
                self._liveness(hb, peer, now, out)
        return out

    def _liveness(self, hb: Heartbeat, peer: _Peer, now: float, out: Received) -> None:
        was = peer.last is not None
        if hb.kind in (LEAVING, JOINING):  # not (or no longer) a candidate for any IP
            peer.last = None
            if was:
                out.changed = f"{hb.node} is {'leaving' if hb.kind == LEAVING else 'restarting'}"
            return
        peer.last = now
        if not was:
            out.changed = f"{hb.node} is alive"

    def _reply(self, hb: Heartbeat, peer: _Peer | None, now: float, out: Received) -> None:
        probe = self._probes.pop(hb.nonce, None)
        if probe is None or now - probe[1] > PROBE_TTL or probe[0] not in (None, hb.node):
            out.refused = "stale-reply"
            return
        out.rtt = now - probe[1]
        if peer is None:
            self._peers[hb.node] = _Peer(hb.incarnation, hb.counter)
        elif peer.incarnation != hb.incarnation or hb.counter != peer.counter:
            # Proven fresh by the nonce: this is the peer's state now, also below a forged counter.
            peer.incarnation, peer.counter = hb.incarnation, hb.counter

    def _answer(self, hb: Heartbeat, addr: str, now: float, out: Received) -> None:
        tokens, then = self._buckets.get(addr, (REPLY_BURST, now))
        tokens = min(REPLY_BURST, tokens + (now - then) * REPLY_RATE)
        if tokens < 1.0 or (addr not in self._buckets and len(self._buckets) >= MAX_TABLE):
            out.refused = "rate-limited"
            return
        self._buckets[addr] = (tokens - 1.0, now)
        out.send.append((self.message(REPLY, hb.nonce), addr))

    def _challenge(self, node: str, addr: str, now: float, out: Received) -> None:
        peer = self._peers.get(node)
        if peer is not None:
            if now - peer.challenged < CHALLENGE_EVERY:
                return
            peer.challenged = now
        elif len(self._peers) >= MAX_TABLE:
            return
        else:
            self._peers[node] = _Peer(UNVERIFIED, 0, challenged=now)
        msg = self.probe(now, verifies=node)
        if msg is not None:
            out.send.append((msg, addr))

    # ---- time ----------------------------------------------------------------------------------

    def expire(self, now: float) -> set[str]:
        """Forget nodes not heard within the timeout; returns those that died."""
        dead = {n for n, p in self._peers.items() if p.last is not None and now - p.last > self.timeout}
        for n in dead:
            self._peers[n].last = None
        if len(self._probes) > 64 or len(self._peers) > MAX_TABLE // 2:
            self._prune(now)
        return dead

    def _prune(self, now: float) -> None:
        self._probes = {n: p for n, p in self._probes.items() if now - p[1] <= PROBE_TTL}
        self._buckets = {a: b for a, b in self._buckets.items() if now - b[1] <= REPLY_BURST / REPLY_RATE}
        if len(self._peers) > MAX_TABLE // 2:
            self._peers = {n: p for n, p in self._peers.items() if p.last is not None or p.incarnation != UNVERIFIED}

    def alive(self) -> set[str]:
        return {self.me, *(n for n, p in self._peers.items() if p.last is not None)}
