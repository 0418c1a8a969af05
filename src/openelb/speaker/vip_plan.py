"""VIP mode's decisions: the virtual routers, their VRIDs, and this node's priority in each. Pure.

Every speaker computes the same answer from the same cluster state, whatever order the events
came in (`docs/vip.md`):

- **VRIDs per Eip** (`allocate_vrids`): an Eip's `vip.openelb.kubesphere.io/vrid` pins a VRID or a
  range; the others get `DEFAULT_VRIDS` free VRIDs each, probing from a hash of the Eip's name,
  in Eip age order (older first: a new Eip never takes an existing one's VRIDs). Pinned ranges
  that overlap an older pin are refused, named in the problem. Disabled Eips keep theirs.
- **Virtual routers of an Eip**: the first half of its VRIDs (rounded up) are buckets for the IPs
  of `externalTrafficPolicy: Cluster` Services, an IP's bucket a hash of the IP (an IP never
  changes router when nodes come and go); the other half serve `Local` IPs, one router per set of
  nodes with endpoints (sorted; sets beyond the VRIDs left are not announced and counted).
- **Priorities**: a router's candidates are the eligible nodes (Ready, not excluded; for Local,
  with a ready endpoint), ranked by a hash of (router, node); rank r has priority 254 - r (min 1).
  With preemption, the highest-ranked node whose speaker runs is master: routers, and so IPs,
  spread over the nodes, and a dead master's backups are already ordered.

Incremental: an IP change touches its router (and, for a new or vanished Local node set, that
Eip's Local routers); an eligibility change re-ranks the routers (a few hundred at most).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from openelb.ipam.pools import PoolInfo, PoolModel

DEFAULT_VRIDS = 16
"""VRIDs an Eip without a pinned range gets: 8 buckets for Cluster IPs, 8 Local node sets."""
MAX_PRIORITY = 254

GroupKey = tuple[str, str]
"""(Eip name, "c<bucket>" or "l:<node,node,...>")."""


@dataclass(frozen=True)
class RouterConfig:
    """One virtual router as this node runs it (only where this node is a candidate)."""

    eip: str
    group: str
    vrid: int
    family: int
    interface: str
    addresses: tuple[str, ...]
    priority: int
    interval_cs: int
    expected_master: str
    """The top-ranked candidate: master while its speaker runs."""


def _h(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def allocate_vrids(pools: Iterable[PoolInfo]) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """VRIDs of every `vip` pool, and the problem of each pool that got none."""
    vips = sorted((p for p in pools if p.protocol == "vip"), key=lambda p: (p.created, p.name))
    taken: dict[int, str] = {}
    out: dict[str, tuple[int, ...]] = {}
    problems: dict[str, str] = {}
    for p in vips:
        if p.vrids is None:
            continue
        wanted = range(p.vrids[0], p.vrids[1] + 1)
        clash = sorted({taken[v] for v in wanted if v in taken})
        if clash:
            problems[p.name] = f"VRIDs {p.vrids[0]}-{p.vrids[1]} overlap those pinned by Eip {', '.join(clash)}"
            continue
        out[p.name] = tuple(wanted)
        taken.update(dict.fromkeys(wanted, p.name))
    for p in vips:
        if p.vrids is not None:
            continue
        start = _h(p.name) % 255
        got = []
        for k in range(255):
            v = 1 + (start + k) % 255
            if v not in taken:
                got.append(v)
                taken[v] = p.name
                if len(got) == DEFAULT_VRIDS:
                    break
        if got:
            out[p.name] = tuple(got)
        else:
            problems[p.name] = "no VRID left (1-255 all used by other Eips): pin a range on an Eip with fewer IPs"
    return out, problems


def cluster_buckets(vrids: tuple[int, ...]) -> int:
    return len(vrids) - len(vrids) // 2


def group_of(ip: str, pool: PoolInfo, vrids: tuple[int, ...], allowed: frozenset[str] | None) -> str:
    if allowed is None:
        return f"c{_h(ip) % cluster_buckets(vrids)}"
    return "l:" + ",".join(sorted(allowed))


def node_rank(router: str, node: str) -> int:
    return _h(f"{router}#{node}")


def priority_of(
    me: str, candidates: Iterable[str], router: str, rank: Callable[[str, str], int] = node_rank
) -> tuple[int, str] | None:
    """(this node's priority, the expected master) among `candidates`; None if not one.
    O(candidates) comparisons: my rank is how many candidates hash below me."""
    cands = list(candidates)
    if me not in cands:
        return None
    mine = rank(router, me)
    below = sum(1 for n in cands if rank(router, n) < mine)
    top = min(cands, key=lambda n: rank(router, n))
    return max(1, MAX_PRIORITY - below), top


class VipPlan:
    def __init__(self, me: str) -> None:
        self.me = me
        self.ips: dict[str, tuple[str, frozenset[str] | None]] = {}
        """IP of a `vip` pool → (pool, nodes allowed by Local, or None for Cluster)."""
        self.pools: dict[str, PoolInfo] = {}
        self.interfaces: dict[str, str | None] = {}
        self.vrids: dict[str, tuple[int, ...]] = {}
        self.problems: dict[str, str] = {}
        self.eligible: frozenset[str] = frozenset()
        self._group: dict[str, GroupKey] = {}
        self.members: dict[GroupKey, set[str]] = {}
        self._local_vrid: dict[GroupKey, int | None] = {}
        self.routers: dict[GroupKey, RouterConfig] = {}
        self.unannounced: set[GroupKey] = set()
        """Local node sets beyond their Eip's VRIDs."""
        self._dirty: set[GroupKey] = set()
        self._changes: dict[GroupKey, RouterConfig | None] = {}
        self._ranks: dict[str, dict[str, int]] = {}
        """router → node → its hash: computed once (a node change then costs comparisons),
        dropped with the router."""
        self._ip_int: dict[str, int] = {}

    # ---- inputs ---------------------------------------------------------------------------------

    def set_ip(self, ip: str, pool: str | None, allowed: frozenset[str] | None) -> None:
        new = (pool, allowed) if pool is not None else None
        if self.ips.get(ip) == new:
            return
        if new is None:
            del self.ips[ip]
            self._ip_int.pop(ip, None)
        else:
            self.ips[ip] = new
        self._place(ip)

    def set_eligible(self, eligible: Iterable[str]) -> None:
        new = frozenset(eligible)
        if new != self.eligible:
            self.eligible = new
            self._dirty.update(self.members)

    def set_pools(self, model: PoolModel, interfaces: Mapping[str, str | None]) -> None:
        pools = {p.name: p for p in model.pools if p.protocol == "vip"}
        ifaces = {n: interfaces.get(n) for n in pools}
        if pools == self.pools and ifaces == self.interfaces:
            return
        self.pools, self.interfaces = pools, ifaces
        self.vrids, self.problems = allocate_vrids(pools.values())
        self._dirty.update(self.members)
        for ip in list(self.ips):
            self._place(ip)  # an IP of a pool gone stays known: it returns with its pool
        self._dirty.update(self.members)
        for eip in {k[0] for k in self._local_vrid}:
            self._index_local(eip)

    # ---- outputs --------------------------------------------------------------------------------

    def take_changes(self) -> dict[GroupKey, RouterConfig | None]:
        for key in self._dirty:
            cfg = self._config(key)
            if cfg != self.routers.get(key):
                if cfg is None:
                    del self.routers[key]
                else:
                    self.routers[key] = cfg
                self._changes[key] = cfg
        self._dirty.clear()
        out, self._changes = self._changes, {}
        return out

    # ---- internals ------------------------------------------------------------------------------

    def _rank(self, router: str, node: str) -> int:
        ranks = self._ranks.setdefault(router, {})
        try:
            return ranks[node]
        except KeyError:
            r = ranks[node] = node_rank(router, node)
            return r

    def _ip_key(self, ip: str) -> int:
        try:
            return self._ip_int[ip]
        except KeyError:
            v = self._ip_int[ip] = int(ipaddress.ip_address(ip))
            return v

    def _place(self, ip: str) -> None:
        old = self._group.pop(ip, None)
        entry = self.ips.get(ip)
        pool = self.pools.get(entry[0]) if entry else None
        vrids = self.vrids.get(entry[0]) if entry else None
        usable = entry is not None and pool is not None and vrids and entry[1] != frozenset()  # Local, no endpoint
        new = (pool.name, group_of(ip, pool, vrids, entry[1])) if usable and entry and pool and vrids else None
        if old == new:
            if new is not None:
                self._group[ip] = new
            return
        if old is not None:
            members = self.members.get(old)
            if members is not None:
                members.discard(ip)
                self._dirty.add(old)
                if not members:
                    del self.members[old]
                    self._ranks.pop(f"{old[0]}/{old[1]}", None)
                    if old[1].startswith("l:"):
                        self._index_local(old[0])
        if new is not None:
            self._group[ip] = new
            fresh = new not in self.members
            self.members.setdefault(new, set()).add(ip)
            self._dirty.add(new)
            if fresh and new[1].startswith("l:"):
                self._index_local(new[0])

    def _index_local(self, eip: str) -> None:
        """VRIDs of an Eip's Local node sets: the second half of its VRIDs, in node-set order."""
        for key in [k for k in self._local_vrid if k[0] == eip]:
            del self._local_vrid[key]
            self._dirty.add(key)
        vrids = self.vrids.get(eip, ())
        spare = vrids[cluster_buckets(vrids) :] if vrids else ()
        groups = sorted(k for k in self.members if k[0] == eip and k[1].startswith("l:"))
        self.unannounced -= {k for k in self.unannounced if k[0] == eip}
        for i, key in enumerate(groups):
            self._local_vrid[key] = spare[i] if i < len(spare) else None
            if i >= len(spare):
                self.unannounced.add(key)
            self._dirty.add(key)

    def _config(self, key: GroupKey) -> RouterConfig | None:
        members = self.members.get(key)
        pool = self.pools.get(key[0])
        iface = self.interfaces.get(key[0])
        vrids = self.vrids.get(key[0])
        if not members or pool is None or not pool.serving or not iface or not vrids:
            return None
        if key[1].startswith("c"):
            vrid: int | None = vrids[int(key[1][1:])]
            candidates: Iterable[str] = self.eligible
        else:
            vrid = self._local_vrid.get(key)
            candidates = self.eligible & frozenset(key[1][2:].split(","))
        mine = priority_of(self.me, candidates, f"{key[0]}/{key[1]}", self._rank)
        if vrid is None or mine is None:
            return None
        addresses = tuple(sorted(members, key=self._ip_key))
        return RouterConfig(key[0], key[1], vrid, pool.range.version, iface, addresses, mine[0], pool.interval_cs,
                            mine[1])  # fmt: skip


def full_routers(
    me: str,
    ips: Mapping[str, tuple[str, frozenset[str] | None]],
    model: PoolModel,
    interfaces: Mapping[str, str | None],
    eligible: Iterable[str],
) -> dict[GroupKey, RouterConfig]:
    """The same answer from scratch (tests compare the incremental plan with it)."""
    plan = VipPlan(me)
    plan.set_pools(model, interfaces)
    plan.set_eligible(eligible)
    for ip, (pool, allowed) in ips.items():
        plan.set_ip(ip, pool, allowed)
    plan.take_changes()
    return dict(plan.routers)
