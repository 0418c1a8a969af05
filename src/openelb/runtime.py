"""What both daemons (controller, speaker) need from their process: logging, a bounded graceful
stop, listening sockets that say clearly why they cannot listen, and the plain-HTTP endpoints for
Prometheus and probes.

The probe server is asyncio's own (GET /metrics, /healthz, /readyz, nothing else) rather than
aiohttp: it runs in every speaker on every node, and importing aiohttp's web server costs each
of them ~13 MB of RSS for three fixed answers. The controller's webhook keeps aiohttp.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import threading
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def stop_on_signals(grace_seconds: float) -> asyncio.Event:
    """An Event set by SIGTERM/SIGINT. Graceful shutdown is bounded: after `grace_seconds` the
    process exits anyway, so a hung connection cannot keep a terminating pod (and a leadership or
    an announcement with it) alive."""
    stop = asyncio.Event()

    def request_stop() -> None:
        stop.set()
        timer = threading.Timer(grace_seconds, os._exit, [0])
        timer.daemon = True
        timer.start()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    return stop


class CannotListen(RuntimeError):
    """A port this daemon must own cannot be bound: say which, and what to do, instead of a traceback."""

    def __init__(self, what: str, where: str, exc: OSError) -> None:
        hint = (
            "Another process holds it, most likely a second copy of this daemon on the same node or "
            "network namespace: stop that one, or move this one with its address/port option"
            if exc.errno == errno.EADDRINUSE
            else "Check the address/port option (the address must be one of this host's)"
        )
        super().__init__(f"cannot listen on {where} ({what}): {exc.strerror or exc}. {hint}")


def run_daemon(main: Coroutine[Any, Any, None], log: logging.Logger) -> None:
    """Run a daemon's main coroutine; a port it cannot bind ends it with one line and status 1."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)  # no-op when the CLI configured it
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    try:
        asyncio.run(main)
    except CannotListen as exc:
        log.error("%s", exc)
        raise SystemExit(1) from exc


def split_addr(addr: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all addresses)."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - a pod's port listens on all addresses


PROBE_HEAD_LIMIT = 8192
"""Longest request head accepted; Prometheus and kubelet send a few hundred bytes."""
PROBE_TIMEOUT = 10.0
"""A client that has not sent its request head by then is dropped (a slowloris holds nothing)."""


class ProbeServer:
    """/metrics, /healthz and /readyz over HTTP/1.1, one request per connection. The answers are
    computed on the event loop, as the collectors expect (they read the daemon's state)."""

    def __init__(self, registry: CollectorRegistry, ready: Callable[[], str | None] | None) -> None:
        self.registry = registry
        self.ready = ready
        self.server: asyncio.Server | None = None
        self.bad_requests = 0

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.sockets
        return int(self.server.sockets[0].getsockname()[1])

    def answer(self, head: bytes) -> tuple[HTTPStatus, bytes, str]:
        """(status, body, content type) for one request head: the pure part, tested alone."""
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.bad_requests += 1
            return HTTPStatus.BAD_REQUEST, b"bad request\n", "text/plain"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target not in (b"/metrics", b"/healthz", b"/readyz"):
            return HTTPStatus.NOT_FOUND, b"not found: try /metrics, /healthz or /readyz\n", "text/plain"
        if method not in (b"GET", b"HEAD"):
            return HTTPStatus.METHOD_NOT_ALLOWED, b"only GET\n", "text/plain"
        if target == b"/metrics":
            return HTTPStatus.OK, generate_latest(self.registry), CONTENT_TYPE_LATEST
        reason = self.ready() if self.ready and target == b"/readyz" else None
        if reason:
            return HTTPStatus.SERVICE_UNAVAILABLE, reason.encode(), "text/plain"
        return HTTPStatus.OK, b"ok", "text/plain"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError):
                head = b""  # too long, or closed before the end of its head: 400
            status, body, ctype = self.answer(head)
            if head.startswith(b"HEAD "):
                length, body = len(body), b""
            else:
                length = len(body)
            writer.write(
                f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {length}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            async with asyncio.timeout(PROBE_TIMEOUT):
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def cleanup(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def serve_metrics(
    registry: CollectorRegistry, addr: str, ready: Callable[[], str | None] | None = None
) -> ProbeServer:
    """/metrics, /healthz and /readyz (`ready` returns why not ready, or None)."""
    probes = ProbeServer(registry, ready)
    host, port = split_addr(addr)
    try:
        probes.server = await asyncio.start_server(probes._serve, host, port, limit=PROBE_HEAD_LIMIT)
    except OSError as exc:
        shown = f"[{host}]" if ":" in host else host
        raise CannotListen("metrics and probes", f"TCP {shown}:{port}", exc) from exc
    return probes
