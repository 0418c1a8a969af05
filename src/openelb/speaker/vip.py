"""VIP mode: the node's VRRPv3 virtual routers (`protocols.vrrp`), run in the VRRP process.

Why in-process and not keepalived (Go OpenELB's way; `docs/vip.md`): the speakers already agree
on every router's VRID, addresses and priorities (`speaker.vip_plan`), so a router is a few
fields, reconfigured per event without rendering a file and reloading a daemon; failover comes
from 100 ms adverts; there is no second process to crash-restart or leave behind.

The engine runs in the speaker's VRRP process (`speaker.vip_process`), on a thread with its own
asyncio loop at real-time priority: adverts every 100 ms and master-down timers must not wait for
the speaker's loop decoding a large Kubernetes list, nor for its interpreter lock. Kept free of
pyroute2 (whose import alone costs ~0.6 s and ~15 MB) so that process starts in a blink: the
advert source comes from an ioctl and /proc/net/if_inet6. Per (interface, family) one
raw socket (IP protocol 112) joined to 224.0.0.18 / ff02::12 sends with TTL/hop limit 255 from the
interface's primary IPv4 / link-local IPv6 address and accepts only TTL 255 (RFC 5798 §7.1).
Becoming master holds the router's addresses on the interface (`host.hold`: in the speaker,
`vip_host`), becoming backup releases them; transitions are reported to `on_state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from openelb.protocols import vrrp
from openelb.speaker.liveness_child import realtime
from openelb.speaker.vip_plan import GroupKey, RouterConfig

log = logging.getLogger("openelb.speaker.vip")
IP_PKTINFO = 8
IP_MULTICAST_ALL = 49
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
SIOCGIFADDR = 0x8915
IF_INET6 = Path("/proc/net/if_inet6")


class Host(Protocol):
    """Where a master's addresses go (`vip_host.VipAddresses`, in the speaker)."""

    def hold(self, ifname: str, ips: Iterable[str]) -> None: ...
    def release(self, ifname: str, ips: Iterable[str]) -> None: ...


@dataclass
class Link:
    ifname: str
    family: int
    index: int
    local: vrrp.Address
    sock: socket.socket


def primary_address(ifname: str, family: int) -> vrrp.Address | None:
    """The source of our adverts: the interface's primary IPv4 address (the node's own: VIPs are
    added after it, as /32 secondaries), or its IPv6 link-local address (RFC 5798 §5.1.2.1)."""
    if family == 4:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                out = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", ifname[:15].encode()))
            except OSError:
                return None
        return ipaddress.IPv4Address(out[20:24])
    with contextlib.suppress(OSError):
        for line in IF_INET6.read_text().splitlines():
            fields = line.split()
            if len(fields) == 6 and fields[5] == ifname and fields[3] == "20":  # scope link
                return ipaddress.IPv6Address(bytes.fromhex(fields[0]))
    return None


class VipEngine:
    def __init__(self, on_state: Callable[[GroupKey, RouterConfig, bool], None], host: Host) -> None:
        self._on_state = on_state
        self._main = asyncio.get_running_loop()
        self.host = host
        self.stats: Counter[str] = Counter()
        """adverts_sent, adverts_received, transitions, bad_ttl, bad_packet, unknown_vrid, no_source"""
        self.masters: dict[GroupKey, RouterConfig] = {}
        """Routers this node is master of (written on the VRRP thread; read for metrics)."""
        self._routers: dict[GroupKey, tuple[vrrp.VirtualRouter, RouterConfig, Link]] = {}
        self._by_vrid: dict[tuple[str, int, int], GroupKey] = {}
        self._links: dict[tuple[str, int], Link] = {}
        self._timers: dict[GroupKey, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def configure(self, changes: Mapping[GroupKey, RouterConfig | None]) -> None:
        if self._closed or (not changes and self._thread is None):
            return
        if self._thread is None:
            ready = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(ready,), name="openelb-vrrp", daemon=True)
            self._thread.start()
            ready.wait(5)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._apply, dict(changes))

    def close(self) -> None:
        """Masters say priority 0 (backups take over after their skew time) and release."""
        self._closed = True
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._shutdown)
            self._thread.join(3)

    # ---- the VRRP thread -------------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        # This thread only: a saturated node must not delay adverts past the master down interval.
        log.info("%s", realtime("VRRP adverts", "on a CPU-starved node raise the Eip's advert-interval"))
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _shutdown(self) -> None:
        assert self._loop is not None
        for key in list(self._routers):
            self._remove(key)
        for link in self._links.values():
            self._loop.remove_reader(link.sock.fileno())
            link.sock.close()
        self._links.clear()
        self._loop.stop()

    def _apply(self, changes: dict[GroupKey, RouterConfig | None]) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for key, cfg in changes.items():
            held = self._routers.get(key)
            if held is not None:
                router, old, link = held
                same_router = cfg is not None and (cfg.vrid, cfg.interface, cfg.family) == (
                    old.vrid, old.interface, old.family)  # fmt: skip
                if not same_router:
                    self._remove(key)
                else:
                    assert cfg is not None
                    addrs = router.addresses if cfg.addresses == old.addresses else _parsed(cfg.addresses)
                    out = router.reconfigure(cfg.priority, cfg.interval_cs, addrs, now)
                    self._routers[key] = (router, cfg, link)
                    if router.state is vrrp.State.MASTER:
                        before, after = set(old.addresses), set(cfg.addresses)
                        self.host.release(cfg.interface, sorted(before - after))
                        self.host.hold(cfg.interface, sorted(after - before))
                        self.masters[key] = cfg
                    self._do(key, out)
                    continue
            if cfg is not None:
                self._add(key, cfg, now)

    def _link(self, ifname: str, family: int) -> Link | None:
        link = self._links.get((ifname, family))
        if link is not None:
            return link
        assert self._loop is not None
        try:
            index = socket.if_nametoindex(ifname)
            local = primary_address(ifname, family)
            if local is None:
                self.stats["no_source"] += 1
                log.error(
                    "VIP: %s has no %s address to send VRRP from", ifname, "IPv4" if family == 4 else "link-local"
                )
                return None
            sock = _vrrp_socket(ifname, index, family)
        except OSError as exc:
            log.error("VIP: cannot open VRRP on %s: %s", ifname, exc)
            return None
        link = Link(ifname, family, index, local, sock)
        self._links[(ifname, family)] = link
        self._loop.add_reader(sock.fileno(), self._receive, link)
        return link

    def _add(self, key: GroupKey, cfg: RouterConfig, now: float) -> None:
        link = self._link(cfg.interface, cfg.family)
        if link is None:
            return
        addrs = _parsed(cfg.addresses)
        router = vrrp.VirtualRouter(cfg.vrid, cfg.priority, cfg.interval_cs, addrs, link.local)
        self._routers[key] = (router, cfg, link)
        self._by_vrid[(cfg.interface, cfg.family, cfg.vrid)] = key
        self._do(key, router.start(now))

    def _remove(self, key: GroupKey) -> None:
        router, cfg, link = self._routers.pop(key)
        self._by_vrid.pop((cfg.interface, cfg.family, cfg.vrid), None)
        timer = self._timers.pop(key, None)
        if timer:
            timer.cancel()
        self._do(key, router.stop(), cfg=cfg, link=link)

    def _schedule(self, key: GroupKey) -> None:
        assert self._loop is not None
        old = self._timers.pop(key, None)
        if old:
            old.cancel()
        held = self._routers.get(key)
        if held is not None and held[0].deadline != float("inf"):
            self._timers[key] = self._loop.call_at(held[0].deadline, self._tick, key)

    def _tick(self, key: GroupKey) -> None:
        held = self._routers.get(key)
        if held is not None:
            assert self._loop is not None
            self._do(key, held[0].tick(self._loop.time()))

    def _do(self, key: GroupKey, out: vrrp.Output, cfg: RouterConfig | None = None, link: Link | None = None) -> None:
        held = self._routers.get(key)
        if held is not None:
            cfg, link = held[1], held[2]
        assert cfg is not None and link is not None
        group = vrrp.GROUP_V4 if cfg.family == 4 else vrrp.GROUP_V6
        for adv in out.send:
            try:
                _send(link, adv.encode(link.local, group), group)
                self.stats["adverts_sent"] += 1
            except (OSError, vrrp.VrrpError) as exc:
                self.stats["send_errors"] += 1
                log.debug("VRRP send on %s failed: %s", link.ifname, exc)
        for event in out.events:
            self.stats["transitions"] += 1
            master = event is vrrp.Event.BECAME_MASTER
            if master:
                self.host.hold(cfg.interface, cfg.addresses)
                self.masters[key] = cfg
            else:
                self.host.release(cfg.interface, cfg.addresses)
                self.masters.pop(key, None)
            log.info("VRRP %s vrid %d on %s: %s (%d IPs)", key[0], cfg.vrid, cfg.interface,
                     "master" if master else "backup", len(cfg.addresses))  # fmt: skip
            self._main.call_soon_threadsafe(self._on_state, key, cfg, master)
        if held is not None:
            self._schedule(key)

    def _receive(self, link: Link) -> None:
        assert self._loop is not None
        for _ in range(64):
            try:
                got = _recv(link)
            except BlockingIOError:
                return
            except OSError:
                return
            if got is None:
                self.stats["bad_packet"] += 1
                continue
            data, src, dst, ttl = got
            if src == link.local:
                continue  # our own
            if ttl != 255:
                self.stats["bad_ttl"] += 1
                continue
            try:
                adv = vrrp.decode(data, src, dst, addresses=False)
            except vrrp.VrrpError:
                self.stats["bad_packet"] += 1
                continue
            key = self._by_vrid.get((link.ifname, link.family, adv.vrid))
            if key is None:
                self.stats["unknown_vrid"] += 1
                continue
            self.stats["adverts_received"] += 1
            self._do(key, self._routers[key][0].receive(adv, src, self._loop.time()))


def _parsed(addresses: tuple[str, ...]) -> tuple[vrrp.Address, ...]:
    """Only the addresses an advert lists are parsed: a router may hold thousands."""
    if not addresses:
        return ()
    limit = vrrp.LISTED[6 if ":" in addresses[0] else 4]
    return tuple(ipaddress.ip_address(a) for a in addresses[:limit])


def _vrrp_socket(ifname: str, index: int, family: int) -> socket.socket:
    if family == 4:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, vrrp.PROTO)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        s.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        mreqn = vrrp.GROUP_V4.packed + b"\0\0\0\0" + struct.pack("@i", index)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, vrrp.PROTO)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, vrrp.GROUP_V6.packed + struct.pack("@I", index))
    s.setblocking(False)
    return s


def _send(link: Link, message: bytes, group: vrrp.Address) -> None:
    if link.family == 4:
        pktinfo = struct.pack("@i4s4s", link.index, link.local.packed, b"\0\0\0\0")
        link.sock.sendmsg([message], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0, (str(group), 0))
    else:
        pktinfo = link.local.packed + struct.pack("@I", link.index)
        link.sock.sendmsg([message], [(socket.IPPROTO_IPV6, IPV6_PKTINFO, pktinfo)], 0, (str(group), 0, 0, link.index))


def _recv(link: Link) -> tuple[bytes, vrrp.Address, vrrp.Address, int] | None:
    """(VRRP message, source, destination, TTL or hop limit); None for a truncated IP header."""
    if link.family == 4:
        packet = link.sock.recv(4096)
        if len(packet) < 20:
            return None
        ihl = (packet[0] & 0x0F) * 4
        if len(packet) < ihl:
            return None
        src, dst = ipaddress.IPv4Address(packet[12:16]), ipaddress.IPv4Address(packet[16:20])
        return packet[ihl:], src, dst, packet[8]
    data, anc, _flags, addr = link.sock.recvmsg(4096, 256)
    hop, dst6 = None, None
    for level, kind, value in anc:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT:
            hop = int.from_bytes(value[:4], "little")
        elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
            dst6 = ipaddress.IPv6Address(value[:16])
    src6 = ipaddress.IPv6Address(addr[0].split("%")[0])
    with contextlib.suppress(ValueError):
        return data, src6, dst6 or vrrp.GROUP_V6, hop if hop is not None else 0
    return None
