"""The one pool model: which Eips are pools, which pool an IP belongs to, and how it is announced.

The controller allocates from these pools, the speakers announce an IP by the pool it lies in, and
`openelb status` shows that pool: all three read this module, so with overlapping Eips (possible
without the webhook) an IP is announced through exactly the pool the controller allocated it from.
Precedence: the older Eip (creation time, then name) wins an overlap and the newer one is refused
with the overlap named, so an existing allocation never changes pool. Accepted pools never
overlap, so an IP lies in at most one of them.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from openelb.api.eip import DEFAULT_ADVERT_INTERVAL_CS, EipView, parse_advert_interval, parse_vrids, validate
from openelb.api.ranges import IPAddress, IPRange, parse_range
from openelb.ipam.allocator import Pool


@dataclass(frozen=True)
class PoolInfo:
    """An accepted Eip as the speakers and `openelb status` read it."""

    name: str
    range: IPRange
    protocol: str
    """`bgp` (OpenELB's default when unset), `layer2` or `vip`."""
    interface: str
    disabled: bool
    deleting: bool
    vrids: tuple[int, int] | None = None
    """`vip`: the pinned VRID range, None to have one chosen."""
    interval_cs: int = DEFAULT_ADVERT_INTERVAL_CS
    """`vip`: the VRRP advertisement interval in centiseconds."""
    created: str = ""

    @property
    def serving(self) -> bool:
        """Disabled and deleted Eips stop being announced at once."""
        return not (self.disabled or self.deleting)


def accepted_pools(eips: Iterable[EipView]) -> tuple[list[Pool], dict[str, list[str]]]:
    """The pools to allocate from, and the problems of the Eips left out (oldest wins an overlap)."""
    model = PoolModel(eips)
    return [allocator_pool(model.views[p.name], p.range) for p in model.pools], model.problems


def allocator_pool(view: EipView, rng: IPRange) -> Pool:
    """An accepted Eip as the allocator's pool (its range parsed once, by the model)."""
    return Pool(
        name=view.name,
        range=rng,
        disabled=view.disable,
        default=view.default,
        priority=view.priority,
        namespaces=frozenset(view.namespaces),
        namespace_selector=view.namespace_selector,
        deleting=view.deleting,
    )


class PoolModel:
    """Accepted pools with an O(log pools) lookup of the pool an IP lies in."""

    def __init__(self, eips: Iterable[EipView]) -> None:
        self.views: dict[str, EipView] = {}
        self.pools: list[PoolInfo] = []
        self.problems: dict[str, list[str]] = {}
        accepted: list[EipView] = []
        for eip in sorted(eips, key=lambda e: (e.created, e.name)):
            issues = validate(eip, accepted)
            if issues:
                self.problems[eip.name] = issues
                continue
            accepted.append(eip)
            self.views[eip.name] = eip
            vip = eip.protocol == "vip"
            interval = parse_advert_interval(eip.advert_interval) if vip else DEFAULT_ADVERT_INTERVAL_CS
            vrids = parse_vrids(eip.vrid) if vip else None
            self.pools.append(
                PoolInfo(
                    eip.name, parse_range(eip.address), eip.protocol, eip.interface, eip.disable, eip.deleting,
                    vrids, interval, eip.created,
                )
            )  # fmt: skip
        self._sorted: dict[int, list[PoolInfo]] = {4: [], 6: []}
        for p in sorted(self.pools, key=lambda p: p.range.first):
            self._sorted[p.range.version].append(p)
        self._starts = {v: [p.range.first for p in ps] for v, ps in self._sorted.items()}

    def pool_of(self, ip: str | IPAddress) -> PoolInfo | None:
        try:
            addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        except ValueError:
            return None
        value, version = int(addr), addr.version
        i = bisect.bisect_right(self._starts[version], value) - 1
        if i < 0:
            return None
        pool = self._sorted[version][i]
        return pool if value <= pool.range.last else None

    def by_name(self, name: str) -> PoolInfo | None:
        return next((p for p in self.pools if p.name == name), None)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PoolModel) and self.pools == other.pools

    __hash__ = None  # type: ignore[assignment]
