"""The heartbeat loop that runs in the speaker's child process (see `speaker.liveness`).

Kept apart and light (stdlib and the sans-IO membership only), so the child starts in a fraction
of a second and holds little memory.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from openelb.protocols import heartbeat as hbp

TICK = 0.5
REPORT_EVERY = 1.0


@dataclass
class Config:
    node: str
    keys: tuple[bytes, ...]
    """The first signs, any verifies (rotation)."""
    port: int
    interval: float
    dead_after: float
    bind: str
    watchdog: float


@dataclass
class Report:
    """Child → parent, every `REPORT_EVERY` s and on every membership change."""

    alive: frozenset[str] | None = None
    settled: bool = False
    """Sent once, `dead_after` after the child started: it has heard whoever is there."""
    lateness: list[float] = field(default_factory=list)
    rtt: list[float] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)
    """Datagrams dropped, by reason (`Received.refused`)."""
    expired: int = 0
    logs: list[str] = field(default_factory=list)


class Child:
    """The heartbeat loop: blocking socket, one select with the next send as timeout."""

    def __init__(self, cfg: Config, conn: Connection, sock: socket.socket) -> None:
        self.cfg = cfg
        self.conn = conn
        self.sock = sock
        self.membership = hbp.Membership(cfg.node, cfg.keys, timeout=cfg.dead_after)
        self.peers: Sequence[str] = ()
        self.ready = False
        self.last_tick = time.monotonic()
        self.silent = False
        self.report = Report()

    def run(self) -> None:
        cfg = self.cfg
        probes_every = max(1, round(1.0 / cfg.interval))  # one RTT probe per peer per second
        tick = 0
        due = time.monotonic()
        next_report = due + REPORT_EVERY
        # Long enough to hear every live peer and verify it (a probe and its reply, then its next
        # heartbeat), so a restart never briefly grabs IPs whose owners it has not heard yet.
        settle_at: float | None = due + cfg.dead_after + 2 * cfg.interval
        while True:
            now = time.monotonic()
            if settle_at is not None and now >= settle_at:
                settle_at = None
                self.report.settled = True
                self._changed()
            if now >= due:
                self.report.lateness.append(now - due)
                if now - due > cfg.interval:
                    self.report.logs.append(f"heartbeats {(now - due) * 1e3:.0f} ms late")
                tick += 1
                silent = now - self.last_tick >= cfg.watchdog
                if silent != self.silent:
                    self.silent = silent
                    self.report.logs.append(
                        f"no word from the speaker for {cfg.watchdog:.0f} s: heartbeats paused (peers take over)"
                        if silent
                        else "the speaker answers again: heartbeats resumed"
                    )
                if not silent:  # the speaker itself is alive
                    if tick % probes_every == 0:
                        self._probe(now)
                    self._send(hbp.ALIVE if self.ready else hbp.JOINING)
                dead = self.membership.expire(now)
                if dead:
                    self.report.expired += len(dead)
                    self.report.logs.append(f"membership: {', '.join(sorted(dead))} stopped sending heartbeats")
                    self._changed()
                due += cfg.interval
                if due < now:  # held up: no burst to catch up
                    due = now + cfg.interval
            if now >= next_report:
                self._flush()
                next_report = now + REPORT_EVERY
            timeout = max(0.0, min(due, next_report) - time.monotonic())
            sock_fd, conn_fd = self.sock.fileno(), self.conn.fileno()
            readable, _, _ = select.select([sock_fd, conn_fd], [], [], timeout)
            if conn_fd in readable and not self._commands():
                return
            if sock_fd in readable:
                self._receive(time.monotonic())

    def _commands(self) -> bool:
        """Apply what the parent sent; False when it is gone or says stop."""
        while self.conn.poll():
            try:
                cmd, arg = self.conn.recv()
            except (EOFError, OSError):
                return False
            self.last_tick = time.monotonic()
            if cmd == "peers":
                self.peers = tuple(arg)
            elif cmd == "keys":
                self.membership.set_keys(arg)
            elif cmd == "ready":
                self.ready = bool(arg)
            elif cmd == "leave":
                self.ready = False
                self._send(hbp.LEAVING)
            elif cmd == "stop":
                return False
        return True

    def _receive(self, now: float) -> None:
        for _ in range(256):
            try:
                data, addr = self.sock.recvfrom(512)
            except OSError:  # BlockingIOError: drained
                return
            got = self.membership.receive(data, addr[0], now)
            for msg, to in got.send:
                with contextlib.suppress(OSError):
                    self.sock.sendto(msg, (to, self.cfg.port))
            if got.rtt is not None:
                self.report.rtt.append(got.rtt)
            if got.refused:
                self.report.refused[got.refused] = self.report.refused.get(got.refused, 0) + 1
            if got.changed:
                self.report.logs.append(f"membership: {got.changed}")
                self._changed()

    def _changed(self) -> None:
        self.report.alive = frozenset(self.membership.alive())
        self._flush()

    def _flush(self) -> None:
        if time.monotonic() - self.last_tick > self.cfg.watchdog:
            # The parent is not reading: a full pipe would block this loop. Keep the news, bounded.
            del self.report.lateness[:-1000], self.report.rtt[:-1000], self.report.logs[:-100]
            return
        with contextlib.suppress(OSError):
            self.conn.send(self.report)
        self.report = Report()

    def _send(self, kind: int) -> None:
        msg = self.membership.message(kind)  # one message (one counter value) for every peer
        for peer in self.peers:
            with contextlib.suppress(OSError):
                self.sock.sendto(msg, (peer, self.cfg.port))

    def _probe(self, now: float) -> None:
        """RTT probes: one nonce per peer (a nonce answers one reply)."""
        for peer in self.peers:
            msg = self.membership.probe(now)
            if msg is not None:
                with contextlib.suppress(OSError):
                    self.sock.sendto(msg, (peer, self.cfg.port))


RT_PRIORITY = 10
RTTIME_US = 500_000
"""A real-time heartbeat loop may run at most 0.5 s without blocking (it blocks every interval):
a bug that spins is killed by the kernel instead of starving the node."""


def realtime(what: str = "heartbeats", hint: str = "on a CPU-starved node raise --dead-after") -> str:
    """Ask for real-time scheduling (SCHED_RR, as keepalived's VRRP process does) for the calling
    thread: on a node whose CPUs are saturated, a normal one can wait for a CPU longer than
    `--dead-after` (or a VRRP master down interval). Needs CAP_SYS_NICE (in the chart's speaker
    capabilities); without it, the normal priority. Also used by the speaker's VRRP thread."""
    try:
        resource.setrlimit(resource.RLIMIT_RTTIME, (RTTIME_US, RTTIME_US))
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(RT_PRIORITY))
    except (OSError, ValueError) as exc:
        return (
            f"{what} at normal priority ({exc.strerror if isinstance(exc, OSError) else exc}; "
            f"grant CAP_SYS_NICE for real-time priority): {hint}"
        )
    return f"{what} at real-time priority (SCHED_RR {RT_PRIORITY})"


def main(argv: Sequence[str]) -> None:
    """`python -m openelb.speaker.liveness_child SOCKET_FD PIPE_FD`: the configuration (with the
    key, so never on the command line) is the first message on the pipe."""
    conn = Connection(int(argv[1]))
    sock = socket.socket(fileno=int(argv[0]))
    cfg = conn.recv()
    child = Child(cfg, conn, sock)
    child.report.logs.append(realtime())
    with contextlib.suppress(KeyboardInterrupt):
        child.run()


if __name__ == "__main__":
    import importlib
    import sys

    # Through the module's own name: what goes over the pipe must pickle as
    # openelb.speaker.liveness_child.Report, not __main__.Report.
    importlib.import_module("openelb.speaker.liveness_child").main(sys.argv[1:])
