"""A leader paused past its lease cannot write when it wakes (issue 14, chaos: fencing)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from openelb.kube.leader import FencedClient, LeaseElector, LostLeadership


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def patch(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append("patch")
        return "patched"

    async def get(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append("get")
        return "got"


def test_writes_pass_while_the_lease_is_fresh_and_are_refused_after_a_pause() -> None:
    inner = Recorder()
    elector = LeaseElector(inner, "openelb-controller", "ns", "me", renew_deadline=10)  # type: ignore[arg-type]
    fenced = FencedClient(inner, elector)  # type: ignore[arg-type]

    async def scenario() -> None:
        with pytest.raises(LostLeadership):  # a standby never writes
            await fenced.patch("x")
        elector.leading, elector._renewed_at = True, time.monotonic()
        assert await fenced.patch("x") == "patched"
        elector._renewed_at = time.monotonic() - 11  # as after SIGSTOP past the renew deadline
        with pytest.raises(LostLeadership, match="patch"):
            await fenced.patch("x")
        assert await fenced.get("x") == "got"  # reads still pass

    asyncio.run(scenario())
    assert inner.calls == ["patch", "get"] and elector.fenced == 2
