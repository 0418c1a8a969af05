"""The Eip resource: parsing a manifest into a pool, and the validation rules shared by the
admission webhook and the controller (which re-checks them, since a webhook can be absent)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from openelb.api import names
from openelb.api.ranges import AddressError, IPRange, parse_range

PROTOCOLS = ("bgp", "layer2", "vip")


@dataclass(frozen=True)
class EipView:
    """The fields of an Eip object the controller and webhook read."""

    name: str
    address: str
    protocol: str
    interface: str
    disable: bool
    priority: int
    namespaces: tuple[str, ...]
    namespace_selector: Mapping[str, str] | None
    default: bool
    deleting: bool
    created: str
    vrid: str = ""
    """The raw `vip.openelb.kubesphere.io/vrid` annotation (`vip` Eips)."""
    advert_interval: str = ""

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> EipView:
        md = obj.get("metadata") or {}
        if not isinstance(md, Mapping):
            md = md.to_dict()
        spec = obj.get("spec") or {}
        ann = md.get("annotations") or {}
        return cls(
            name=str(md.get("name", "")),
            address=str(spec.get("address", "")),
            protocol=str(spec.get("protocol") or "bgp"),
            interface=str(spec.get("interface") or ""),
            disable=bool(spec.get("disable", False)),
            priority=int(spec.get("priority") or 0),
            namespaces=tuple(spec.get("namespaces") or ()),
            namespace_selector=spec.get("namespaceSelector"),
            default=is_default(ann),
            deleting=md.get("deletionTimestamp") is not None,
            created=str(md.get("creationTimestamp") or ""),
            vrid=str(ann.get(names.ANNOTATION_VIP_VRID) or ""),
            advert_interval=str(ann.get(names.ANNOTATION_VIP_ADVERT_INTERVAL) or ""),
        )


def is_default(annotations: Mapping[str, str]) -> bool:
    """Exactly "true" as OpenELB's IPAM reads it (its webhook's case-insensitive check was a bug)."""
    return annotations.get(names.ANNOTATION_DEFAULT_EIP) == "true"


MAX_INTERFACE = 64
"""IFNAMSIZ is 16; `can_reach:` and an IPv6 address is 55."""
MAX_NAMESPACES = 1000


def validate(eip: EipView, others: Iterable[EipView]) -> list[str]:
    """Problems that make the Eip unusable, with OpenELB's messages where it had one."""
    problems = []
    rng: IPRange | None = None
    try:
        rng = parse_range(eip.address)
    except AddressError as exc:
        problems.append(str(exc))
    if rng is not None:
        special = _special_block(rng)
        if special:
            problems.append(f"eip address {eip.address} overlaps {special}: such addresses cannot be Service IPs")
    if eip.protocol not in PROTOCOLS:
        problems.append(f"protocol must be one of {', '.join(PROTOCOLS)}, not {eip.protocol!r}")
    if eip.protocol in ("layer2", "vip") and not eip.interface:
        problems.append("if protocol is layer2 or vip, interface should not be empty")
    if len(eip.interface) > MAX_INTERFACE:
        problems.append(
            f"interface: {len(eip.interface)} characters (a name or can_reach:<ip>, at most {MAX_INTERFACE})"
        )
    if len(eip.namespaces) > MAX_NAMESPACES or any(len(n) > 63 for n in eip.namespaces):
        problems.append(f"namespaces: at most {MAX_NAMESPACES} names of at most 63 characters")
    if eip.protocol == "vip":
        for parse, text in ((parse_vrids, eip.vrid), (parse_advert_interval, eip.advert_interval)):
            try:
                parse(text)
            except ValueError as exc:
                problems.append(str(exc))
    for other in others:
        if other.name == eip.name:
            continue
        if rng is not None:
            try:
                other_rng = parse_range(other.address)
            except AddressError:
                other_rng = None
            if other_rng is not None and rng.overlaps(other_rng):
                problems.append(f"eip address overlap with {other.name}")
            if eip.default and other.default and other_rng is not None and other_rng.version == rng.version:
                problems.append(f"already exists a default EIP: {other.name} (one default per address family)")
        clash = _vrid_clash(eip, other)
        if clash:
            problems.append(clash)
    return problems


SPECIAL_BLOCKS = (
    ("0.0.0.0/8", "0.0.0.0/8 (this network, the unspecified address)"),
    ("127.0.0.0/8", "127.0.0.0/8 (loopback)"),
    ("169.254.0.0/16", "169.254.0.0/16 (link-local)"),
    ("224.0.0.0/4", "224.0.0.0/4 (multicast)"),
    ("240.0.0.0/4", "240.0.0.0/4 (reserved, with the broadcast address)"),
    ("::/127", "::/127 (the unspecified and loopback addresses)"),
    ("::ffff:0:0/96", "::ffff:0:0/96 (IPv4-mapped)"),
    ("fe80::/10", "fe80::/10 (link-local)"),
    ("ff00::/8", "ff00::/8 (multicast)"),
)
"""Blocks no pool may touch (issue 14 #6: `0.0.0.0/0` handed out 0.0.0.0). The network and
broadcast addresses of an IPv4 CIDR pool are handed out, as in Go OpenELB and MetalLB's default:
a Service IP is a /32 announced on its own, not a host on the pool's subnet."""


def _special_block(rng: IPRange) -> str | None:
    for cidr, name in SPECIAL_BLOCKS:
        block = parse_range(cidr)
        if block.version == rng.version and rng.overlaps(block):
            return name
    return None


def _vrid_clash(eip: EipView, other: EipView) -> str | None:
    """Two `vip` Eips pinning overlapping VRIDs would fight over one virtual router."""
    if eip.protocol != "vip" or other.protocol != "vip":
        return None
    try:
        mine, theirs = parse_vrids(eip.vrid), parse_vrids(other.vrid)
    except ValueError:
        return None
    if mine and theirs and mine[0] <= theirs[1] and theirs[0] <= mine[1]:
        return f"{names.ANNOTATION_VIP_VRID} {eip.vrid} overlaps the VRIDs {other.vrid} of Eip {other.name}"
    return None


DEFAULT_ADVERT_INTERVAL_CS = 10
"""100 ms: a backup takes over ~0.35 s after the master falls silent (3 intervals + skew)."""


def parse_vrids(text: str) -> tuple[int, int] | None:
    """`vip.openelb.kubesphere.io/vrid`: `42` or `40-47` → (first, last); "" → None (chosen)."""
    if not text.strip():
        return None
    first, sep, last = text.strip().partition("-")
    try:
        lo, hi = int(first), int(last) if sep else int(first)
    except ValueError:
        raise ValueError(f"{names.ANNOTATION_VIP_VRID}: {text!r} is not a VRID (1-255) or a range like 40-47") from None
    if not 1 <= lo <= hi <= 255:
        raise ValueError(f"{names.ANNOTATION_VIP_VRID}: {text!r} must lie within 1-255, first <= last")
    return lo, hi


def parse_advert_interval(text: str) -> int:
    """`vip.openelb.kubesphere.io/advert-interval` → centiseconds (VRRPv3's unit): `100ms`,
    `1s`, `0.5` (seconds, as keepalived's advert_int); "" → the default."""
    t = text.strip()
    if not t:
        return DEFAULT_ADVERT_INTERVAL_CS
    try:
        seconds = float(t[:-2]) / 1000 if t.endswith("ms") else float(t[:-1] if t.endswith("s") else t)
    except ValueError:
        seconds = float("nan")
    cs = 0 if math.isnan(seconds) else round(seconds * 100)
    if not 1 <= cs <= 4095 or abs(cs / 100 - seconds) > 1e-9:
        raise ValueError(
            f"{names.ANNOTATION_VIP_ADVERT_INTERVAL}: {text!r} must be 10ms-40.95s in steps of 10ms (e.g. 100ms, 1s)"
        )
    return cs
