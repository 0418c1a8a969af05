"""Heartbeats run in their own process: a stalled event loop does not make peers look dead (and
the stall is noticed and counted)."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from openelb.speaker.liveness import Heartbeats

KEY = b"test-key"


def busy(seconds: float) -> int:
    """Pure-Python work holding the loop (as a big relist or a full recompute would)."""
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        n += sum(range(200))
    return n


def test_a_blocked_loop_neither_delays_heartbeats_nor_expires_peers() -> None:
    async def scenario() -> tuple[list[frozenset[str]], float, float]:
        loop = asyncio.get_running_loop()
        seen: list[frozenset[str]] = []
        regs = [CollectorRegistry(), CollectorRegistry()]
        port = 17946
        a = Heartbeats("a", [KEY], port=port, interval=0.05, dead_after=0.2, loop=loop, on_change=seen.append,
                       registry=regs[0], bind="127.0.0.1")  # fmt: skip
        b = Heartbeats("b", [KEY], port=port, interval=0.05, dead_after=0.2, loop=loop, on_change=lambda _s: None,
                       registry=regs[1], bind="127.0.0.2")  # fmt: skip
        a.peers, b.peers = ("127.0.0.2",), ("127.0.0.1",)
        a.ready = b.ready = True
        a.start()
        b.start()
        try:
            for _ in range(100):  # until a hears b
                await asyncio.sleep(0.02)
                if "b" in a.alive:
                    break
            assert "b" in a.alive
            busy(2.5)  # 2.5 s without yielding to the loop: 12x dead_after
            await asyncio.sleep(0.6)  # let the thread's notifications and the next tick run
            assert a.stalls == 1, "the blocked loop was not noticed"
            expired = regs[0].get_sample_value("openelb_speaker_peers_expired_total") or 0.0
            count = regs[0].get_sample_value("openelb_speaker_heartbeat_lateness_seconds_count") or 0.0
            late = count - (
                regs[0].get_sample_value("openelb_speaker_heartbeat_lateness_seconds_bucket", {"le": "0.05"}) or 0.0
            )
            return seen, expired, late
        finally:
            a.close()
            b.close()

    seen, expired, late = asyncio.run(scenario())
    assert expired == 0, "a peer expired while only the event loop was busy"
    assert all("b" in s for s in seen[-1:]), seen
    assert late == 0, f"{late} heartbeat rounds went out more than 50 ms late"


def test_keys_rotate_live_without_a_peer_expiring() -> None:
    """Rotation through the real child processes: accept both, sign with the new one, drop the old."""

    async def scenario() -> tuple[float, float, bool]:
        loop = asyncio.get_running_loop()
        regs = [CollectorRegistry(), CollectorRegistry()]
        kw = {"port": 17947, "interval": 0.05, "dead_after": 0.2, "loop": loop, "on_change": lambda _s: None}
        a = Heartbeats("a", [b"old"], registry=regs[0], bind="127.0.0.1", **kw)  # type: ignore[arg-type]
        b = Heartbeats("b", [b"old"], registry=regs[1], bind="127.0.0.2", **kw)  # type: ignore[arg-type]
        a.peers, b.peers = ("127.0.0.2",), ("127.0.0.1",)
        a.ready = b.ready = True
        a.start()
        b.start()
        try:
            for _ in range(100):
                await asyncio.sleep(0.02)
                if "b" in a.alive and "a" in b.alive:
                    break
            for ka, kb in (([b"old", b"new"], [b"old", b"new"]), ([b"new", b"old"], [b"old", b"new"]),
                           ([b"new", b"old"], [b"new", b"old"]), ([b"new"], [b"new"])):  # fmt: skip
                a.keys, b.keys = ka, kb
                await asyncio.sleep(0.3)
            await asyncio.sleep(1.1)  # a report period
            expired = sum(r.get_sample_value("openelb_speaker_peers_expired_total") or 0.0 for r in regs)
            garbage = sum(
                r.get_sample_value("openelb_speaker_heartbeats_refused_total", {"reason": "garbage"}) or 0.0
                for r in regs
            )
            return expired, garbage, "b" in a.alive and "a" in b.alive
        finally:
            a.close()
            b.close()

    expired, garbage, both = asyncio.run(scenario())
    assert both and expired == 0 and garbage == 0, (both, expired, garbage)
