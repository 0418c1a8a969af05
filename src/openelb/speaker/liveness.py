"""Speaker heartbeats in a process of their own: nothing the control path does can delay them.

The speaker's event loop carries informers, decisions, netlink queues and API writes. Heartbeats
on that loop went late whenever it was busy, peers declared the node dead and IPs failed over
although nothing had failed. A thread is not enough either: it shares the GIL with the loop, and
on a loaded machine (measured in the 3-node lab while 1,500 Services were created: rounds 400-650
ms late on every speaker at once) the thread waits for a GIL holder that the kernel has
preempted. So send, receive and expiry run in a small child process (no informer, no
Kubernetes client) that mostly sleeps, and the kernel wakes it promptly. The parent talks to it
over a pipe: peers and readiness down, the live set and measurements up.

A child that keeps saying ALIVE for a hung speaker would hide a real failure: the parent sends a
tick every `TICK` seconds, and a child that hears none for `watchdog` seconds (10) goes silent
until it does, so a speaker whose loop is stuck still fails over (after `watchdog`, not
`dead_after`; long enough that a loop busy with a big relist on a loaded node is not a hang).
The child exits when the parent is gone (its end of the pipe closes).

The membership itself (`protocols.heartbeat.Membership`) is sans-IO and lives in the child
(`speaker.liveness_child`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from openelb.speaker.liveness_child import TICK, Config, Report

log = logging.getLogger("openelb.speaker.liveness")
STALL_WARNING = 2.0
"""A tick this many seconds late is logged and counted (`openelb_speaker_loop_stalls_total`)."""


class Heartbeats:
    """The parent's handle: same interface whatever runs the heartbeats."""

    def __init__(
        self,
        node: str,
        keys: Sequence[bytes],
        *,
        port: int,
        interval: float,
        dead_after: float,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[frozenset[str]], None],
        registry: CollectorRegistry,
        bind: str = "0.0.0.0",  # noqa: S104 - the node's heartbeat port
        watchdog: float = 10.0,
    ) -> None:
        self.node = node
        self.loop = loop
        self.on_change = on_change
        self.cfg = Config(node, tuple(keys), port, interval, dead_after, bind, watchdog)
        self.alive: frozenset[str] = frozenset({node})
        """The last live set reported (read by metrics)."""
        # Bound here, so a port in use fails the speaker at once (CannotListen) as before.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((bind, port))
        self.sock.setblocking(False)
        self._peers: tuple[str, ...] = ()
        self._ready = False
        self._conn: Connection | None = None
        self._proc: Any = None
        self._ticker: asyncio.TimerHandle | None = None
        self.stalls = 0
        """Ticks that came more than STALL_WARNING late (the loop was blocked)."""
        self._due: float | None = None
        self.settled = asyncio.Event()
        """Set once the child has listened for `dead_after`: only then may the speaker claim IPs,
        or a restart would briefly grab every IP it is a candidate for."""
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
        self.refused = Counter(
            "openelb_speaker_heartbeats_refused",
            "heartbeat datagrams dropped: garbage (or a wrong key), replay, unverified (a peer's new "
            "incarnation before it answered a probe), stale-reply, rate-limited (probe answers)",
            ["reason"],
            registry=registry,
        )
        self.expired = Counter(
            "openelb_speaker_peers_expired",
            "peers declared dead because their heartbeats stopped (not those that said LEAVING)",
            registry=registry,
        )

    def start(self) -> None:
        # A fresh interpreter (no loop, threads or locks inherited), started by module name so it
        # never re-imports whatever the speaker's own main module is.
        parent, child = multiprocessing.Pipe()
        fds = (self.sock.fileno(), child.fileno())
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "openelb.speaker.liveness_child", *map(str, fds)], pass_fds=fds, close_fds=True
        )
        child.close()
        self._conn = parent
        parent.send(self.cfg)
        self._send("peers", self._peers)
        self._send("ready", self._ready)
        self.loop.add_reader(parent.fileno(), self._readable)
        self._tick()

    def _tick(self) -> None:
        now = self.loop.time()
        due = self._due if self._due is not None else now
        if now - due > STALL_WARNING:
            # The loop ran nothing for that long: no ARP answer, no plan change either. Said
            # here because only the loop's own clock can tell (a CPU-starved node, a long GC).
            self.stalls += 1
            log.warning("the speaker's event loop was blocked for %.1f s (CPU starved or a long step)", now - due)
        self._due = now + TICK
        self._send("tick", None)
        self._ticker = self.loop.call_later(TICK, self._tick)

    def _send(self, cmd: str, arg: object) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, BrokenPipeError):
                self._conn.send((cmd, arg))

    @property
    def peers(self) -> tuple[str, ...]:
        return self._peers

    @peers.setter
    def peers(self, addrs: Sequence[str]) -> None:
        new = tuple(addrs)
        if new != self._peers:
            self._peers = new
            self._send("peers", new)

    @property
    def keys(self) -> tuple[bytes, ...]:
        return self.cfg.keys

    @keys.setter
    def keys(self, keys: Sequence[bytes]) -> None:
        """A rotation step, live: the child signs with the first and accepts any."""
        new = tuple(keys)
        if new and new != self.cfg.keys:
            self.cfg.keys = new
            self._send("keys", new)

    @property
    def ready(self) -> bool:
        """JOINING until the speaker announces: the current owners keep the IPs until then, so a
        returning node takes them over make-before-break."""
        return self._ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self._ready = value
        self._send("ready", value)

    def _readable(self) -> None:
        assert self._conn is not None
        while self._conn.poll():
            try:
                rep: Report = self._conn.recv()
            except (EOFError, OSError):
                self.loop.remove_reader(self._conn.fileno())
                log.error("heartbeat process ended (exit code %s)", self._proc.poll() if self._proc else None)
                return
            for line in rep.logs:
                log.log(
                    logging.WARNING
                    if " late" in line or "normal priority" in line or "paused" in line
                    else logging.INFO,
                    "%s",
                    line,
                )
            for v in rep.lateness:
                self.lateness.observe(v)
            for v in rep.rtt:
                self.rtt.observe(v)
            for reason, n in rep.refused.items():
                self.refused.labels(reason).inc(n)
            if rep.expired:
                self.expired.inc(rep.expired)
            if rep.alive is not None and rep.alive != self.alive:
                self.alive = rep.alive
                self.on_change(rep.alive)
            if rep.settled:
                self.settled.set()

    def leave(self) -> None:
        """Say LEAVING: the peers take over at once instead of waiting for `dead_after`."""
        self._ready = False
        self._send("leave", None)

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        self._send("stop", None)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=2)
        if self._conn is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(self._conn.fileno())
            self._conn.close()
        self.sock.close()
