"""Speaker heartbeats on a thread of their own: nothing the control path does can delay them.

The event loop carries informers, decisions, netlink queues and API writes; a slow moment there
(a relist of 10,000 Services, a big ownership change) once delayed heartbeats past `--dead-after`,
peers declared this node dead and IPs failed over although nothing had failed. Here send, receive
and expiry run on one thread with a blocking socket. The loop's work can delay this thread only by
holding the GIL, which CPython hands over every `sys.getswitchinterval()` (5 ms) of bytecode, so
the lateness is bounded by a few switch intervals, not by what the loop is doing; the
`openelb_speaker_heartbeat_lateness_seconds` histogram measures it.

The membership itself (`protocols.heartbeat.Membership`) is sans-IO and touched only by this
thread; the loop gets a snapshot of the live set whenever it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

from openelb.protocols import heartbeat as hbp

log = logging.getLogger("openelb.speaker.liveness")


class Heartbeats:
    def __init__(
        self,
        node: str,
        key: bytes,
        *,
        port: int,
        interval: float,
        dead_after: float,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[frozenset[str]], None],
        registry: CollectorRegistry,
        bind: str = "0.0.0.0",  # noqa: S104 - the node's heartbeat port
    ) -> None:
        self.node = node
        self.key = key
        self.port = port
        self.interval = interval
        self.loop = loop
        self.on_change = on_change
        self.membership = hbp.Membership(node, timeout=dead_after)
        self.alive: frozenset[str] = frozenset({node})
        """The last live set handed to the loop (read by metrics)."""
        self.peers: Sequence[str] = ()
        """Addresses to send to; replaced (never mutated) by the loop thread."""
        self.ready = False
        """JOINING until the speaker announces: the current owners keep the IPs until then, so a
        returning node takes them over make-before-break."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((bind, port))  # OSError goes to the caller (CannotListen)
        self.sock.setblocking(False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rtt = Histogram(
            "openelb_speaker_heartbeat_rtt_seconds",
            "Round-trip time of heartbeat probes to the peers",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
            registry=registry,
        )
        self.lateness = Histogram(
            "openelb_speaker_heartbeat_lateness_seconds",
            "How late each heartbeat round went out against its schedule",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
            registry=registry,
        )
        self.bad = Counter(
            "openelb_speaker_bad_heartbeats", "heartbeats refused (garbage or wrong key)", registry=registry
        )
        self.expired = Counter(
            "openelb_speaker_peers_expired",
            "peers declared dead because their heartbeats stopped (not those that said LEAVING)",
            registry=registry,
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="openelb-heartbeats", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        probes_every = max(1, round(1.0 / self.interval))  # one RTT probe per peer per second
        tick = 0
        due = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= due:
                self.lateness.observe(now - due)
                tick += 1
                if tick % probes_every == 0:
                    self._send(hbp.PROBE)
                self._send(hbp.ALIVE if self.ready else hbp.JOINING)
                dead = self.membership.expire(now)
                if dead:
                    self.expired.inc(len(dead))
                    log.info("membership: %s stopped sending heartbeats", ", ".join(sorted(dead)))
                    self._changed()
                due += self.interval
                if due < now:  # we were held up: do not send a burst to catch up
                    due = now + self.interval
            try:
                readable, _, _ = select.select([self.sock], [], [], max(0.0, due - time.monotonic()))
            except (OSError, ValueError):
                return  # closed
            if readable:
                self._receive(time.monotonic())

    def _receive(self, now: float) -> None:
        for _ in range(256):
            try:
                data, addr = self.sock.recvfrom(512)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                hb = hbp.decode(data, self.key)
            except hbp.HeartbeatError:
                self.bad.inc()
                continue
            if hb.kind == hbp.PROBE:
                if hb.node != self.node:
                    reply = hbp.encode(hbp.Heartbeat(self.node, hb.seq, hbp.REPLY), self.key)
                    with contextlib.suppress(OSError):
                        self.sock.sendto(reply, (addr[0], self.port))
            elif hb.kind == hbp.REPLY:
                self.rtt.observe(max(0, time.time_ns() - hb.seq) / 1e9)
            elif self.membership.receive(hb, now):
                log.info("membership: %s is %s", hb.node, "leaving" if hb.kind == hbp.LEAVING else "alive")
                self._changed()

    def _changed(self) -> None:
        alive = frozenset(self.membership.alive())
        self.alive = alive
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self.loop.call_soon_threadsafe(self.on_change, alive)

    def _send(self, kind: int) -> None:
        msg = hbp.encode(hbp.Heartbeat(self.node, time.time_ns(), kind), self.key)
        for peer in self.peers:
            with contextlib.suppress(OSError):
                self.sock.sendto(msg, (peer, self.port))

    def leave(self) -> None:
        """Say LEAVING: the peers take over at once instead of waiting for `dead_after`."""
        self.ready = False
        self._send(hbp.LEAVING)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.sock.close()
