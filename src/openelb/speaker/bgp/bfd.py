"""BFD sessions to BGP peers on a thread of their own.

BFD runs its own event loop in a dedicated thread: decoding a large Kubernetes list on the
speaker's loop can stall it for hundreds of milliseconds, which would flap a 100 ms x 3 session
(measured in python-stack.md §4.3). State changes go back to the speaker's loop through
`call_soon_threadsafe`. Packets are sent with TTL 255 from a port in 49152-65535 and only packets
that arrive with TTL 255 are accepted (RFC 5881 §5).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import threading
from collections.abc import Callable, Mapping

from openelb.protocols import bfd
from openelb.speaker.bgp.config import BfdConfig

log = logging.getLogger("openelb.bfd")
IP_RECVTTL = 12
"""linux/in.h; not in Python's socket module."""


class BfdManager:
    def __init__(self, on_state: Callable[[str, str], None], port: int = bfd.PORT) -> None:
        self._on_state = on_state
        self._main = asyncio.get_running_loop()
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sessions: dict[str, tuple[bfd.BfdSession, socket.socket, BfdConfig]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._rx: list[socket.socket] = []
        self.bad_packets = 0
        self._closed = False

    def configure(self, peers: Mapping[str, BfdConfig]) -> None:
        if (not peers and self._thread is None) or self._closed:
            return
        if self._thread is None:
            ready = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(ready,), name="openelb-bfd", daemon=True)
            self._thread.start()
            ready.wait(5)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._apply, dict(peers))

    def close(self) -> None:
        self._closed = True
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._shutdown)
            self._thread.join(2)

    # ---- the BFD thread -----------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):  # noqa: S104 - node port
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
                sock.bind((host, self._port))
                sock.setblocking(False)
            except OSError as exc:
                log.error("BFD: cannot listen on [%s]:%d: %s", host, self._port, exc)
                sock.close()
                continue
            loop.add_reader(sock.fileno(), self._receive, sock)
            self._rx.append(sock)
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _shutdown(self) -> None:
        assert self._loop is not None
        for address in list(self._sessions):
            self._remove(address)
        for sock in self._rx:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._loop.stop()

    def _apply(self, peers: dict[str, BfdConfig]) -> None:
        for address in list(self._sessions):
            if address not in peers or peers[address] != self._sessions[address][2]:
                self._remove(address)
        for address, cfg in peers.items():
            if address not in self._sessions:
                self._add(address, cfg)

    def _add(self, address: str, cfg: BfdConfig) -> None:
        assert self._loop is not None
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
        for _ in range(32):  # source port from the range RFC 5881 §4 prescribes
            try:
                sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", random.randint(49152, 65535)))  # noqa: S104, S311
                break
            except OSError:
                continue
        sock.setblocking(False)
        discr = random.randint(1, 2**32 - 1)  # noqa: S311 - a session identifier, not a secret
        session = bfd.BfdSession(discr, cfg.min_tx_ms * 1000, cfg.min_rx_ms * 1000, cfg.multiplier, self._loop.time())
        self._sessions[address] = (session, sock, cfg)
        self._schedule(address)

    def _remove(self, address: str) -> None:
        session, sock, _cfg = self._sessions.pop(address)
        timer = self._timers.pop(address, None)
        if timer:
            timer.cancel()
        session.state = bfd.BfdState.ADMIN_DOWN
        session.diag = bfd.DIAG_ADMIN_DOWN
        with contextlib.suppress(OSError):
            sock.sendto(session.packet().encode(), (address, self._port))
        sock.close()

    def _schedule(self, address: str) -> None:
        assert self._loop is not None
        entry = self._sessions.get(address)
        if entry is None:
            return
        old = self._timers.pop(address, None)
        if old:
            old.cancel()
        self._timers[address] = self._loop.call_at(entry[0].next_deadline(), self._tick, address)

    def _tick(self, address: str) -> None:
        entry = self._sessions.get(address)
        if entry is None:
            return
        session, sock, _cfg = entry
        assert self._loop is not None
        pkt, changed = session.tick(self._loop.time())
        if pkt is not None:
            with contextlib.suppress(OSError):
                sock.sendto(pkt.encode(), (address, self._port))
        if changed is not None:
            self._report(address, changed)
        self._schedule(address)

    def _receive(self, sock: socket.socket) -> None:
        assert self._loop is not None
        try:
            data, ancdata, _flags, src = sock.recvmsg(512, socket.CMSG_SPACE(4))
        except OSError:
            return
        ttl = next((int.from_bytes(d[:4], "little") for _l, _t, d in ancdata), None)
        address = str(ipaddress.ip_address(src[0].split("%")[0]))
        entry = self._sessions.get(address)
        if entry is None or ttl != 255:
            self.bad_packets += 1
            return
        try:
            pkt = bfd.decode(data)
        except bfd.BfdError:
            self.bad_packets += 1
            return
        session, tx, _cfg = entry
        changed = session.receive(pkt, self._loop.time())
        if session.reply_due:
            with contextlib.suppress(OSError):
                tx.sendto(session.packet().encode(), (address, self._port))
        if changed is not None:
            self._report(address, changed)
            self._schedule(address)

    def _report(self, address: str, state: bfd.BfdState) -> None:
        name = "up" if state == bfd.BfdState.UP else "down" if state == bfd.BfdState.DOWN else "init"
        log.info("BFD %s: %s", address, name)
        if name != "init":
            self._main.call_soon_threadsafe(self._on_state, address, name)
