"""The Event recorder: queued and in order, one request in flight, repeats aggregated, bounded."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from openelb.kube import events
from openelb.kube.events import EventRecorder, Target


class _SlowApi:
    """Records every Event write; each waits for `gate`, like a saturated apiserver."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls: list[tuple[str, Any]] = []
        self.in_flight = self.most_in_flight = 0

    async def _call(self, what: str, obj: Any) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await self.gate.wait()
        self.calls.append((what, obj))
        self.in_flight -= 1

    async def create(self, obj: Any) -> None:
        await self._call("create", obj)

    async def patch(self, _res: Any, name: str, body: Any, **_: Any) -> None:
        await self._call("patch", (name, body["count"]))


def _svc(name: str) -> Target:
    return Target("Service", name, "ns", f"uid-{name}")


def test_emit_returns_at_once_and_events_go_out_in_order_one_at_a_time() -> None:
    async def scenario() -> _SlowApi:
        api = _SlowApi()
        rec = EventRecorder(api, "test")  # type: ignore[arg-type]
        for name in ("a", "b", "c"):
            rec.emit(_svc(name), "Normal", "AssignIP", "ok")  # the API is stuck: emit only queues
        rec.emit(_svc("a"), "Normal", "AssignIP", "ok")  # a repeat: aggregated into a's Event
        api.gate.set()
        await asyncio.wait_for(rec.flush(), 2)
        return api

    api = asyncio.run(scenario())
    assert [c[0] for c in api.calls] == ["create", "create", "create", "patch"]
    assert [c[1].involvedObject.name for c in api.calls[:3]] == ["a", "b", "c"]
    assert api.calls[3][1][0] == api.calls[0][1].metadata.name and api.calls[3][1][1] == 2
    assert api.most_in_flight == 1


def test_a_full_queue_drops_the_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "MAX_PENDING", 2)

    async def scenario() -> tuple[_SlowApi, int]:
        api = _SlowApi()
        rec = EventRecorder(api, "test")  # type: ignore[arg-type]
        for name in ("a", "b", "c", "d"):
            rec.emit(_svc(name), "Normal", "AssignIP", "ok")
            await asyncio.sleep(0)  # the sender takes "a" and waits on the API with it
        api.gate.set()
        await asyncio.wait_for(rec.flush(), 2)
        return api, rec.dropped

    api, dropped = asyncio.run(scenario())
    assert [c[1].involvedObject.name for c in api.calls] == ["a", "c", "d"] and dropped == 1
