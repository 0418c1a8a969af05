"""/readyz answers while the controller is still setting up its webhook certificate."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest

from openelb.controller import main as cmain


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StuckCerts:
    """A certificate setup that never finishes (an apiserver slow to answer)."""

    started = asyncio.Event()

    def __init__(self, *_args: Any) -> None:
        pass

    async def ensure(self) -> None:
        StuckCerts.started.set()
        await asyncio.Event().wait()


class NoClient:
    async def close(self) -> None:
        pass


def test_readyz_during_certificate_setup_says_not_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cmain, "CertManager", StuckCerts)
    monkeypatch.setattr(cmain, "async_client", lambda *_a, **_k: NoClient())
    port = free_port()
    opts = cmain.ControllerOptions(metrics_addr=f"127.0.0.1:{port}", webhook_addr="127.0.0.1:0")

    async def scenario() -> tuple[int, str]:
        StuckCerts.started = asyncio.Event()
        task = asyncio.create_task(cmain.run(opts))
        await asyncio.wait_for(StuckCerts.started.wait(), 10)
        try:
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                return resp.status, await resp.text()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    status, text = asyncio.run(scenario())
    assert (status, text) == (503, "setting up the webhook certificate")  # was a NameError: 500
