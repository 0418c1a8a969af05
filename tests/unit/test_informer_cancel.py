"""An informer cancelled while its stream fails on close still ends (the chaos soak found a fenced
leader hanging forever: its informers swallowed the cancellation and retried a closed client)."""

from __future__ import annotations

import asyncio
from typing import Any

from lightkube.resources.core_v1 import Service

from openelb.kube.informer import Informer


class Listing:
    resourceVersion = "1"

    def __aiter__(self) -> Listing:
        return self

    async def __anext__(self) -> Any:
        raise StopAsyncIteration


class Stream:
    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        await asyncio.Event().wait()  # a quiet watch

    async def aclose(self) -> None:
        raise RuntimeError("Cannot send a request, as the client has been closed.")


class Client:
    def list(self, *args: Any, **kwargs: Any) -> Listing:
        return Listing()

    def watch(self, *args: Any, **kwargs: Any) -> Stream:
        return Stream()


def test_cancel_ends_the_informer_even_if_closing_its_stream_fails() -> None:
    async def scenario() -> bool:
        inf: Informer[Service] = Informer(Client(), Service, lambda _k: None)  # type: ignore[arg-type]
        task = asyncio.create_task(inf.run())
        await asyncio.wait_for(inf.synced.wait(), 5)
        await asyncio.sleep(0.05)  # in the watch now
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        return task in done and task.cancelled()

    loop = asyncio.new_event_loop()  # not asyncio.run: its cleanup would wait forever for such a task
    try:
        ended = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert ended, "the informer kept running after cancel()"
