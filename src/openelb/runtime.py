"""What both daemons (controller, speaker) need from their process: logging, a bounded graceful
stop, listening sockets that say clearly why they cannot listen, and the plain-HTTP endpoints for
Prometheus and probes."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    try:
        asyncio.run(main)
    except CannotListen as exc:
        log.error("%s", exc)
        raise SystemExit(1) from exc


async def start_site(runner: web.AppRunner, what: str, host: str, port: int, ssl_context: Any = None) -> web.AppRunner:
    """Listen on host:port with an AppRunner already set up (cleaned up if that fails)."""
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except OSError as exc:
        await runner.cleanup()
        shown = f"[{host}]" if ":" in host else host
        raise CannotListen(what, f"TCP {shown}:{port}", exc) from exc
    return runner


def split_addr(addr: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all addresses)."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - a pod's port listens on all addresses


async def serve_metrics(
    registry: CollectorRegistry, addr: str, ready: Callable[[], str | None] | None = None
) -> web.AppRunner:
    """/metrics, /healthz and /readyz (`ready` returns why not ready, or None)."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        reason = ready() if ready else None
        return web.Response(status=503, text=reason) if reason else web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = split_addr(addr)
    return await start_site(runner, "metrics and probes", host, port)
