"""VIP mode's addresses on the node's own interfaces, and their gratuitous announcements.

A VRRP master holds its virtual router's IPs as /32 and /128 addresses on the Eip's interface, so
the node's kernel answers ARP/NDP and ping for them and takes the Service traffic. Every address
added here carries `IFA_PROTO = MARKED_PROTO`: at start the speaker removes every address
with that mark (a predecessor killed with SIGKILL leaves nothing behind once it restarts), and it
never touches an address it did not add. Netlink writes and the gratuitous ARP / unsolicited NA
that follow them run on a worker thread: a master taking over a thousand IPs never delays the
VRRP process's adverts. The writes go in batches, many messages per syscall (`protocols.rtnl`):
one pyroute2 round trip per address made a 6,266-IP takeover take 10.9 s.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from openelb.protocols import arp, ndp, rtnl
from openelb.speaker.hostnet import MARKED_PROTO
from openelb.speaker.layer2 import ETH_P_ARP, mac_of

log = logging.getLogger("openelb.speaker.vip")
ANNOUNCE_AGAIN = (0.5, 2.0)
"""Gratuitous announcements repeated after these seconds (switches that missed the first)."""
CHUNK = 512
"""Addresses written between two looks at the queue (a flap while they are written merges)."""
PER_SEND = 256
"""Netlink messages per send (~20 KB, well inside the socket buffers with their acks)."""
ACK_TIMEOUT = 5.0

Op = tuple[str, str, tuple[str, ...]]


class VipAddresses:
    def __init__(self) -> None:
        self._ipr = IPRoute()
        self._nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._nl.bind((0, 0))
        self._nl.settimeout(ACK_TIMEOUT)
        self._seq = 0
        self.held: dict[str, str] = {}
        """IP → the interface it is on (written by the worker; read for metrics and tests)."""
        self.errors = 0
        self.writes = 0
        """Netlink address writes done (merging makes a flap cost less than its two halves)."""
        self.removed_stale = self._remove_marked()
        self._queue: queue.Queue[tuple[float, Op] | None] = queue.Queue()
        self._later: list[tuple[float, Op]] = []
        self._arp: dict[str, socket.socket] = {}
        self._icmp6: socket.socket | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._work, name="openelb-vip-addresses", daemon=True)
        self._thread.start()

    def hold(self, ifname: str, ips: Iterable[str]) -> None:
        self._put(("hold", ifname, tuple(ips)))

    def release(self, ifname: str, ips: Iterable[str]) -> None:
        self._put(("release", ifname, tuple(ips)))

    def wait_idle(self, timeout: float) -> bool:
        return self._idle.wait(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._write("del", [(ifname, ip) for ip, ifname in self.held.items()])
        self.held.clear()
        self._nl.close()
        for s in self._arp.values():
            s.close()
        if self._icmp6 is not None:
            self._icmp6.close()
        self._ipr.close()

    # ---- the worker ----------------------------------------------------------------------------

    def _put(self, op: Op) -> None:
        if op[2]:
            self._idle.clear()
            self._queue.put((0.0, op))

    def _remove_marked(self) -> int:
        """Addresses a previous speaker on this node added and never removed (it was killed)."""
        removed = 0
        with contextlib.suppress(NetlinkError, OSError):
            for a in self._ipr.get_addr():
                if a.get("IFA_PROTO") == MARKED_PROTO:
                    with contextlib.suppress(NetlinkError):
                        self._ipr.addr("del", index=a["index"], address=a.get("IFA_ADDRESS"), prefixlen=a["prefixlen"])
                        removed += 1
        if removed:
            log.info("removed %d VIP addresses left by a previous speaker on this node", removed)
        return removed

    def _work(self) -> None:
        """Holds and releases are merged per IP, last word wins, and applied in chunks with the
        queue drained between them: a router that flaps (master, then backup 0.3 s later) while
        its 1,000 addresses are being written ends as a release, not as 1,000 adds then deletes."""
        pending: dict[str, str | None] = {}
        """IP → the interface to hold it on, None to release it."""
        while True:
            if not pending:
                timeout = max(0.0, self._later[0][0] - time.monotonic()) if self._later else None
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    _when, (_what, ifname, ips) = self._later.pop(0)
                    self._announce(ifname, tuple(ip for ip in ips if self.held.get(ip) == ifname))
                    continue
                if item is None:
                    return
                self._merge(pending, item[1])
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    return
                self._merge(pending, item[1])
            gained: dict[str, list[str]] = {}
            dels: list[tuple[str, str]] = []
            adds: list[tuple[str, str]] = []
            for ip in list(pending)[:CHUNK]:
                target = pending.pop(ip)
                held = self.held.get(ip)
                if held is not None and held != target:
                    dels.append((held, ip))
                if target is not None and held != target:
                    adds.append((target, ip))
            self._write("del", dels)
            for _ifname, ip in dels:
                del self.held[ip]
            done = self._write("replace", adds)
            for target, ip in adds:
                if ip in done:
                    self.held[ip] = target
                    gained.setdefault(target, []).append(ip)
            now = time.monotonic()
            for link, fresh in gained.items():
                self._announce(link, tuple(fresh))
                self._later.extend((now + d, ("announce", link, tuple(fresh))) for d in ANNOUNCE_AGAIN)
            self._later.sort(key=lambda x: x[0])
            if not pending and self._queue.empty():
                self._idle.set()

    def _merge(self, pending: dict[str, str | None], op: Op) -> None:
        what, ifname, ips = op
        for ip in ips:
            if what == "hold":
                pending.pop(ip, None)  # re-inserted: applied in the order of the last words
                pending[ip] = ifname
            elif pending.get(ip, self.held.get(ip)) == ifname:
                pending.pop(ip, None)
                pending[ip] = None

    def _write(self, op: str, items: list[tuple[str, str]]) -> set[str]:
        """Add ("replace") or remove ("del") (interface, IP) pairs, `PER_SEND` messages per
        syscall; returns the IPs done (a delete of an address already gone counts as done)."""
        done: set[str] = set()
        indexes: dict[str, int] = {}
        for start in range(0, len(items), PER_SEND):
            by_seq: dict[int, str] = {}
            msgs = []
            for ifname, ip in items[start : start + PER_SEND]:
                try:
                    index = indexes.get(ifname) or indexes.setdefault(ifname, socket.if_nametoindex(ifname))
                except OSError as exc:
                    self.errors += 1
                    log.warning("cannot %s %s on %s: %s", op, ip, ifname, exc)
                    continue
                self._seq = self._seq % 0x7FFFFFFF + 1
                by_seq[self._seq] = ip
                msgs.append(rtnl.address_message(op, index, ip, self._seq, MARKED_PROTO))
            if not msgs:
                continue
            try:
                self._nl.send(b"".join(msgs))
                while by_seq:
                    for seq, errno in rtnl.acks(self._nl.recv(65536)):
                        ip = by_seq.pop(seq, "")
                        if not ip:
                            continue
                        if errno == 0 or (op == "del" and errno == 99):  # EADDRNOTAVAIL: already gone
                            done.add(ip)
                        else:
                            self.errors += 1
                            log.warning("cannot %s %s: %s", op, ip, os.strerror(errno))
            except OSError as exc:  # a timeout too: the rest of this batch counts as failed
                self.errors += len(by_seq)
                log.warning("netlink %s of %d addresses failed: %s", op, len(by_seq), exc)
            self.writes += len(msgs)
        return done

    def _announce(self, ifname: str, ips: tuple[str, ...]) -> None:
        """Gratuitous ARP (request and reply) per IPv4 address, an unsolicited override NA per
        IPv6 one: neighbours and switches move to this node at once."""
        try:
            mac = mac_of(ifname)
            for ip in ips:
                addr = ipaddress.ip_address(ip)
                if isinstance(addr, ipaddress.IPv4Address):
                    sock = self._arp_socket(ifname)
                    for op in (arp.OP_REQUEST, arp.OP_REPLY):
                        sock.send(arp.build(arp.gratuitous(addr, mac, op)))
                else:
                    self._send_na(ifname, addr, mac)
        except OSError as exc:
            log.warning("gratuitous announcement on %s failed: %s", ifname, exc)

    def _arp_socket(self, ifname: str) -> socket.socket:
        sock = self._arp.get(ifname)
        if sock is None:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
            sock.bind((ifname, ETH_P_ARP))
            self._arp[ifname] = sock
        return sock

    def _send_na(self, ifname: str, addr: ipaddress.IPv6Address, mac: bytes) -> None:
        if self._icmp6 is None:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            self._icmp6 = s
        index = socket.if_nametoindex(ifname)
        na = ndp.NeighborAdvertisement(addr, mac, solicited=False, override=True)
        pktinfo = addr.packed + struct.pack("@I", index)
        self._icmp6.sendmsg(
            [ndp.build_na(na)], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo)], 0,
            (str(ndp.ALL_NODES), 0, 0, index),
        )  # fmt: skip
