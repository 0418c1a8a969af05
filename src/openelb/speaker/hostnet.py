"""The node's own network through netlink (pyroute2), never on the event loop.

Three jobs, each on a thread of its own so that no netlink round trip (a node taking over
thousands of IPs writes thousands of addresses) delays the speaker's loop:
- `resolve` / `subnets`: an Eip `interface` (a name or `can_reach:<ip>`) → the link, and the
  subnets on it, asked of the kernel;
- `HostAddresses`: owned IPs as /32 and /128 addresses on the `openelb0` link, so the owner answers
  ping like an IPVS-mode node does; changes are queued and applied in order, coalesced per batch;
- `NetWatcher`: link, address and route events from the kernel (a plain netlink socket),
  reported (debounced) so the speaker re-resolves `can_reach:` interfaces when a route moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import queue
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)

log = logging.getLogger("openelb.speaker.hostnet")
IFA_F_NODAD = 0x02
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class InterfaceError(OSError):
    """An Eip interface that does not resolve on this node; the message is shown in Events."""


def resolve(spec: str) -> str:
    """An Eip `interface`: a name, or `can_reach:<ip>` (the interface of the route to that IP)."""
    with IPRoute() as ipr:
        if spec.startswith("can_reach:"):
            target = spec.split(":", 1)[1]
            try:
                routes = ipr.route("get", dst=target)
            except NetlinkError as exc:
                raise InterfaceError(f"no route to {target}: {exc}") from exc
            index = routes[0].get("RTA_OIF") if routes else None
            links = ipr.link("get", index=index) if index else []
            if not links:
                raise InterfaceError(f"no interface reaches {target}")
            return str(links[0].get("IFLA_IFNAME"))
        if not ipr.link_lookup(ifname=spec):
            raise InterfaceError(f"no interface {spec!r} on this node")
        return spec


def subnets(ifname: str) -> list[Network]:
    """The non-link-local subnets on a link."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return []
        nets: list[Network] = []
        for a in ipr.get_addr(index=found[0]):
            net = ipaddress.ip_network(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}", strict=False)
            if not net.is_link_local:
                nets.append(net)
        return nets


def _plen(ip: str) -> int:
    return 128 if ":" in ip else 32


def strict_arp(ifname: str) -> None:
    """The kernel must not answer ARP on `ifname` for addresses it holds elsewhere (ours on the
    `openelb0` link), or a crashed speaker's node would keep answering: arp_ignore=1 and
    arp_announce=2 on that interface, what kube-proxy's strictARP sets for IPVS."""
    for knob, value in (("arp_ignore", "1"), ("arp_announce", "2")):
        path = Path(f"/proc/sys/net/ipv4/conf/{ifname}/{knob}")
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
        except OSError as exc:
            log.warning("cannot set %s on %s: %s", knob, ifname, exc)


class HostAddresses:
    """Only the owner holds a Layer2 IP, or the nodes that are BGP next hops for it; each mode
    claims its set, the link holds the union. A restart starts from an empty link. `claim` only
    queues: a worker thread writes the difference, one netlink socket, in order."""

    def __init__(self, link: str = "openelb0") -> None:
        self.link = link
        self._claims: dict[str, set[str]] = {}
        """IP → the modes that want it on the link."""
        self._ipr = IPRoute()
        found = self._ipr.link_lookup(ifname=link)
        if not found:
            # A dummy link where the kernel has the module; a port-less bridge behaves the same.
            for kind in ("dummy", "bridge"):
                with contextlib.suppress(NetlinkError):
                    self._ipr.link("add", ifname=link, kind=kind)
                    break
            found = self._ipr.link_lookup(ifname=link)
            if not found:
                raise OSError(f"cannot create link {link} (neither dummy nor bridge)")
        self.index = int(found[0])
        self._ipr.flush_addr(index=self.index)
        self._ipr.link("set", index=self.index, state="up")
        self._queue: queue.Queue[tuple[set[str], set[str]] | None] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self.errors = 0
        self._thread = threading.Thread(target=self._work, name="openelb-host-addresses", daemon=True)
        self._thread.start()

    def update(self, who: str, add: Iterable[str], remove: Iterable[str]) -> None:
        """`who` (a mode) now also wants `add` and no longer `remove` on the link; an IP stays
        while any mode wants it. Costs what changed, not what is held."""
        put: set[str] = set()
        drop: set[str] = set()
        for ip in remove:
            owners = self._claims.get(ip)
            if owners is not None and who in owners:
                owners.discard(who)
                if not owners:
                    del self._claims[ip]
                    drop.add(ip)
        for ip in add:
            owners = self._claims.setdefault(ip, set())
            if not owners:
                put.add(ip)
                drop.discard(ip)
            owners.add(who)
        put -= drop
        if put or drop:
            self._idle.clear()
            self._queue.put((put, drop))

    def wait_idle(self, timeout: float) -> bool:
        """True once every queued change is written (tests wait on it)."""
        return self._idle.wait(timeout)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            add, remove = set(item[0]), set(item[1])
            while True:  # coalesce what queued up meanwhile: the last word per IP wins
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._apply(add, remove)
                    return
                add = (add - nxt[1]) | nxt[0]
                remove = (remove - nxt[0]) | nxt[1]
            self._apply(add, remove)
            if self._queue.empty():
                self._idle.set()

    def _apply(self, add: set[str], remove: set[str]) -> None:
        for ip in remove:
            self._call("del", ip)
        for ip in add:
            self._call("replace", ip)

    def _call(self, op: str, ip: str) -> None:
        kw: dict[str, Any] = {"index": self.index, "address": ip, "prefixlen": _plen(ip)}
        if ":" in ip and op != "del":
            kw["flags"] = IFA_F_NODAD
        try:
            self._ipr.addr(op, **kw)
        except NetlinkError as exc:
            if op == "del" and exc.code == 99:  # EADDRNOTAVAIL: already gone
                return
            self.errors += 1
            log.warning("cannot %s %s on %s: %s", op, ip, self.link, exc)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        with contextlib.suppress(NetlinkError, OSError):
            self._ipr.flush_addr(index=self.index)
        self._ipr.close()


RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE, RTM_DELROUTE = 20, 21, 24, 25
RTA_OIF = 4
IFA_PROTO = 11
RT_TABLE_LOCAL, RTN_LOCAL = 255, 2
MARKED_PROTO = 79
"""`IFA_PROTO` of the addresses VIP mode adds (`speaker.vip_host`): our writes, not news."""
NLMSG = struct.Struct("=IHHII")
RTATTR = struct.Struct("=HH")


def _attr(body: bytes, off: int, wanted: int) -> bytes | None:
    """The payload of the first rtattr of type `wanted` from `off` on (None if absent or garbled)."""
    while off + RTATTR.size <= len(body):
        length, kind = RTATTR.unpack_from(body, off)
        if length < RTATTR.size:
            return None
        if kind == wanted:
            return body[off + RTATTR.size : off + length]
        off += (length + 3) & ~3
    return None


def event_index(msg_type: int, body: bytes) -> int | None:
    """The interface an address or route message is about (None for anything else)."""
    if msg_type in (RTM_NEWADDR, RTM_DELADDR) and len(body) >= 8:
        return int(struct.unpack_from("=I", body, 4)[0])
    if msg_type in (RTM_NEWROUTE, RTM_DELROUTE):
        oif = _attr(body, 12, RTA_OIF)  # after struct rtmsg
        return int(struct.unpack_from("=I", oif)[0]) if oif is not None and len(oif) >= 4 else None
    return None


def our_own_write(msg_type: int, body: bytes) -> bool:
    """An event caused by an address we added on a shared interface: the address itself (marked
    with IFA_PROTO 79) or the local-table route the kernel adds with it. Reacting to these would
    re-resolve every pool (dumping thousands of addresses) on each address a master takes."""
    if msg_type in (RTM_NEWADDR, RTM_DELADDR):
        proto = _attr(body, 8, IFA_PROTO)  # after struct ifaddrmsg
        return proto is not None and proto[:1] == bytes([MARKED_PROTO])
    if msg_type in (RTM_NEWROUTE, RTM_DELROUTE) and len(body) >= 12:
        return body[4] == RT_TABLE_LOCAL and body[7] == RTN_LOCAL
    return False


def split_netlink(data: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of each message in one netlink datagram."""
    out, off = [], 0
    while off + NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = NLMSG.unpack_from(data, off)
        if length < NLMSG.size:
            break
        out.append((kind, data[off + NLMSG.size : off + length]))
        off += (length + 3) & ~3
    return out


class NetWatcher:
    """Kernel link/address/route events → `on_change()` on the loop, at most every `debounce` s.

    A plain netlink socket on a thread: only the message types and interface indexes are read,
    enough to drop the events of our own address writes (`ignore_index`)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[], None],
        debounce: float = 0.2,
        ignore_index: int | None = None,
    ) -> None:
        self.loop = loop
        self.on_change = on_change
        self.debounce = debounce
        self.ignore_index = ignore_index
        """Our own `openelb0` link: its address and local-route events are our writes, not news."""
        groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind((0, groups))
        self._stop = threading.Event()
        self._pending = False
        self._thread = threading.Thread(target=self._run, name="openelb-netwatch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.5)
            if not ready:
                continue
            try:
                data = self._sock.recv(1 << 16)
            except OSError as exc:  # ENOBUFS: events were lost, so something changed
                if self._stop.is_set():
                    return
                log.debug("netlink events: %s", exc)
                self._changed()
                continue
            if any(not self._ours(kind, body) for kind, body in split_netlink(data)):
                self._changed()

    def _ours(self, kind: int, body: bytes) -> bool:
        if self.ignore_index is not None and event_index(kind, body) == self.ignore_index:
            return True
        return our_own_write(kind, body)

    def _changed(self) -> None:
        if not self._pending:
            self._pending = True
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self.loop.call_soon_threadsafe(self.loop.call_later, self.debounce, self._fire)

    def _fire(self) -> None:
        self._pending = False
        self.on_change()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
