"""The IP allocator: pools (one Eip = one range), per-Service allocations, sharing rules.

Pure and single-threaded: no Kubernetes, no I/O. The controller feeds it requests built from
Services and writes back what it returns. Semantics, beyond OpenELB v0.6:

* **Sticky.** A Service that holds IPs keeps them across reconciles, pool priority changes, pool
  fullness or disabling; it moves only when its request changes or its IP leaves every pool.
  A changed request that cannot be satisfied keeps the old IPs (an error is reported instead).
* **Dual-stack.** Each Eip is one family, so a dual-stack Service gets one IP per family, each
  from a pool of that family.
* **Sharing.** An IP is shared only when both Services requested it explicitly (OpenELB) or carry
  the same sharing key, their (protocol, port) pairs are disjoint, and their backend keys are equal
  (externalTrafficPolicy Local needs identical selectors). A conflicting request fails; it never steals.
* **Deterministic.** Lowest free address; pool order is namespace pools (non-full first, then
  priority, then name), then the default pool of the family.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from openelb.api.ranges import IPAddress, IPRange
from openelb.ipam.freeset import FreeSet


class AllocationError(Exception):
    """A request that cannot be satisfied now; the message is the user-facing reason."""


@dataclass(frozen=True)
class Pool:
    name: str
    range: IPRange
    disabled: bool = False
    default: bool = False
    priority: int = 0
    namespaces: frozenset[str] = frozenset()
    namespace_selector: Mapping[str, str] | None = None
    """None: not set. An empty mapping matches every namespace (as OpenELB)."""
    deleting: bool = False

    @property
    def version(self) -> int:
        return self.range.version

    def serves_namespace(self, namespace: str, labels: Mapping[str, str]) -> bool:
        if namespace in self.namespaces:
            return True
        sel = self.namespace_selector
        return sel is not None and all(labels.get(k) == v for k, v in sel.items())

    @property
    def namespace_bound(self) -> bool:
        return bool(self.namespaces) or self.namespace_selector is not None


@dataclass(frozen=True, order=True)
class Port:
    protocol: str
    port: int

    def __str__(self) -> str:
        return f"{self.protocol}/{self.port}"


@dataclass(frozen=True)
class Request:
    """What a Service asks for, already parsed by the controller."""

    key: str
    namespace: str = ""
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    families: tuple[int, ...] = (4,)
    """Families in preference order: (4,), (6,), (4, 6) or (6, 4)."""
    require_all: bool = True
    """False for PreferDualStack: any non-empty subset of `families` is a success."""
    pools: tuple[str, ...] = ()
    ips: tuple[IPAddress, ...] = ()
    share_key: str | None = None
    ports: frozenset[Port] = frozenset()
    backend_key: str = ""


@dataclass(frozen=True)
class Allocation:
    key: str
    ips: tuple[IPAddress, ...]
    pools: tuple[str, ...]
    """The pool of each IP, same order."""
    explicit: frozenset[IPAddress] = frozenset()
    share_key: str | None = None
    ports: frozenset[Port] = frozenset()
    backend_key: str = ""

    def pool_of(self, ip: IPAddress) -> str:
        return self.pools[self.ips.index(ip)]


class _PoolState:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.free = FreeSet(pool.range.first, pool.range.last)


class Allocator:
    def __init__(self) -> None:
        self._pools: dict[str, _PoolState] = {}
        self._allocs: dict[str, Allocation] = {}
        self._users: dict[IPAddress, dict[str, None]] = {}
        """IP -> keys using it, in the order they got it (an ordered set)."""

    # ---- pools ----------------------------------------------------------------------------

    @property
    def pools(self) -> dict[str, Pool]:
        return {name: st.pool for name, st in self._pools.items()}

    def set_pools(self, pools: Iterable[Pool]) -> set[str]:
        """Replace the pool set; returns the keys that lost an IP because it left every pool."""
        new = {p.name: p for p in pools}
        states: dict[str, _PoolState] = {}
        for name, pool in new.items():
            old = self._pools.get(name)
            if old is not None and old.pool.range == pool.range:
                old.pool = pool
                states[name] = old
            else:
                states[name] = _PoolState(pool)
        self._pools = states
        evicted: set[str] = set()
        # Rebuild the used marks of changed pools and re-home every IP.
        fresh = {name for name, st in states.items() if st.free.free == st.pool.range.size}
        for key, alloc in list(self._allocs.items()):
            ips, homes = [], []
            for ip in alloc.ips:
                home = self._pool_containing(ip)
                if home is None:
                    evicted.add(key)
                    self._drop_user(ip, key)
                    continue
                if home in fresh:
                    self._pools[home].free.take(int(ip))
                ips.append(ip)
                homes.append(home)
            if ips:
                self._allocs[key] = replace(alloc, ips=tuple(ips), pools=tuple(homes))
            else:
                del self._allocs[key]
        return evicted

    def _pool_containing(self, ip: IPAddress) -> str | None:
        for name, st in self._pools.items():
            if st.pool.range.contains(ip):
                return name
        return None

    # ---- queries --------------------------------------------------------------------------

    def get(self, key: str) -> Allocation | None:
        return self._allocs.get(key)

    def allocations(self) -> dict[str, Allocation]:
        return dict(self._allocs)

    def users(self, ip: IPAddress) -> list[str]:
        return list(self._users.get(ip, {}))

    def used(self, pool: str) -> dict[str, list[str]]:
        """`Eip.status.used` of a pool: IP -> keys, in address order."""
        st = self._pools[pool]
        out = {}
        for ip in sorted((ip for ip in self._users if st.pool.range.contains(ip)), key=int):
            out[str(ip)] = list(self._users[ip])
        return out

    def usage(self, pool: str) -> int:
        st = self._pools[pool]
        return st.pool.range.size - st.free.free

    # ---- changes --------------------------------------------------------------------------

    def release(self, key: str) -> Allocation | None:
        alloc = self._allocs.pop(key, None)
        if alloc:
            for ip in alloc.ips:
                self._drop_user(ip, key)
        return alloc

    def _drop_user(self, ip: IPAddress, key: str) -> None:
        users = self._users.get(ip)
        if users is None:
            return
        users.pop(key, None)
        if not users:
            del self._users[ip]
            home = self._pool_containing(ip)
            if home is not None:
                self._pools[home].free.give(int(ip))

    def _add_user(self, ip: IPAddress, key: str, pool: str) -> None:
        users = self._users.setdefault(ip, {})
        if not users:
            self._pools[pool].free.take(int(ip))
        users[key] = None

    def restore(self, req: Request, ips: Iterable[IPAddress]) -> Allocation | None:
        """Take back IPs a Service already holds (controller start, takeover from Go OpenELB).

        No sharing or pool-state checks: what the cluster already uses is kept exactly. IPs that
        are in no pool are skipped (the normal reconcile then allocates anew).
        """
        self.release(req.key)
        kept: list[IPAddress] = []
        homes: list[str] = []
        for ip in ips:
            home = self._pool_containing(ip)
            if home is None or any(k.version == ip.version for k in kept):
                continue
            kept.append(ip)
            homes.append(home)
        if not kept:
            return None
        alloc = Allocation(
            req.key,
            tuple(kept),
            tuple(homes),
            explicit=frozenset(ip for ip in kept if ip in req.ips) | self._explicit_sharers(kept),
            share_key=req.share_key,
            ports=req.ports,
            backend_key=req.backend_key,
        )
        for ip in alloc.explicit:  # the sharers already restored shared it explicitly too
            for other in self._users.get(ip, {}):
                prev = self._allocs[other]
                self._allocs[other] = replace(prev, explicit=prev.explicit | {ip})
        for ip, home in zip(kept, homes, strict=True):
            self._add_user(ip, req.key, home)
        self._allocs[req.key] = alloc
        return alloc

    def _explicit_sharers(self, ips: list[IPAddress]) -> frozenset[IPAddress]:
        """An IP restored onto an already used IP was shared explicitly (the only way Go OpenELB shares)."""
        return frozenset(ip for ip in ips if self._users.get(ip))

    def assign(self, req: Request) -> Allocation:
        """Allocate for `req`, keeping the Service's current IPs whenever the request allows it."""
        current = self._allocs.get(req.key)
        if current is not None:
            kept = self._keepable(current, req)
            if kept is not None:
                return self._complete(current, kept, req)
            # The request changed: try the new one, and keep the old IPs if it cannot be met.
            self.release(req.key)
            try:
                return self._fresh(req)
            except AllocationError:
                self._reinstate(current)
                raise
        return self._fresh(req)

    def _reinstate(self, alloc: Allocation) -> None:
        for ip, pool in zip(alloc.ips, alloc.pools, strict=True):
            self._add_user(ip, alloc.key, pool)
        self._allocs[alloc.key] = alloc

    def _keepable(self, current: Allocation, req: Request) -> list[IPAddress] | None:
        """The current IPs the request still accepts, or None when the request moved away."""
        kept = []
        for ip, pool in zip(current.ips, current.pools, strict=True):
            if ip.version not in req.families:
                continue  # family dropped: release just that one
            wanted_ip = next((r for r in req.ips if r.version == ip.version), None)
            if wanted_ip is not None and wanted_ip != ip:
                return None
            wanted_pools = [p for p in req.pools if self._family_of(p) == ip.version]
            if wanted_pools and pool not in wanted_pools:
                return None
            kept.append(ip)
        return kept

    def _family_of(self, pool: str) -> int | None:
        st = self._pools.get(pool)
        return st.pool.version if st else None

    def _complete(self, current: Allocation, kept: list[IPAddress], req: Request) -> Allocation:
        """Keep `kept`, re-check sharing with the new ports/key, and add missing families."""
        for ip in kept:
            self._check_share(ip, req, explicit=ip in current.explicit or ip in req.ips)
        self.release(req.key)
        chosen: dict[int, tuple[IPAddress, str, bool]] = {}
        for ip in kept:
            chosen[ip.version] = (ip, current.pool_of(ip), ip in current.explicit or ip in req.ips)
        try:
            return self._finish(req, chosen)
        except AllocationError:
            self._reinstate(current)
            raise

    def _fresh(self, req: Request) -> Allocation:
        return self._finish(req, {})

    def _finish(self, req: Request, chosen: dict[int, tuple[IPAddress, str, bool]]) -> Allocation:
        errors: list[str] = []
        for fam in req.families:
            if fam in chosen:
                continue
            try:
                chosen[fam] = self._pick(req, fam)
            except AllocationError as exc:
                errors.append(str(exc))
        missing = [f for f in req.families if f not in chosen]
        if not chosen or (req.require_all and missing):
            raise AllocationError("; ".join(errors) or "no address family to allocate")
        order = [f for f in req.families if f in chosen]
        ips = tuple(chosen[f][0] for f in order)
        alloc = Allocation(
            req.key,
            ips,
            tuple(chosen[f][1] for f in order),
            explicit=frozenset(chosen[f][0] for f in order if chosen[f][2]),
            share_key=req.share_key,
            ports=req.ports,
            backend_key=req.backend_key,
        )
        for ip, pool in zip(alloc.ips, alloc.pools, strict=True):
            self._add_user(ip, req.key, pool)
        self._allocs[req.key] = alloc
        return alloc

    # ---- choosing -------------------------------------------------------------------------

    def _candidates(self, req: Request, fam: int) -> list[_PoolState]:
        """Pools to try for one family, in OpenELB's order (§3.2), usable ones only."""
        name = _fam_name(fam)
        if req.pools:
            named = [self._pools.get(p) for p in req.pools]
            unknown = [p for p, st in zip(req.pools, named, strict=True) if st is None]
            usable = [st for st in named if st is not None and st.pool.version == fam]
            if not usable:
                if unknown:
                    raise AllocationError(f"eip {', '.join(unknown)} not found")
                raise AllocationError(f"service can't use different family eip: no {name} eip in {list(req.pools)}")
            for st in usable:
                self._check_usable(st.pool)
            return usable
        bound = [
            st
            for st in self._pools.values()
            if st.pool.version == fam
            and st.pool.namespace_bound
            and not st.pool.disabled
            and not st.pool.deleting
            and st.pool.serves_namespace(req.namespace, req.namespace_labels)
        ]
        if bound:
            bound.sort(key=lambda st: (st.free.free == 0, st.pool.priority, st.pool.name))
            return bound
        defaults = sorted(
            (
                st
                for st in self._pools.values()
                if st.pool.version == fam and st.pool.default and not st.pool.disabled and not st.pool.deleting
            ),
            key=lambda st: st.pool.name,
        )
        if not defaults:
            raise AllocationError(f"no available default eip found for {name}")
        return defaults

    @staticmethod
    def _check_usable(pool: Pool) -> None:
        if pool.deleting:
            raise AllocationError(f"eip:{pool.name} is deleting")
        if pool.disabled:
            raise AllocationError(f"eip:{pool.name} is disabled")

    def _pick(self, req: Request, fam: int) -> tuple[IPAddress, str, bool]:
        wanted = next((ip for ip in req.ips if ip.version == fam), None)
        if wanted is not None:
            home = self._pool_containing(wanted)
            if home is None:
                raise AllocationError(f"no available eip was found containing the ip:[{wanted}]")
            st = self._pools[home]
            if req.pools and home not in req.pools and any(self._family_of(p) == fam for p in req.pools):
                raise AllocationError(f"the specified ip:{wanted} is beyond the range of eip[{', '.join(req.pools)}]")
            self._check_usable(st.pool)
            self._check_share(wanted, req, explicit=True)
            return wanted, home, True
        errors = []
        for st in self._candidates(req, fam):
            ip = self._pick_in(st, req)
            if ip is not None:
                return ip, st.pool.name, False
            errors.append(f"eip {st.pool.name} has no suitable ip to allocate")
        raise AllocationError("; ".join(errors))

    def _pick_in(self, st: _PoolState, req: Request) -> IPAddress | None:
        rng = st.pool.range
        if req.share_key:
            sharable = sorted(
                (
                    ip
                    for ip, users in self._users.items()
                    if rng.contains(ip) and any(self._allocs[k].share_key == req.share_key for k in users)
                ),
                key=int,
            )
            for ip in sharable:
                try:
                    self._check_share(ip, req, explicit=False)
                    return ip
                except AllocationError:
                    continue
        low = st.free.lowest()
        return rng.address(low) if low is not None else None

    def _check_share(self, ip: IPAddress, req: Request, *, explicit: bool) -> None:
        others = [self._allocs[k] for k in self._users.get(ip, {}) if k != req.key]
        for other in others:
            by_request = explicit and ip in other.explicit
            by_key = req.share_key is not None and req.share_key == other.share_key
            if not (by_request or by_key):
                raise AllocationError(
                    f"ip {ip} is used by {other.key}; to share it, both services must request it "
                    f"or carry the same share key"
                )
            clash = sorted(req.ports & other.ports)
            if clash:
                raise AllocationError(
                    f"ip {ip} is shared with {other.key} and port {', '.join(map(str, clash))} is already in use"
                )
            if req.backend_key != other.backend_key:
                raise AllocationError(
                    f"ip {ip} is shared with {other.key}: services sharing an ip must have the same "
                    f"externalTrafficPolicy, and Local ones the same selector"
                )


def _fam_name(fam: int) -> str:
    return "IPv4" if fam == 4 else "IPv6"
