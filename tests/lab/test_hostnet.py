"""The speaker's netlink side in a private namespace: `can_reach:` follows a route that moves,
kernel events reach the loop (but not those of our own address writes), and queued address
changes end as the last word per IP."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = [pytest.mark.root]

NS = "ohostnet-t"
SCRIPT = r"""
import asyncio, json, subprocess
from openelb.speaker import hostnet

def ip(*args):
    subprocess.run(["ip", *args], check=True)

async def main():
    out = {}
    loop = asyncio.get_running_loop()
    for dev in ("a0", "b0"):
        ip("link", "add", dev, "type", "bridge"); ip("link", "set", dev, "up")
    ip("addr", "add", "198.18.200.1/24", "dev", "a0")
    ip("addr", "add", "198.18.201.1/24", "dev", "b0")
    ip("route", "add", "203.0.113.0/24", "via", "198.18.200.2", "onlink", "dev", "a0")
    out["before"] = await loop.run_in_executor(None, hostnet.resolve, "can_reach:203.0.113.9")
    out["subnets"] = [str(n) for n in await loop.run_in_executor(None, hostnet.subnets, "a0")]
    host = await loop.run_in_executor(None, hostnet.HostAddresses)
    fired = asyncio.Event()
    watcher = hostnet.NetWatcher(loop, fired.set, debounce=0.05, ignore_index=host.index)
    for _ in range(100):  # the links' own IPv6 link-local addresses finish DAD first (not ours)
        if not subprocess.run(["ip", "-6", "addr", "show", "tentative"], capture_output=True, text=True).stdout:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    fired.clear()
    for i in range(50):  # our own writes: no news
        host.update("layer2", {f"198.18.202.{i}"}, set())
    host.update("bgp", {"198.18.202.1", "2001:db8::5"}, set())
    host.update("layer2", set(), {"198.18.202.1", "198.18.202.2"})  # .1 stays: bgp still wants it
    assert await loop.run_in_executor(None, host.wait_idle, 10)
    from openelb.speaker.vip_host import VipAddresses
    vip = await loop.run_in_executor(None, VipAddresses)  # marked addresses on a shared link
    vip.hold("a0", [f"198.18.203.{i}" for i in range(30)] + ["2001:db8:203::1"])
    assert await loop.run_in_executor(None, vip.wait_idle, 10)
    vip.release("a0", ["198.18.203.0"])
    assert await loop.run_in_executor(None, vip.wait_idle, 10)
    flap = [f"198.18.205.{i}" for i in range(250)] + [f"198.18.206.{i}" for i in range(250)]
    before = vip.writes
    vip.hold("a0", flap)  # a master that turns backup at once: merged, mostly never written
    vip.release("a0", flap)
    assert await loop.run_in_executor(None, vip.wait_idle, 20)
    out["flap_writes"] = vip.writes - before
    out["flap_left"] = sorted(set(flap) & set(vip.held))
    await asyncio.sleep(0.3)
    out["own_writes_fired"] = fired.is_set()
    await loop.run_in_executor(None, vip.close)
    await asyncio.sleep(0.3)
    fired.clear()
    ip("addr", "add", "198.18.204.1/32", "dev", "a0")  # somebody else's address: news
    await asyncio.wait_for(fired.wait(), 5)
    fired.clear()
    shown = subprocess.run(["ip", "-j", "addr", "show", "dev", "openelb0"], capture_output=True, text=True).stdout
    out["held"] = sorted(a["local"] for link in json.loads(shown) for a in link["addr_info"] if a["scope"] == "global")
    ip("route", "replace", "203.0.113.0/24", "via", "198.18.201.2", "onlink", "dev", "b0")
    await asyncio.wait_for(fired.wait(), 5)
    out["after"] = await loop.run_in_executor(None, hostnet.resolve, "can_reach:203.0.113.9")
    try:
        await loop.run_in_executor(None, hostnet.resolve, "nosuch0")
    except hostnet.InterfaceError as exc:
        out["missing"] = str(exc)
    watcher.close()
    await loop.run_in_executor(None, host.close)
    shown = subprocess.run(["ip", "-j", "addr", "show", "dev", "openelb0"], capture_output=True, text=True).stdout
    out["after_close"] = [a["local"] for link in json.loads(shown) for a in link["addr_info"] if a["scope"] == "global"]
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.fixture
def netns() -> Iterator[str]:
    subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)


def test_netlink_side_of_the_speaker(netns: str) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before"] == "a0" and out["after"] == "b0"  # the route moved, so did the interface
    assert out["subnets"] == ["198.18.200.0/24"]
    assert out["own_writes_fired"] is False
    assert out["flap_left"] == [] and out["flap_writes"] < 400, out["flap_writes"]  # not 1,000
    expected = sorted(["2001:db8::5", *(f"198.18.202.{i}" for i in range(50) if i != 2)])
    assert out["held"] == expected
    assert "nosuch0" in out["missing"]
    assert out["after_close"] == []
