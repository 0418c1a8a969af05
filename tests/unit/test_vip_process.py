"""VIP mode's VRRP process (issue 12: the routers off the speaker's GIL): it starts, reports its
counters, and ends with its pipe — told to stop, or its speaker gone without a word — leaving
nothing running. Unprivileged: no router is configured, so no raw socket is opened."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from openelb.speaker.vip_process import VipProcess


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_it_reports_and_stops_when_told() -> None:
    async def scenario() -> None:
        vip = VipProcess(asyncio.get_running_loop(), lambda *a: None, None)
        vip.start()
        await asyncio.wait_for(vip.talking.wait(), 10)  # its first report
        assert vip._proc is not None
        pid = vip._proc.pid
        await asyncio.get_running_loop().run_in_executor(None, vip.close)
        assert vip._proc.returncode == 0
        assert not _alive(pid)

    asyncio.run(scenario())


def test_it_ends_when_its_speaker_is_killed(tmp_path: Path) -> None:
    """A SIGKILLed speaker cannot say stop: the closed pipe says it (and SIGTERM is ignored)."""
    script = tmp_path / "speaker.py"
    script.write_text(
        textwrap.dedent("""
        import asyncio, sys
        from openelb.speaker.vip_process import VipProcess
        async def main():
            vip = VipProcess(asyncio.get_running_loop(), lambda *a: None, None)
            vip.start()
            await asyncio.wait_for(vip.talking.wait(), 10)  # up, its SIGTERM disposition set
            print(vip._proc.pid, flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
    """)
    )
    speaker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert speaker.stdout is not None
        child = int(speaker.stdout.readline())
        os.kill(child, signal.SIGTERM)  # a process-group SIGTERM: ignored, the speaker decides
        time.sleep(0.5)
        assert _alive(child)
        speaker.kill()
        speaker.wait(5)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the VRRP process outlived its speaker"
    finally:
        speaker.kill()


def test_a_dead_vrrp_process_is_started_again() -> None:
    async def scenario() -> None:
        vip = VipProcess(asyncio.get_running_loop(), lambda *a: None, None)
        vip.start()
        await asyncio.wait_for(vip.talking.wait(), 10)
        assert vip._proc is not None
        first = vip._proc.pid
        vip.talking.clear()
        os.kill(first, signal.SIGKILL)
        await asyncio.wait_for(vip.talking.wait(), 15)  # a new one reports
        assert vip.restarts == 1 and vip._proc.pid != first and _alive(vip._proc.pid)
        await asyncio.get_running_loop().run_in_executor(None, vip.close)
        assert not _alive(vip._proc.pid)

    asyncio.run(scenario())
