"""VRRP version 3 (RFC 5798) for IPv4 and IPv6, sans-IO: the advertisement codec and the
state machine of one virtual router.

The adapter (`speaker.vip`) owns the sockets, the clock and the addresses; this module only says
what to send and when the router becomes master or backup. Everything here is a pure function of
its inputs (the time is passed in), so the transitions are tested without a network.

Wire format (§5.2): version 3, type 1, VRID, priority, address count, a 12-bit maximum
advertisement interval in centiseconds, a checksum over the message and the IPv4/IPv6
pseudo-header (protocol 112), then the addresses. Both directions check the checksum; the TTL /
hop limit of 255 (§5.1.1.3) is the adapter's to check, as only it sees the IP header.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

PROTO = 112
"""IP protocol number of VRRP."""
GROUP_V4 = ipaddress.IPv4Address("224.0.0.18")
GROUP_V6 = ipaddress.IPv6Address("ff02::12")
VERSION = 3
TYPE_ADVERTISEMENT = 1
HEADER = struct.Struct("!BBBBHH")
MAX_INTERVAL_CS = 0xFFF
"""40.95 s: the largest interval the 12-bit field holds."""
OWNER_PRIORITY = 255
"""Reserved for the router that owns the addresses as its real ones; we never claim it."""
LISTED = {4: 255, 6: 80}
"""Addresses an advert lists at most: the 8-bit count, and for IPv6 a 1500-byte link. A router
with more holds all of them and lists the first (receivers may only compare, §7.1)."""

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class VrrpError(ValueError):
    """A packet that is not a valid VRRPv3 advertisement (counted and dropped by the adapter)."""


@dataclass(frozen=True)
class Advert:
    vrid: int
    priority: int
    interval_cs: int
    addresses: tuple[Address, ...]

    def encode(self, src: Address, dst: Address) -> bytes:
        """The message with its checksum for this source and destination (the pseudo-header)."""
        if not (1 <= self.vrid <= 255 and 0 <= self.priority <= 255 and 1 <= self.interval_cs <= MAX_INTERVAL_CS):
            raise VrrpError(f"out of range: vrid {self.vrid}, priority {self.priority}, interval {self.interval_cs}")
        if len(self.addresses) > 255:
            raise VrrpError(f"{len(self.addresses)} addresses: at most 255 fit an advertisement")
        body = b"".join(a.packed for a in self.addresses)
        head = HEADER.pack((VERSION << 4) | TYPE_ADVERTISEMENT, self.vrid, self.priority, len(self.addresses),
                           self.interval_cs, 0)  # fmt: skip
        csum = checksum(src, dst, head + body)
        return head[:6] + struct.pack("!H", csum) + body


def decode(data: bytes, src: Address, dst: Address, *, addresses: bool = True) -> Advert:
    """A received VRRP message (after the IP header). Raises VrrpError on anything but a valid
    version 3 advertisement of the family of `src`. `addresses=False` skips building the address
    list (a router's decisions never read it; an advert may carry 255)."""
    if len(data) < HEADER.size:
        raise VrrpError(f"{len(data)} bytes: shorter than the VRRP header")
    vt, vrid, priority, count, interval, _csum = HEADER.unpack_from(data)
    if vt >> 4 != VERSION:
        raise VrrpError(f"version {vt >> 4}, not 3")
    if vt & 0xF != TYPE_ADVERTISEMENT:
        raise VrrpError(f"type {vt & 0xF}, not an advertisement")
    size = 4 if src.version == 4 else 16
    if len(data) < HEADER.size + count * size:
        raise VrrpError(f"{count} addresses announced, {len(data) - HEADER.size} bytes of them")
    if checksum(src, dst, data[: HEADER.size + count * size]) != 0:
        raise VrrpError("bad checksum")
    interval &= MAX_INTERVAL_CS
    if vrid == 0 or interval == 0:
        raise VrrpError(f"vrid {vrid}, interval {interval} cs: invalid")
    if not addresses:
        return Advert(vrid, priority, interval, ())
    cls = ipaddress.IPv4Address if size == 4 else ipaddress.IPv6Address
    addrs = tuple(cls(data[HEADER.size + i * size : HEADER.size + (i + 1) * size]) for i in range(count))
    return Advert(vrid, priority, interval, addrs)


def checksum(src: Address, dst: Address, message: bytes) -> int:
    """The Internet checksum of `message` with the pseudo-header of §5.2.8 (IPv4 as for TCP and
    UDP, IPv6 as RFC 8200 §8.1). A message carrying a correct checksum sums to 0."""
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, PROTO, len(message))
    else:
        pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(message), PROTO)
    data = pseudo + message
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class State(enum.Enum):
    INIT = "init"
    BACKUP = "backup"
    MASTER = "master"


class Event(enum.Enum):
    BECAME_MASTER = "became-master"
    """Hold the addresses, then announce them (gratuitous ARP / unsolicited NA)."""
    BECAME_BACKUP = "became-backup"
    """Release the addresses."""


@dataclass
class Output:
    """What one input asks of the adapter: send these adverts, report these transitions."""

    send: list[Advert]
    events: list[Event]


class VirtualRouter:
    """One VRRPv3 router (§6.4), Preempt_Mode true (the highest priority alive is master, so the
    placement the speakers compute holds) and Accept_Mode true (the master takes traffic to the
    addresses: they are a Service's). The adapter calls `start`, `receive`, `tick` at or after
    `deadline`, and `stop`; each returns an `Output`."""

    def __init__(
        self, vrid: int, priority: int, interval_cs: int, addresses: tuple[Address, ...], local: Address
    ) -> None:
        if not 1 <= priority < OWNER_PRIORITY:
            raise ValueError(f"priority {priority}: 1..254 (255 is the address owner's)")
        self.vrid = vrid
        self.priority = priority
        self.interval_cs = interval_cs
        self.addresses = addresses
        self.local = int(local)
        """This router's primary address: breaks priority ties (the higher address wins)."""
        self.state = State.INIT
        self.master_interval_cs = interval_cs
        self.deadline = float("inf")
        """When `tick` must run next: Master_Down_Timer in Backup, Adver_Timer in Master."""

    # §6.1's derived values
    def skew(self) -> float:
        return ((256 - self.priority) * self.master_interval_cs / 256) / 100

    def master_down(self) -> float:
        return 3 * self.master_interval_cs / 100 + self.skew()

    def advert(self, priority: int | None = None) -> Advert:
        listed = self.addresses[: LISTED[self.addresses[0].version]] if self.addresses else ()
        return Advert(self.vrid, self.priority if priority is None else priority, self.interval_cs, listed)

    def start(self, now: float) -> Output:
        if self.state is not State.INIT:
            return Output([], [])
        self.master_interval_cs = self.interval_cs
        self.state = State.BACKUP
        self.deadline = now + self.master_down()
        return Output([], [])

    def stop(self) -> Output:
        """Shutdown: a master says priority 0 so a backup takes over after its skew time."""
        was = self.state
        self.state = State.INIT
        self.deadline = float("inf")
        if was is State.MASTER:
            return Output([self.advert(0)], [Event.BECAME_BACKUP])
        return Output([], [])

    def tick(self, now: float) -> Output:
        if now < self.deadline:
            return Output([], [])
        if self.state is State.BACKUP:  # Master_Down_Timer fired: nobody better is alive
            self.state = State.MASTER
            self.deadline = now + self.interval_cs / 100
            return Output([self.advert()], [Event.BECAME_MASTER])
        if self.state is State.MASTER:  # Adver_Timer
            self.deadline = now + self.interval_cs / 100
            return Output([self.advert()], [])
        return Output([], [])

    def receive(self, adv: Advert, sender: Address, now: float) -> Output:
        """An advertisement for this VRID from another router (the adapter drops our own)."""
        if self.state is State.BACKUP:
            if adv.priority == 0:
                self.deadline = now + self.skew()  # the master is leaving: take over soon
            elif adv.priority >= self.priority:
                self.master_interval_cs = adv.interval_cs
                self.deadline = now + self.master_down()
            # else (preempt): a lower-priority master is ignored; our timer makes us master
            return Output([], [])
        if self.state is State.MASTER:
            if adv.priority == 0:
                self.deadline = now + self.interval_cs / 100
                return Output([self.advert()], [])
            if adv.priority > self.priority or (adv.priority == self.priority and int(sender) > self.local):
                self.state = State.BACKUP
                self.master_interval_cs = adv.interval_cs
                self.deadline = now + self.master_down()
                return Output([], [Event.BECAME_BACKUP])
        return Output([], [])

    def reconfigure(self, priority: int, interval_cs: int, addresses: tuple[Address, ...], now: float) -> Output:
        """New priority, interval or addresses from the speakers' plan. A master advertises the
        change at once (a lowered priority lets a higher backup preempt); a backup re-arms its
        timer with the new skew."""
        if not 1 <= priority < OWNER_PRIORITY:
            raise ValueError(f"priority {priority}: 1..254")
        changed = (priority, interval_cs, addresses) != (self.priority, self.interval_cs, self.addresses)
        self.priority, self.interval_cs, self.addresses = priority, interval_cs, addresses
        if not changed:
            return Output([], [])
        if self.state is State.MASTER:
            self.deadline = now + self.interval_cs / 100
            return Output([self.advert()], [])
        if self.state is State.BACKUP:
            self.deadline = min(self.deadline, now + self.master_down())
        return Output([], [])
