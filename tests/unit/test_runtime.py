"""A daemon whose port is taken says which port and what to do, instead of a traceback."""

import asyncio
import socket

import pytest
from prometheus_client import CollectorRegistry

from openelb.runtime import CannotListen, serve_metrics


def test_metrics_port_taken_names_the_port_and_the_likely_cause() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]

        async def start() -> None:
            runner = await serve_metrics(CollectorRegistry(), f"127.0.0.1:{port}")
            await runner.cleanup()

        with pytest.raises(CannotListen) as err:
            asyncio.run(start())
    text = str(err.value)
    assert f"TCP 127.0.0.1:{port}" in text and "metrics" in text and "second copy" in text


def test_an_address_not_on_this_host_gets_another_hint() -> None:
    async def start() -> None:
        runner = await serve_metrics(CollectorRegistry(), "192.0.2.1:1")  # TEST-NET-1: never ours
        await runner.cleanup()

    with pytest.raises(CannotListen) as err:
        asyncio.run(start())
    assert "cannot listen on TCP 192.0.2.1:1" in str(err.value) and "second copy" not in str(err.value)
