"""The speaker's decisions, kept incrementally: each change recomputes only the IPs it touches.

`speaker.desired` states the rules as total functions (all Services x all nodes per call); this
module holds the same answer as state and indexes so that the cost of an event follows the event,
not the cluster (10,000 Services x 500 nodes: a full recompute takes seconds, one Service change
here well under a millisecond):

- ip → the Services using it, ip → its pool (`ipam.pools.PoolModel`), ip → nodes allowed by
  `externalTrafficPolicy: Local`;
- Layer2: per IP its ranked candidates and owner, node → the IPs it is a candidate for, so a
  speaker dying or returning touches only those IPs and a node turning eligible only the IPs
  whose last candidate it outranks;
- BGP: one shared next-hop tuple per family for IPs without a Local Service (a node change
  rebuilds it once), per-IP tuples only for the Local ones;
- VIP: the IPs of `vip` pools go to `speaker.vip_plan` (virtual routers and priorities).

Inputs equal to the previous ones change nothing: a Service event caused by our own annotation
write, or a Node status heartbeat, costs one comparison. `take_changes` hands out what changed
since the last call; `full_layer2` / `full_bgp` recompute everything with `speaker.desired` from the
same inputs (the benchmark's baseline and the periodic consistency check). Pure: no I/O, no clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from openelb.api import names
from openelb.ipam.pools import PoolInfo, PoolModel
from openelb.speaker import desired
from openelb.speaker.desired import TOP, Announcement, NodeInfo, ServiceInfo, rank
from openelb.speaker.vip_plan import GroupKey, RouterConfig, VipPlan

FULL_MESH_NODES = 16
"""Up to this many nodes every speaker heartbeats every other one, and BGP next hops follow the
heartbeats; beyond, only the candidates of shared IPs exchange heartbeats and Node Ready decides
the next hops."""

Hops = tuple[str, ...]


@dataclass
class Changes:
    """What changed since the last `take_changes`: IP → its new value, None = no longer announced."""

    layer2: dict[str, Announcement | None] = field(default_factory=dict)
    bgp: dict[str, Hops | None] = field(default_factory=dict)
    owner_moves: int = 0
    """Layer2 IPs whose owner went from one node to another (not to or from nobody)."""
    vip: dict[GroupKey, RouterConfig | None] = field(default_factory=dict)
    """VIP mode: the virtual routers this node runs (`speaker.vip_plan`)."""

    def __bool__(self) -> bool:
        return bool(self.layer2 or self.bgp or self.vip)


@dataclass(frozen=True)
class Snapshot:
    top: int
    rack_label: str
    nodes: Mapping[str, NodeInfo]
    services: Mapping[str, ServiceInfo]
    live: frozenset[str]
    pools: PoolModel
    interfaces: Mapping[str, str | None]
    rack: str | None
    live_filter: bool


def full(snap: Snapshot) -> tuple[dict[str, Announcement], dict[str, Hops]]:
    """Layer2 announcements and BGP next hops recomputed from every input with `speaker.desired`:
    the benchmark's baseline and the periodic consistency check (safe on another thread)."""
    eips: dict[str, tuple[str, list[str]]] = {}
    bgp_ips: list[str] = []
    for ip in {ip for s in snap.services.values() for ip in s.ips}:
        pool = snap.pools.pool_of(ip)
        if pool is None or not pool.serving:
            continue
        iface = snap.interfaces.get(pool.name)
        if pool.protocol == "layer2" and iface:
            eips.setdefault(pool.name, (iface, []))[1].append(ip)
        elif pool.protocol == "bgp":
            bgp_ips.append(ip)
    services, nodes = list(snap.services.values()), list(snap.nodes.values())
    layer2 = desired.announcements(eips, services, nodes, snap.live, snap.top)
    live = snap.live if snap.live_filter else None
    return layer2, desired.bgp_next_hops(bgp_ips, services, nodes, live, snap.rack, snap.rack_label)


def _version(ip: str) -> int:
    return 6 if ":" in ip else 4


class Plan:
    def __init__(self, me: str, *, top: int = TOP, rack_label: str = names.LABEL_RACK) -> None:
        self.me = me
        self.top = top
        self.rack_label = rack_label
        self.nodes: dict[str, NodeInfo] = {}
        self.eligible: set[str] = set()
        self.live: frozenset[str] = frozenset({me})
        self.services: dict[str, ServiceInfo] = {}
        self.pools = PoolModel(())
        self._pool_cache: dict[str, PoolInfo | None] = {}
        self.interfaces: dict[str, str | None] = {}
        """Layer2 pool name → the interface it resolved to on this node (None: unusable here)."""
        self.ip_users: dict[str, set[str]] = {}
        self._allowed: dict[str, frozenset[str] | None] = {}
        # Layer2
        self.layer2: dict[str, Announcement] = {}
        self.candidate_of: dict[str, set[str]] = {}
        self._cutoff: dict[str, bytes] = {}
        """Layer2 IP with a full candidate list → the rank of its last candidate."""
        # BGP
        self.bgp: dict[str, Hops] = {}
        self._local_bgp: set[str] = set()
        """BGP IPs whose users are all Local: per-IP next hops."""
        self._shared_bgp: dict[int, set[str]] = {4: set(), 6: set()}
        """The other BGP IPs: the shared next hops of their family."""
        self._shared: dict[int, Hops] = {4: (), 6: ()}
        self._rack: str | None = None
        self._live_filter = True
        self._changes = Changes()
        self.generation = 0
        """Counts input changes: a full recompute of a snapshot is comparable while it is unchanged."""
        self._peers_dirty = True
        self._peers: set[str] = set()
        self.vip = VipPlan(me)

    # ---- inputs ---------------------------------------------------------------------------------

    def set_service(self, key: str, info: ServiceInfo | None) -> None:
        old = self.services.get(key)
        if info is not None and not info.local and info.endpoint_nodes:
            info = ServiceInfo(info.key, info.ips, False)  # endpoints only matter for Local
        if old == info:
            return
        self.generation += 1
        if info is None:
            del self.services[key]
        else:
            self.services[key] = info
        old_ips = set(old.ips) if old else set()
        new_ips = set(info.ips) if info else set()
        for ip in old_ips - new_ips:
            users = self.ip_users.get(ip)
            if users is not None:
                users.discard(key)
                if not users:
                    del self.ip_users[ip]
                    self._pool_cache.pop(ip, None)
        for ip in new_ips - old_ips:
            self.ip_users.setdefault(ip, set()).add(key)
        for ip in old_ips | new_ips:
            self._recompute_ip(ip)

    def set_node(self, name: str, info: NodeInfo | None) -> None:
        old = self.nodes.get(name)
        if old == info:
            return
        self.generation += 1
        if info is None:
            del self.nodes[name]
        else:
            self.nodes[name] = info
        was, now = name in self.eligible, info is not None and info.eligible
        if now:
            self.eligible.add(name)
        else:
            self.eligible.discard(name)
        if was != now:
            self.vip.set_eligible(self.eligible)
        if was and not now:
            for ip in list(self.candidate_of.get(name, ())):
                self._layer2_ip(ip)
        elif now and not was:
            self._node_joins_layer2(name)
        if name == self.me:
            rack = info.labels.get(self.rack_label) if info else None
            if rack != self._rack:
                self._rack = rack
                self._rebuild_bgp()
                return
        live_filter = len(self.nodes) <= FULL_MESH_NODES
        if live_filter != self._live_filter:
            self._live_filter = live_filter
            self._rebuild_bgp()
            return
        before = old is not None and self._usable(old)
        after = info is not None and self._usable(info)
        if before != after or (after and old is not None and info is not None and old.addresses != info.addresses):
            self._bgp_node_changed(name)

    @property
    def full_mesh(self) -> bool:
        return self._live_filter

    def set_live(self, live: Iterable[str]) -> None:
        """The speakers heard (this one included). Layer2 touches only the IPs whose candidates
        include a node that died or returned."""
        new = frozenset(live) | {self.me}
        if new == self.live:
            return
        self.generation += 1
        moved = self.live ^ new
        self.live = new
        for node in moved:
            for ip in list(self.candidate_of.get(node, ())):
                self._layer2_owner(ip)
        if self._live_filter:
            for node in moved:
                if node in self.nodes and self._usable(self.nodes[node], check_live=False):
                    self._bgp_node_changed(node)

    def set_pools(self, model: PoolModel, interfaces: Mapping[str, str | None]) -> None:
        """Eips changed (spec, not status) or a Layer2 interface resolved differently."""
        if model == self.pools and dict(interfaces) == self.interfaces:
            return
        self.generation += 1
        old = self.pools
        old_ifaces = self.interfaces
        self.pools, self.interfaces = model, dict(interfaces)
        self._pool_cache.clear()
        self.vip.set_pools(model, interfaces)
        for ip in list(self.ip_users):
            before, after = old.pool_of(ip), model.pool_of(ip)
            if before != after or (after is not None and old_ifaces.get(after.name) != self.interfaces.get(after.name)):
                self._recompute_ip(ip)

    # ---- outputs --------------------------------------------------------------------------------

    def take_changes(self) -> Changes:
        out, self._changes = self._changes, Changes()
        out.vip = self.vip.take_changes()
        return out

    def owner(self, ip: str) -> str | None:
        ann = self.layer2.get(ip)
        return ann.owner if ann else None

    def mine(self) -> dict[str, str]:
        """Layer2 IPs this node owns → interface."""
        return {ip: self.layer2[ip].interface for ip in self.candidate_of.get(self.me, ()) if self.owner(ip) == self.me}

    @property
    def peers_changed(self) -> bool:
        """Whether `heartbeat_peers` may answer differently than last time."""
        return self._peers_dirty

    def heartbeat_peers(self) -> set[str]:
        """The nodes that must hear my heartbeats: those ranked below me for an IP I am a
        candidate for (they take over when I die). Bounded by my IPs, not by the cluster."""
        if self._peers_dirty:
            peers: set[str] = set()
            for ip in self.candidate_of.get(self.me, ()):
                cands = self.layer2[ip].candidates
                peers.update(cands[cands.index(self.me) + 1 :])
            self._peers, self._peers_dirty = peers, False
        return self._peers

    def snapshot(self) -> Snapshot:
        """The inputs as they are now (shallow copies: the values are immutable), for a full
        recompute off the event loop."""
        return Snapshot(
            self.top, self.rack_label, dict(self.nodes), dict(self.services), self.live, self.pools,
            dict(self.interfaces), self._rack, self._live_filter,
        )  # fmt: skip

    def full_layer2(self) -> dict[str, Announcement]:
        return full(self.snapshot())[0]

    def full_bgp(self) -> dict[str, Hops]:
        return full(self.snapshot())[1]

    def consistent(self) -> bool:
        """Whether the incremental state equals a full recompute."""
        return full(self.snapshot()) == (self.layer2, self.bgp)

    def adopt(self, layer2: Mapping[str, Announcement], bgp: Mapping[str, Hops]) -> bool:
        """Compare with a full recompute of the current inputs; on any difference take the full
        answer (handed out as changes). Returns whether they agreed."""
        if layer2 == self.layer2 and bgp == self.bgp:
            return True
        for ip in self.layer2.keys() | layer2.keys():
            self._set_layer2(ip, layer2.get(ip))
        for ip in self.bgp.keys() | bgp.keys():
            hops = bgp.get(ip)
            if hops != self.bgp.get(ip):
                if hops:
                    self.bgp[ip] = hops
                else:
                    del self.bgp[ip]
                self._changes.bgp[ip] = hops
        return False

    # ---- per IP ---------------------------------------------------------------------------------

    def _pool(self, ip: str) -> PoolInfo | None:
        """Cached per IP in use (cleared when the pools change): parsing an address costs more
        than the rest of a per-IP decision."""
        try:
            return self._pool_cache[ip]
        except KeyError:
            pool = self._pool_cache[ip] = self.pools.pool_of(ip)
            return pool

    def _layer2_pool(self, ip: str) -> PoolInfo | None:
        pool = self._pool(ip)
        if pool is None or pool.protocol != "layer2" or not pool.serving or not self.interfaces.get(pool.name):
            return None
        return pool

    def _bgp_pool(self, ip: str) -> PoolInfo | None:
        pool = self._pool(ip)
        return pool if pool is not None and pool.protocol == "bgp" and pool.serving else None

    def _recompute_ip(self, ip: str) -> None:
        users = [self.services[k] for k in self.ip_users.get(ip, ())]
        if users and all(s.local for s in users):
            # Only nodes with a ready local endpoint; one Cluster-policy user opens every node.
            self._allowed[ip] = frozenset().union(*(s.endpoint_nodes for s in users))
        elif users:
            self._allowed[ip] = None
        else:
            self._allowed.pop(ip, None)
        self._layer2_ip(ip)
        self._bgp_ip(ip)
        pool = self._pool(ip) if ip in self.ip_users else None
        if pool is not None and pool.protocol == "vip":
            self.vip.set_ip(ip, pool.name, self._allowed.get(ip))
        else:
            self.vip.set_ip(ip, None, None)

    def _layer2_ip(self, ip: str) -> None:
        """Candidates (ranked) and owner of one IP from scratch: O(eligible nodes)."""
        pool = self._layer2_pool(ip) if ip in self.ip_users else None
        if pool is None:
            self._set_layer2(ip, None)
            return
        allowed = self._allowed.get(ip)
        pool_nodes = self.eligible if allowed is None else self.eligible & allowed
        order = heapq.nsmallest(self.top, pool_nodes, key=lambda n: rank(n, ip))
        users = tuple(sorted(self.ip_users[ip]))
        owner = next((n for n in order if n in self.live), None)
        iface = self.interfaces[pool.name]
        assert iface is not None
        self._set_layer2(ip, Announcement(ip, pool.name, iface, owner, users, tuple(order)))

    def _layer2_owner(self, ip: str) -> None:
        """Only liveness changed: same candidates, maybe another owner. O(top)."""
        ann = self.layer2[ip]
        owner = next((n for n in ann.candidates if n in self.live), None)
        if owner != ann.owner:
            self._set_layer2(ip, Announcement(ann.ip, ann.eip, ann.interface, owner, ann.services, ann.candidates))

    def _node_joins_layer2(self, node: str) -> None:
        """A node became eligible: it enters the candidates of an IP only if it outranks that
        IP's last candidate (or the list is short). One hash per Layer2 IP."""
        for ip in list(self.layer2):
            allowed = self._allowed.get(ip)
            if allowed is not None and node not in allowed:
                continue
            cutoff = self._cutoff.get(ip)
            if cutoff is None or rank(node, ip) < cutoff:
                self._layer2_ip(ip)

    def _set_layer2(self, ip: str, ann: Announcement | None) -> None:
        old = self.layer2.get(ip)
        if old == ann:
            return
        old_cands = old.candidates if old else ()
        new_cands = ann.candidates if ann else ()
        if old_cands != new_cands:
            for n in old_cands:
                s = self.candidate_of.get(n)
                if s is not None:
                    s.discard(ip)
                    if not s:
                        del self.candidate_of[n]
            for n in new_cands:
                self.candidate_of.setdefault(n, set()).add(ip)
            if self.me in old_cands or self.me in new_cands:
                self._peers_dirty = True
            if ann is not None and len(new_cands) >= self.top:
                self._cutoff[ip] = rank(new_cands[-1], ip)
            else:
                self._cutoff.pop(ip, None)
        if ann is None:
            del self.layer2[ip]
        else:
            self.layer2[ip] = ann
        if old is not None and ann is not None and old.owner and ann.owner and old.owner != ann.owner:
            self._changes.owner_moves += 1
        self._changes.layer2[ip] = ann

    # ---- BGP ------------------------------------------------------------------------------------

    def _usable(self, node: NodeInfo, check_live: bool = True) -> bool:
        """A next hop: eligible, alive (full mesh only) and in this speaker's rack if it has one."""
        return (
            node.eligible
            and (not check_live or not self._live_filter or node.name in self.live)
            and (self._rack is None or node.labels.get(self.rack_label) == self._rack)
        )

    def _usable_nodes(self) -> list[NodeInfo]:
        return [n for n in self.nodes.values() if self._usable(n)]

    def _rebuild_shared(self) -> bool:
        usable = self._usable_nodes()
        shared = {v: tuple(sorted({a for n in usable if (a := n.address(v))})) for v in (4, 6)}
        changed = shared != self._shared
        self._shared = shared
        return changed

    def _rebuild_bgp(self) -> None:
        self._rebuild_shared()
        for ip in list(self.ip_users):
            self._bgp_ip(ip)

    def _bgp_node_changed(self, name: str) -> None:
        before = self._shared
        if self._rebuild_shared():
            for version, hops in self._shared.items():
                if hops == before[version]:
                    continue
                for ip in self._shared_bgp[version]:  # the hot loop of a node change: no lookups
                    if hops:
                        self.bgp[ip] = hops
                    else:
                        self.bgp.pop(ip, None)
                    self._changes.bgp[ip] = hops or None
        for ip in list(self._local_bgp):
            allowed = self._allowed.get(ip)
            if allowed is None or name in allowed:
                self._bgp_ip(ip)

    def _bgp_ip(self, ip: str) -> None:
        hops: Hops = ()
        version = _version(ip)
        self._local_bgp.discard(ip)
        self._shared_bgp[version].discard(ip)
        if ip in self.ip_users and self._bgp_pool(ip) is not None:
            allowed = self._allowed.get(ip)
            if allowed is None:
                self._shared_bgp[version].add(ip)
                hops = self._shared[version]
            else:
                self._local_bgp.add(ip)
                usable = (self.nodes[n] for n in allowed if n in self.nodes)
                hops = tuple(sorted({a for n in usable if self._usable(n) and (a := n.address(version))}))
        old = self.bgp.get(ip)
        if hops:
            if old != hops:
                self.bgp[ip] = hops
                self._changes.bgp[ip] = hops
        elif old is not None:
            del self.bgp[ip]
            self._changes.bgp[ip] = None
