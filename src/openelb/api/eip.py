"""The Eip resource: parsing a manifest into a pool, and the validation rules shared by the
admission webhook and the controller (which re-checks them, since a webhook can be absent)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from openelb.api import names
from openelb.ipam.allocator import Pool
from openelb.ipam.ranges import AddressError, IPRange, parse_range

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
        )

    def to_pool(self, rng: IPRange) -> Pool:
        return Pool(
            name=self.name,
            range=rng,
            disabled=self.disable,
            default=self.default,
            priority=self.priority,
            namespaces=frozenset(self.namespaces),
            namespace_selector=self.namespace_selector,
            deleting=self.deleting,
        )


def is_default(annotations: Mapping[str, str]) -> bool:
    """Exactly "true" as OpenELB's IPAM reads it (its webhook's case-insensitive check was a bug)."""
    return annotations.get(names.ANNOTATION_DEFAULT_EIP) == "true"


def validate(eip: EipView, others: Iterable[EipView]) -> list[str]:
    """Problems that make the Eip unusable, with OpenELB's messages where it had one."""
    problems = []
    rng: IPRange | None = None
    try:
        rng = parse_range(eip.address)
    except AddressError as exc:
        problems.append(str(exc))
    if eip.protocol not in PROTOCOLS:
        problems.append(f"protocol must be one of {', '.join(PROTOCOLS)}, not {eip.protocol!r}")
    if eip.protocol in ("layer2", "vip") and not eip.interface:
        problems.append("if protocol is layer2 or vip, interface should not be empty")
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
    return problems
