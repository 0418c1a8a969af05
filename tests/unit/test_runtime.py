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


async def _ask(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    return answer


def test_probe_server_answers_metrics_health_and_readiness() -> None:
    from prometheus_client import Counter

    registry = CollectorRegistry()
    Counter("probe_test_hits", "a counter the scrape must show", registry=registry).inc(3)
    why: list[str] = ["syncing caches"]

    async def scenario() -> None:
        probes = await serve_metrics(registry, "127.0.0.1:0", lambda: why[0] if why else None)
        try:
            metrics = await _ask(probes.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
            assert metrics.startswith(b"HTTP/1.1 200 OK\r\n") and b"probe_test_hits_total 3.0" in metrics
            head, body = metrics.split(b"\r\n\r\n", 1)
            assert f"Content-Length: {len(body)}".encode() in head
            assert (await _ask(probes.port, b"GET /healthz HTTP/1.1\r\n\r\n")).endswith(b"\r\n\r\nok")
            not_ready = await _ask(probes.port, b"GET /readyz?verbose HTTP/1.1\r\n\r\n")
            assert not_ready.startswith(b"HTTP/1.1 503 ") and not_ready.endswith(b"\r\n\r\nsyncing caches")
            why.clear()
            assert (await _ask(probes.port, b"GET /readyz HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
            head_only = await _ask(probes.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
            assert head_only.startswith(b"HTTP/1.1 200 ") and head_only.endswith(b"\r\n\r\n")
            assert (await _ask(probes.port, b"GET /other HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
            assert (await _ask(probes.port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405 ")
        finally:
            await probes.cleanup()

    asyncio.run(scenario())


def test_probe_server_refuses_garbage_and_drops_slow_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    import openelb.runtime

    monkeypatch.setattr(openelb.runtime, "PROBE_TIMEOUT", 0.3)

    async def scenario() -> None:
        probes = await serve_metrics(CollectorRegistry(), "127.0.0.1:0")
        try:
            assert (await _ask(probes.port, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
            huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
            assert (await _ask(probes.port, huge)).startswith(b"HTTP/1.1 400 ")
            reader, writer = await asyncio.open_connection("127.0.0.1", probes.port)
            writer.write(b"GET /metr")  # and never the rest: dropped after the timeout
            async with asyncio.timeout(3):
                assert await reader.read() == b""
            writer.close()
            assert probes.bad_requests == 2
            assert (await _ask(probes.port, b"GET /healthz HTTP/1.1\r\n\r\n")).endswith(b"ok")  # still serving
        finally:
            await probes.cleanup()

    asyncio.run(scenario())
