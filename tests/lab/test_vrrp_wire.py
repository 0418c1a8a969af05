"""VIP mode's VRRP engine on a real link against Debian's keepalived (no Kubernetes): our adverts
keep a lower-priority keepalived BACKUP, it becomes MASTER when our routers are gone and yields
when one returns; failover between our routers; a restarted speaker removes what a killed one
left; hostile adverts are counted and change nothing. IPv4 and IPv6.

Namespaces: a switch (`ovw-sw`, one bridge), two of our routers (`ovw-a`, `ovw-b`), keepalived
(`ovw-k`) and a client (`ovw-c`); all torn down at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root]

SW, HOSTS = "ovw-sw", {"a": 1, "b": 2, "k": 3, "c": 9}
VIP4, VIP6 = "198.18.50.10", "2001:db8:51::10"
VRID = 51

ENGINE = (
    r"""
import asyncio, ipaddress, json, signal, sys
from openelb.speaker.vip import VipEngine
from openelb.speaker.vip_host import VipAddresses
from openelb.speaker.vip_plan import RouterConfig

prio = int(sys.argv[1])
def say(**kw):
    print(json.dumps(kw), flush=True)

async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    host = await loop.run_in_executor(None, VipAddresses)
    say(event="started", removed_stale=host.removed_stale)
    engine = VipEngine(lambda key, cfg, master: say(event="master" if master else "backup", family=cfg.family), host)
    engine.configure({
        ("e", "c0"): RouterConfig("e", "c0", %(vrid)d, 4, "eth0", ("%(vip4)s",), prio, 10, "a"),
        ("e6", "c0"): RouterConfig("e6", "c0", %(vrid)d, 6, "eth0", ("%(vip6)s",), prio, 10, "a"),
    })
    await stop.wait()
    engine.close()
    await loop.run_in_executor(None, host.close)
    say(event="stopped", stats=dict(engine.stats))

asyncio.run(main())
""".replace("%(vrid)d", str(VRID))
    .replace("%(vip4)s", VIP4)
    .replace("%(vip6)s", VIP6)
)

KEEPALIVED = """
global_defs {{ router_id ovw-k }}
vrrp_instance v4 {{
    state BACKUP
    interface eth0
    virtual_router_id {vrid}
    priority 50
    advert_int 0.1
    version 3
    virtual_ipaddress {{ {vip4}/32 }}
}}
vrrp_instance v6 {{
    state BACKUP
    interface eth0
    virtual_router_id {vrid}
    priority 50
    advert_int 0.1
    version 3
    virtual_ipaddress {{ {vip6}/128 }}
}}
"""


def ns(name: str) -> str:
    return f"ovw-{name}"


def run(netns: str, *argv: str, check: bool = True) -> str:
    out = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=20, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"{argv} in {netns}: {out.stderr}")
    return out.stdout


def holds(host: str) -> set[str]:
    shown = json.loads(run(ns(host), "ip", "-j", "addr", "show", "dev", "eth0"))
    return {a["local"] for link in shown for a in link["addr_info"]} & {VIP4, VIP6}


def wait_for(what: str, cond: object, timeout: float = 10.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def segment() -> Iterator[None]:
    # Not a skip: scripts/setup installs it, and a missing install step must fail, not hide.
    assert shutil.which("keepalived"), "keepalived missing: run scripts/setup (it installs Debian's keepalived)"
    names = [SW] + [ns(h) for h in HOSTS]
    for n in names:
        subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)
    try:
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True)
        run(SW, "ip", "link", "add", "br0", "type", "bridge")
        run(SW, "ip", "link", "set", "br0", "up")
        for h, i in HOSTS.items():
            run(SW, "ip", "link", "add", f"p-{h}", "type", "veth", "peer", "name", "eth0", "netns", ns(h))
            run(SW, "ip", "link", "set", f"p-{h}", "master", "br0", "up")
            run(ns(h), "ip", "link", "set", "lo", "up")
            run(ns(h), "ip", "addr", "add", f"203.0.113.{i}/24", "dev", "eth0")
            run(ns(h), "ip", "addr", "add", f"2001:db8:50::{i}/64", "dev", "eth0", "nodad")
            run(ns(h), "ip", "link", "set", "eth0", "up")
        run(ns("c"), "ip", "route", "add", "198.18.50.0/24", "dev", "eth0")
        run(ns("c"), "ip", "-6", "route", "add", "2001:db8:51::/64", "dev", "eth0")
        # link-local addresses (our IPv6 advert source) need DAD to finish
        wait_for("link-local addresses", lambda: all(
            "tentative" not in run(ns(h), "ip", "-6", "addr", "show", "dev", "eth0") for h in HOSTS))  # fmt: skip
        yield
    finally:
        for n in names:
            with contextlib.suppress(Exception):
                pids = subprocess.run(
                    ["ip", "netns", "pids", n], capture_output=True, text=True, check=False
                ).stdout.split()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)


class Router:
    def __init__(self, host: str, priority: int) -> None:
        self.host = host
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns(host), sys.executable, "-c", ENGINE, str(priority)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.started = json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)

    def stop(self) -> dict[str, int]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        last = json.loads(out.strip().splitlines()[-1])
        assert last["event"] == "stopped"
        return dict(last["stats"])


def test_vrrp_against_keepalived_failover_and_leftovers(segment: None) -> None:
    conf_dir = Path(tempfile.mkdtemp(prefix="ovw-k-"))
    (conf_dir / "keepalived.conf").write_text(KEEPALIVED.format(vrid=VRID, vip4=VIP4, vip6=VIP6))
    keepalived = subprocess.Popen(
        ["ip", "netns", "exec", ns("k"), "keepalived", "--dont-fork", "--log-console", "--vrrp",
         "-f", str(conf_dir / "keepalived.conf"), "-p", str(conf_dir / "k.pid"), "-r", str(conf_dir / "v.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    routers: list[Router] = []
    try:
        # keepalived alone becomes master
        wait_for("keepalived master", lambda: holds("k") == {VIP4, VIP6}, 15)
        a, b = Router("a", 254), Router("b", 253)
        routers += [a, b]
        # ours preempt it (higher priority) and it stays backup, accepting our adverts
        wait_for("a master", lambda: holds("a") == {VIP4, VIP6} and not holds("k") and not holds("b"))
        time.sleep(1.0)  # 10 adverts later: still so (keepalived did not fight back)
        assert holds("a") == {VIP4, VIP6} and holds("k") == set() == holds("b")
        assert run(ns("c"), "ping", "-c1", "-W1", VIP4) and run(ns("c"), "ping", "-6", "-c1", "-W1", VIP6)
        # power-off of the master: b takes over within its master-down interval
        a.kill()
        took = wait_for("b master", lambda: holds("b") == {VIP4, VIP6})
        assert took < 1.0, f"failover took {took:.2f}s"
        assert holds("a") == {VIP4, VIP6}  # killed: the kernel still has them ...
        a2 = Router("a", 254)  # ... and a restarted speaker removes them first
        routers.append(a2)
        assert a2.started["removed_stale"] == 2
        wait_for("a master again", lambda: holds("a") == {VIP4, VIP6} and not holds("b"))
        # every router of ours gone: keepalived takes over, and yields when one returns
        stats = a2.stop()
        assert stats["adverts_sent"] > 0 and stats["adverts_received"] > 0
        assert holds("a") == set()  # a graceful stop leaves nothing behind
        wait_for("b master after a's stop", lambda: holds("b") == {VIP4, VIP6})
        b.stop()
        wait_for("keepalived master", lambda: holds("k") == {VIP4, VIP6})
        a3 = Router("a", 254)
        routers.append(a3)
        wait_for("keepalived yields", lambda: holds("a") == {VIP4, VIP6} and not holds("k"))
        # hostile adverts: wrong TTL and a bad checksum from the client; nothing moves
        bad = r"""
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("203.0.113.9"))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
good = bytes([0x31, VRID, 255, 1, 0, 10, 0, 0]) + socket.inet_aton("VIP4")
s.sendto(good, ("224.0.0.18", 0))  # TTL 1 (and no checksum)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
s.sendto(good, ("224.0.0.18", 0))  # TTL 255, checksum 0: wrong
""".replace("VRID", str(VRID)).replace("VIP4", VIP4)
        run(ns("c"), sys.executable, "-c", bad)
        time.sleep(0.5)
        assert holds("a") == {VIP4, VIP6}
        stats = a3.stop()
        assert stats.get("bad_ttl", 0) >= 1 and stats.get("bad_packet", 0) >= 1, stats
    finally:
        for r in routers:
            if r.proc.poll() is None:
                r.kill()
        keepalived.terminate()
        try:
            keepalived.wait(10)
        except subprocess.TimeoutExpired:
            keepalived.kill()
        shutil.rmtree(conf_dir, ignore_errors=True)
