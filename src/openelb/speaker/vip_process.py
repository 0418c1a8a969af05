"""VIP mode's VRRP routers in a process of their own: adverts on time whatever the speaker does.

The routers (`speaker.vip.VipEngine`) ran on a thread of the speaker at real-time priority. A
thread shares the GIL with the speaker's event loop: at 5,000 IPs, while Services were created on
this saturated 2-core lab, masters' adverts went out later than the 0.35 s master-down interval
and backups took over for a moment (25 brief double masters; issue 12). As the heartbeats do
(`speaker.liveness`), the routers run in a child process, started by module name (it never
re-imports the speaker's main module) when the first router appears, fed the plan's router
changes over a pipe; it sends back, in order, what to hold and release and each transition. The
addresses stay the speaker's (`speaker.vip_host`: netlink and gratuitous ARP on its worker
thread), so the child imports no pyroute2: it starts in ~0.1 s and holds ~15 MB.

The child ends with its pipe: told to stop, or its speaker gone however it went (a SIGKILL too),
it says priority 0 for every router it is master of, so the backups take over at once instead of
after the master-down interval (a killed speaker's addresses are then removed by its successor,
`vip_host`'s marked-address sweep). It ignores SIGTERM (a process-group
signal reaches it beside the speaker, which then stops it in order). A child that dies is started
again with every router the speaker has, at most once per `RESTART_AFTER` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from openelb.speaker.vip import Host, VipEngine
from openelb.speaker.vip_plan import GroupKey, RouterConfig

log = logging.getLogger("openelb.speaker.vip")
REPORT_EVERY = 1.0
RESTART_AFTER = 2.0

OnState = Callable[[GroupKey, RouterConfig, bool], None]


class VipProcess:
    """The speaker's handle on its VRRP process: the interface the in-process engine had."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_state: OnState, host: Host) -> None:
        self.loop = loop
        self.on_state = on_state
        self.host = host
        self.stats: Counter[str] = Counter()
        """adverts_sent, adverts_received, transitions, bad_ttl, bad_packet, unknown_vrid, ... (child's)"""
        self.masters: dict[GroupKey, RouterConfig] = {}
        """Routers this node is master of, as the child last said."""
        self.routers: dict[GroupKey, RouterConfig] = {}
        """Every router the plan gave (sent again to a restarted child)."""
        self.restarts = 0
        self.talking = asyncio.Event()
        """Set by the child's first report: it is up (its SIGTERM disposition set, its address
        worker running)."""
        self._conn: Connection | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._closing = False
        self._started = 0.0

    def start(self) -> None:
        parent, child = multiprocessing.Pipe()
        fd = child.fileno()
        self._proc = subprocess.Popen([sys.executable, "-m", "openelb.speaker.vip_process", str(fd)],
                                      pass_fds=(fd,), close_fds=True)  # fmt: skip
        child.close()
        self._conn = parent
        self._started = time.monotonic()
        self.loop.add_reader(parent.fileno(), self._readable)
        if self.routers:
            self._send(("configure", dict(self.routers)))

    def configure(self, changes: Mapping[GroupKey, RouterConfig | None]) -> None:
        if not changes:
            return
        for key, cfg in changes.items():
            if cfg is None:
                self.routers.pop(key, None)
            else:
                self.routers[key] = cfg
        if self._conn is None and not self._closing:
            self.start()
        else:
            self._send(("configure", dict(changes)))

    def _send(self, msg: tuple[str, Any]) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, BrokenPipeError):
                self._conn.send(msg)

    def _readable(self) -> None:
        conn = self._conn
        assert conn is not None
        while conn.poll():
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                self._ended(conn)
                return
            if msg[0] == "hold":
                self.host.hold(msg[1], msg[2])
            elif msg[0] == "release":
                self.host.release(msg[1], msg[2])
            elif msg[0] == "state":
                _, key, cfg, master = msg
                if master:
                    self.masters[key] = cfg
                else:
                    self.masters.pop(key, None)
                self.on_state(key, cfg, master)
            elif msg[0] == "stats":
                self.stats = Counter(msg[1])
                self.talking.set()
            elif msg[0] == "log":
                log.log(msg[1], "%s", msg[2])

    def _ended(self, conn: Connection) -> None:
        self.loop.remove_reader(conn.fileno())
        conn.close()
        self._conn = None
        if self._closing:
            return
        code = self._proc.poll() if self._proc else None
        log.error("the VRRP process ended (exit code %s); starting it again", code)
        for key, cfg in list(self.masters.items()):  # a master no more: its adverts stopped
            self.masters.pop(key)
            self.host.release(cfg.interface, cfg.addresses)
            self.on_state(key, cfg, False)
        self.restarts += 1
        wait = max(0.0, RESTART_AFTER - (time.monotonic() - self._started))
        self.loop.call_later(wait, lambda: None if self._closing or self._conn else self.start())

    def close(self) -> None:
        """Blocking (the speaker runs it on an executor): masters say priority 0 and release."""
        self._closing = True
        self._send(("stop", None))
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=2)


# ---- the child ------------------------------------------------------------------------------------


class _HostOverPipe:
    """The child's `Host`: holds and releases go to the speaker, in order with the transitions."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        self.send = send

    def hold(self, ifname: str, ips: Iterable[str]) -> None:
        self.send(("hold", ifname, tuple(ips)))

    def release(self, ifname: str, ips: Iterable[str]) -> None:
        self.send(("release", ifname, tuple(ips)))


class _PipeLog(logging.Handler):
    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        super().__init__()
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.send(("log", record.levelno, record.getMessage()))


async def _serve(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    lock = threading.Lock()  # the VRRP thread logs too: one sender at a time on the pipe

    def send(msg: tuple[Any, ...]) -> None:
        with lock, contextlib.suppress(OSError):  # the speaker gone: `readable` ends us
            conn.send(msg)

    logging.getLogger("openelb").addHandler(_PipeLog(send))
    logging.getLogger("openelb").setLevel(logging.INFO)
    engine = VipEngine(lambda key, cfg, master: send(("state", key, cfg, master)), _HostOverPipe(send))
    done = asyncio.Event()

    def readable() -> None:
        while conn.poll():
            try:
                cmd, arg = conn.recv()
            except (EOFError, OSError):
                done.set()
                return
            if cmd == "configure":
                engine.configure(arg)
            elif cmd == "stop":
                done.set()
                return

    async def report() -> None:
        while True:
            send(("stats", dict(engine.stats)))
            await asyncio.sleep(REPORT_EVERY)

    loop.add_reader(conn.fileno(), readable)
    reporter = asyncio.create_task(report())
    await done.wait()
    reporter.cancel()
    loop.remove_reader(conn.fileno())
    await loop.run_in_executor(None, engine.close)
    send(("stats", dict(engine.stats)))


def main(argv: Sequence[str]) -> None:
    """`python -m openelb.speaker.vip_process PIPE_FD`."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(int(argv[0]))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(conn))


if __name__ == "__main__":
    main(sys.argv[1:])
