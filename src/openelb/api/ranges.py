"""Address ranges as integer intervals: `IP`, `CIDR` (network..broadcast inclusive, host bits
dropped, as OpenELB) and `first-last`, for IPv4 and IPv6 of any size (a /64 is 2**64 addresses).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressError(ValueError):
    """An Eip address that does not parse; the message is shown to users (webhook, Events)."""


@dataclass(frozen=True, order=True)
class IPRange:
    version: int
    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def contains(self, ip: IPAddress | str) -> bool:
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        return addr.version == self.version and self.first <= int(addr) <= self.last

    def overlaps(self, other: IPRange) -> bool:
        """Same family and sharing at least one address (a v4 and a v6 range never overlap)."""
        return self.version == other.version and self.first <= other.last and other.first <= self.last

    def address(self, value: int) -> IPAddress:
        return _addr(self.version, value)

    @property
    def first_ip(self) -> IPAddress:
        return _addr(self.version, self.first)

    @property
    def last_ip(self) -> IPAddress:
        return _addr(self.version, self.last)

    def __str__(self) -> str:
        return str(self.first_ip) if self.size == 1 else f"{self.first_ip}-{self.last_ip}"


def _addr(version: int, value: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


MAX_ADDRESS_TEXT = 100
"""Two full IPv6 addresses and a dash fit; anything longer is refused before parsing or echoing."""


def parse_range(text: str) -> IPRange:
    """Parse an Eip `spec.address`. Raises AddressError with a message fit for a user."""
    raw = text.strip()
    if not raw:
        raise AddressError("invalid eip address format: empty address")
    if len(raw) > MAX_ADDRESS_TEXT:
        raise AddressError(
            f"invalid eip address format: {len(raw)} characters (an IP, CIDR or range is at most {MAX_ADDRESS_TEXT})"
        )
    try:
        if "/" in raw:
            if not raw.rsplit("/", 1)[1].isdigit():
                raise AddressError(f"invalid eip address format: {raw!r}: use a prefix length, not a netmask")
            net = ipaddress.ip_network(raw, strict=False)
            return IPRange(net.version, int(net.network_address), int(net.broadcast_address))
        if "-" in raw:
            parts = raw.split("-")
            if len(parts) != 2:
                raise AddressError(f"invalid eip address format: {raw!r} has more than one '-'")
            a, b = ipaddress.ip_address(parts[0].strip()), ipaddress.ip_address(parts[1].strip())
            if a.version != b.version:
                raise AddressError(f"invalid eip address format: {raw!r} mixes IPv4 and IPv6")
            if int(b) < int(a):
                raise AddressError(f"invalid eip address format: {raw!r} ends before it starts")
            return IPRange(a.version, int(a), int(b))
        ip = ipaddress.ip_address(raw)
        return IPRange(ip.version, int(ip), int(ip))
    except AddressError:
        raise
    except ValueError as exc:
        raise AddressError(f"invalid eip address format: {raw!r}: {exc}") from None


def parse_ip(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise AddressError(f"{text!r} is not an IP address") from None
