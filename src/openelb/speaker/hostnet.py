"""The node's own network through netlink (pyroute2), never on the event loop.

Three jobs, each on a thread of its own so that no netlink round trip (a node taking over
thousands of IPs writes thousands of addresses) delays the speaker's loop:
- `resolve` / `subnets`: an Eip `interface` (a name or `can_reach:<ip>`) → the link, and the
  subnets on it, asked of the kernel;
- `HostAddresses`: owned IPs as /32 and /128 addresses on the `openelb0` link, so the owner answers
  ping like an IPVS-mode node does; changes are queued and applied in order, coalesced per batch;
- `NetWatcher`: link, address and route events from the kernel, reported (debounced) so the
  speaker re-resolves `can_reach:` interfaces when a route moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import queue
import select
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

    def held(self) -> set[str]:
        return set(self._claims)

    def wait_idle(self, timeout: float) -> bool:
        """For tests and shutdown: True once every queued change is written."""
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


class NetWatcher:
    """Kernel link/address/route events → `on_change()` on the loop, at most every `debounce` s."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[], None],
        debounce: float = 0.2,
        ignore_index: int | None = None,
    ) -> None:
        self.loop = loop
        self.ignore_index = ignore_index
        """Our own `openelb0` link: its address and local-route events are our writes, not news."""
        self.on_change = on_change
        self.debounce = debounce
        self._stop = threading.Event()
        self._pending = False
        self._thread = threading.Thread(target=self._run, name="openelb-netwatch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # pyroute2's synchronous socket runs its own asyncio loop: it must live on a thread
        # without one, so it is made (and closed) here.
        with IPRoute() as ipr:
            ipr.bind(
                groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
            )
            fd = ipr.fileno()
            while not self._stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.5)
                if ready:
                    self._read(ipr)

    def _read(self, ipr: Any) -> None:
        try:
            msgs = ipr.get()
        except Exception as exc:  # a netlink hiccup must not end the watch
            log.warning("netlink events: %s", exc)
            return
        if self.ignore_index is not None and all(self._ours(m) for m in msgs):
            return
        if not self._pending:
            self._pending = True
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self.loop.call_soon_threadsafe(self.loop.call_later, self.debounce, self._fire)

    def _ours(self, msg: Any) -> bool:
        index = msg.get("index") if msg.get("event", "").endswith("ADDR") else msg.get("RTA_OIF")
        return bool(index == self.ignore_index)

    def _fire(self) -> None:
        self._pending = False
        self.on_change()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
