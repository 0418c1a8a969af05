"""TCP for BGP: sockets with TCP-MD5 (RFC 2385) and TTL set before connect/listen, and the
asyncio protocol that feeds a sans-IO `Session` and runs its timers."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable

from openelb.protocols.bgp import session as bgp

log = logging.getLogger("openelb.bgp")
TCP_MD5SIG = 14
"""linux/tcp.h; Python has no constant for it."""
TCP_MD5SIG_MAXKEYLEN = 80


def md5sig(address: str, password: str) -> bytes:
    """`struct tcp_md5sig` (216 bytes): the peer's sockaddr_storage, flags, prefix length, key."""
    ip = ipaddress.ip_address(address)
    key = password.encode()
    if len(key) > TCP_MD5SIG_MAXKEYLEN:
        raise ValueError(f"TCP-MD5 key longer than {TCP_MD5SIG_MAXKEYLEN} bytes")
    if ip.version == 4:
        sa = struct.pack("=H", socket.AF_INET) + struct.pack("!H4s", 0, ip.packed)
    else:
        sa = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI16sI", 0, 0, ip.packed, 0)
    return sa.ljust(128, b"\x00") + struct.pack("=BBHI", 0, 0, len(key), 0) + key.ljust(TCP_MD5SIG_MAXKEYLEN, b"\x00")


def set_md5(sock: socket.socket, address: str, password: str) -> None:
    """Set (or, with an empty password, remove) the key for one peer address on `sock`."""
    peer = address
    if sock.family == socket.AF_INET6 and ipaddress.ip_address(address).version == 4:
        peer = f"::ffff:{address}"
    sock.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, md5sig(peer, password))


def set_ttl(sock: socket.socket, ttl: int) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)


async def connect(address: str, port: int, password: str, ttl: int | None, limit: float) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if password:
            set_md5(sock, address, password)
        if ttl:
            set_ttl(sock, ttl)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (address, port)), limit)
    except BaseException:
        sock.close()
        raise
    return sock


class Connection(asyncio.Protocol):
    """One TCP connection carrying one `Session`. `on_event` gets the session's events, and
    `on_closed` fires exactly once, after the socket is gone."""

    def __init__(
        self,
        session: bgp.Session,
        outbound: bool,
        on_event: Callable[[Connection, bgp.Event], None],
        on_closed: Callable[[Connection], None],
    ) -> None:
        self.session = session
        self.outbound = outbound
        self.transport: asyncio.Transport | None = None
        self._on_event = on_event
        self._on_closed = on_closed
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        with contextlib.suppress(OSError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.session.start(self.loop.time())
        self._after([])

    def data_received(self, data: bytes) -> None:
        self._after(self.session.receive_data(data, self.loop.time()))

    def connection_lost(self, exc: Exception | None) -> None:
        events = self.session.connection_lost(f"connection lost: {exc}" if exc else "connection closed by peer")
        self._finish(events)

    def _tick(self) -> None:
        self._timer = None
        self._after(self.session.tick(self.loop.time()))

    def poke(self) -> None:
        """Write what the session queued outside a callback (new routes, a close)."""
        self._after([])

    def _after(self, events: list[bgp.Event]) -> None:
        if self._done:
            return
        out = self.session.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)
        for ev in events:
            self._on_event(self, ev)
        if self.session.state == bgp.State.IDLE:
            if self.transport is not None:
                self.transport.close()  # flushes a queued NOTIFICATION first
            self._finish([])
            return
        if self._timer is not None:
            self._timer.cancel()
        deadline = self.session.next_deadline()
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._tick)

    def abort(self) -> None:
        """Drop the connection without a NOTIFICATION (graceful restart)."""
        self.session.abandon()
        if self.transport is not None:
            self.transport.abort()
        self._finish([])

    def _finish(self, events: list[bgp.Event]) -> None:
        for ev in events:
            self._on_event(self, ev)
        if self._done:
            return
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
        self._on_closed(self)
