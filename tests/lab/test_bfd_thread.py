"""BFD keeps its session Up while the speaker's event loop is stalled by CPU work (the reason it
runs on a thread of its own): two BfdManagers at 100 ms x 3 in two namespaces joined by a veth;
one stalls its main loop for 400 ms at a time, longer than the 300 ms detection time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = [pytest.mark.root]

A, B = "obfd-a", "obfd-b"
PEER = r"""
import asyncio, json, sys, time
from openelb.speaker.bgp.bfd import BfdManager
from openelb.speaker.bgp.config import BfdConfig

async def main(peer: str, stall: bool, seconds: float) -> None:
    changes = []
    bfd = BfdManager(lambda address, state: changes.append(state))
    bfd.configure({peer: BfdConfig(100, 100, 3)})
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(0.05)
        if stall:  # a big Kubernetes list being decoded: the loop holds the CPU for 400 ms
            end = time.monotonic() + 0.4
            while time.monotonic() < end:
                sum(range(1000))
    print(json.dumps({"changes": changes, "bad": bfd.bad_packets}))
    bfd.close()

asyncio.run(main(sys.argv[1], sys.argv[2] == "stall", float(sys.argv[3])))
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture
def pair() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    for ns in (A, B):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    try:
        sh("ip", "netns", "add", A)
        sh("ip", "netns", "add", B)
        sh("ip", "link", "add", "bfda", "netns", A, "type", "veth", "peer", "name", "bfdb", "netns", B)
        sh("ip", "-n", A, "addr", "add", "192.0.2.1/24", "dev", "bfda")
        sh("ip", "-n", B, "addr", "add", "192.0.2.2/24", "dev", "bfdb")
        for ns, dev in ((A, "bfda"), (B, "bfdb")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield
    finally:
        for ns in (A, B):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def test_bfd_survives_a_stalled_main_loop(pair: None) -> None:
    seconds = "6"
    procs = [
        subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", PEER, peer, mode, seconds],
            stdout=subprocess.PIPE,
            text=True,
        )
        for ns, peer, mode in ((A, "192.0.2.2", "stall"), (B, "192.0.2.1", "calm"))
    ]
    try:
        out = [json.loads(p.communicate(timeout=30)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    stalled, calm = out
    assert calm["changes"] == ["up"], f"the calm side saw {calm['changes']}: BFD flapped"
    assert stalled["changes"] == ["up"], stalled
