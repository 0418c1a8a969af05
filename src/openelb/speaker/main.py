"""`openelb speaker`: runs on every node (host network) and announces the IPs this node owns.

Wiring only. Informers report keys; each key updates the incremental plan (`speaker.plan`) with
that one object, and the plan's changes go to the announcers: Layer2 responders (`layer2`), BGP
(`bgp.mode`), the host addresses (`hostnet`), the announcer annotation (`marks`). Liveness is UDP
heartbeats on their own thread (`liveness`): a speaker that misses heartbeats for `--dead-after`
leaves every candidate set at once and the next ranked node takes over; a speaker that stops
gracefully says so (LEAVING) and hands over at once. Nothing on this loop blocks: netlink runs on
worker threads, and a full recompute (the periodic self-check) on an executor thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

import yaml
from lightkube.core.exceptions import ApiError
from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.core_v1 import ConfigMap, Endpoints, Node, Service
from lightkube.resources.discovery_v1 import EndpointSlice
from prometheus_client import CollectorRegistry

from openelb.api import names
from openelb.api.eip import EipView
from openelb.api.ranges import IPRange
from openelb.ipam.pools import PoolInfo, PoolModel
from openelb.kube import memberlist
from openelb.kube.client import async_client
from openelb.kube.events import EventRecorder, Target
from openelb.kube.informer import Informer
from openelb.kube.resources import Eip
from openelb.runtime import CannotListen, run_daemon, serve_metrics, stop_on_signals
from openelb.speaker import desired, hostnet, inputs
from openelb.speaker.bgp.mode import BgpMode
from openelb.speaker.layer2 import Layer2Announcer
from openelb.speaker.liveness import Heartbeats
from openelb.speaker.marks import AnnouncerMarks
from openelb.speaker.metrics import SpeakerCollector
from openelb.speaker.plan import Plan, full
from openelb.speaker.vip_host import VipAddresses
from openelb.speaker.vip_plan import GroupKey, RouterConfig
from openelb.speaker.vip_process import VipProcess

log = logging.getLogger("openelb.speaker")
GRACE_SECONDS = 5.0
LOG_EACH_IP = 20
"""Up to this many IPs gained or lost at once are logged one by one; more as a count."""


@dataclass
class SpeakerOptions:
    node: str
    kubeconfig: str | None = None
    keys: tuple[bytes, ...] = (names.PUBLISHED_HEARTBEAT_KEY.encode(),)
    """Heartbeat keys: the first signs, any verifies. Empty: read from `secret_name`."""
    secret_name: str | None = None
    """The Secret to read the keys from (and poll for rotation) when `keys` is empty."""
    secret_poll: float = 10.0
    api_hosts: str = ""
    """GoBGP's read-only gRPC API (`--api-hosts`, e.g. `:50051`); empty: not served."""
    namespace: str = names.DEFAULT_NAMESPACE
    port: int = 7946
    bind_addr: str = "0.0.0.0"  # noqa: S104 - the node's heartbeat port
    interval: float = 0.05
    dead_after: float = 0.2
    enable_layer2: bool = True
    enable_bgp: bool = True
    enable_vip: bool = True
    """VIP mode (VRRPv3 in-process); Go OpenELB's `--enable-keepalived-vip`."""
    bgp_status_interval: float = 30.0
    local_addresses: bool = True
    metrics_addr: str = "0.0.0.0:50053"
    check_interval: float = 600.0
    """Seconds between full recomputes compared with the incremental plan (0: never)."""
    announce_settle: float = 2.0
    announce_rate: float = 20.0
    daemonset: str = ""
    """Our DaemonSet in `namespace` (""): looked up at shutdown, see `Speaker._uninstalled`."""


class Speaker:
    def __init__(self, opts: SpeakerOptions) -> None:
        self.opts = opts
        self.client = async_client(opts.kubeconfig, field_manager=f"openelb-speaker-{opts.node}")
        self.recorder = EventRecorder(self.client, "openelb-speaker")
        self.plan = Plan(opts.node)
        self.endpoints = inputs.EndpointIndex()
        self.services: Informer[Service] = Informer(
            self.client, Service, self._service_changed, transform=inputs.slim_service
        )
        self.slices: Informer[Any] = Informer(  # EndpointSlices, or Endpoints (`_endpoints_source`)
            self.client, EndpointSlice, self._slice_changed, transform=inputs.slim_slice
        )
        self.nodes: Informer[Node] = Informer(self.client, Node, self._node_changed, transform=inputs.slim_node)
        self.eips: Informer[Any] = Informer(self.client, Eip, self._eips_changed, name="Eip")
        self.heartbeats: Heartbeats | None = None
        self.announcer: Layer2Announcer | None = None
        self.host: hostnet.HostAddresses | None = None
        self.watcher: hostnet.NetWatcher | None = None
        self.marks = AnnouncerMarks(
            self.client,
            opts.node,
            self.recorder,
            self._service,
            self._owned,
            settle=opts.announce_settle,
            rate=opts.announce_rate,
        )
        self.vip: VipProcess | None = None
        self.vip_host: VipAddresses | None = None
        self.vip_ips: dict[str, RouterConfig] = {}
        """IP → the router this node is VRRP master of that holds it."""
        self.vip_marks = AnnouncerMarks(
            self.client,
            opts.node,
            self.recorder,
            self._service,
            self._vip_owned,
            settle=opts.announce_settle,
            rate=opts.announce_rate,
            annotation=names.ANNOTATION_VIP_MASTER,
            reason="VIPMaster",
            doing="is VRRP master for",
        )
        self._warned: set[tuple[str, str, str]] = set()
        self.ready = False
        self.bgp = (
            BgpMode(self.client, opts.node, self.recorder, self._own_node, opts.bgp_status_interval)
            if opts.enable_bgp
            else None
        )
        self.counts: Counter[str] = Counter()
        self._scheduled = False
        self._peers_dirty = True
        self._bgp_mine: set[str] = set()
        self._strict_all = False
        self._pools_dirty = asyncio.Event()
        self._net_changed = False
        self._eip_views: list[EipView] | None = None
        self._resolved: dict[tuple[str, str, IPRange], str | None] = {}
        self.registry = CollectorRegistry()
        self.registry.register(SpeakerCollector(self))

    # ---- inputs: one object per event ------------------------------------------------------------

    def _service_changed(self, key: str) -> None:
        svc = self.services.store.get(key)
        info = inputs.service_info(svc, self.endpoints.nodes(key)) if svc is not None else None
        self.plan.set_service(key, info)
        self._schedule()

    def _slice_changed(self, key: str) -> None:
        obj = self.slices.store.get(key)
        if isinstance(obj, Endpoints):
            obj = inputs.slice_from_endpoints(obj)
        svc_key = self.endpoints.update(key, obj)
        if svc_key is not None and svc_key in self.plan.services:
            self._service_changed(svc_key)

    def _node_changed(self, key: str) -> None:
        node = self.nodes.store.get(key)
        self.plan.set_node(key, inputs.node_info(node) if node is not None else None)
        self._peers_dirty = True
        if key == self.opts.node and self.bgp is not None:
            self.bgp.node_changed()
        self._schedule()

    def _eips_changed(self, _key: str) -> None:
        self._pools_dirty.set()

    def _net_events(self) -> None:
        """A link, address or route changed: `can_reach:` may now resolve to another interface."""
        self._net_changed = True
        self._pools_dirty.set()

    def _live_changed(self, alive: frozenset[str]) -> None:
        self.plan.set_live(alive)
        self._schedule()

    def _own_node(self) -> desired.NodeInfo | None:
        node = self.nodes.store.get(self.opts.node)
        return inputs.node_info(node) if node is not None and node.status is not None else None

    def _service(self, key: str) -> Service | None:
        return self.services.store.get(key)  # looked up each time: a relist replaces the store

    def _owned(self, ip: str) -> desired.Announcement | None:
        ann = self.plan.layer2.get(ip)
        return ann if ann is not None and ann.owner == self.opts.node and self.ready else None

    def _vip_owned(self, ip: str) -> desired.Announcement | None:
        cfg = self.vip_ips.get(ip) if self.ready else None
        if cfg is None:
            return None
        users = tuple(sorted(self.plan.ip_users.get(ip, ())))
        return desired.Announcement(ip, cfg.eip, cfg.interface, self.opts.node, users, ())

    def _vip_state(self, key: GroupKey, cfg: RouterConfig, master: bool) -> None:
        """From the VRRP process: this node became master or backup of a router."""
        for ip in cfg.addresses:
            held = self.vip_ips.get(ip)
            if master:
                self.vip_ips[ip] = cfg
                ann = self._vip_owned(ip)
                if ann is not None:
                    self.vip_marks.gained(ann)
            elif held is not None and (held.eip, held.vrid) == (cfg.eip, cfg.vrid):
                del self.vip_ips[ip]
        self._log_ips(f"VRRP {'master' if master else 'backup'} of {key[0]} vrid {cfg.vrid} for", set(cfg.addresses))

    # ---- pools: Eip specs and interfaces, resolved off the loop --------------------------------

    async def _pools_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._pools_dirty.wait()
            self._pools_dirty.clear()
            views = sorted((EipView.from_object(o) for o in self.eips.store.values()), key=lambda v: v.name)
            net_changed, self._net_changed = self._net_changed, False
            if views == self._eip_views and not net_changed:
                continue  # only Eip status changed (the controller's usage writes)
            self._eip_views = views
            model = PoolModel(views)
            if net_changed:
                self._resolved.clear()
            interfaces: dict[str, str | None] = {}
            for pool in model.pools:
                if pool.protocol == "vip" and pool.serving and not self.opts.enable_vip:
                    off = f"{self.opts.node}: VIP mode is off on this speaker (--enable-keepalived-vip=false)"
                    self._warn_eip(pool.name, "VIPModeDisabled", f"{off}: nothing announces this Eip's IPs here")
                    continue
                wanted = (pool.protocol == "layer2" and self.opts.enable_layer2) or pool.protocol == "vip"
                if wanted and pool.serving:
                    key = (pool.name, pool.interface, pool.range)
                    if key not in self._resolved:
                        self._resolved[key] = await loop.run_in_executor(None, self._resolve, pool)
                    interfaces[pool.name] = self._resolved[key]
            for stale in [k for k in self._resolved if k[0] not in interfaces]:
                del self._resolved[stale]
            self.plan.set_pools(model, interfaces)
            for eip, problem in self.plan.vip.problems.items():
                self._warn_eip(eip, "VRIDConflict", f"{problem}; this Eip's IPs are not announced")
            self._schedule()

    def _warn_eip(self, eip: str, reason: str, message: str) -> None:
        """A Warning Event on the Eip, once per speaker run, reason and message."""
        if (eip, reason, message) in self._warned:
            return
        self._warned.add((eip, reason, message))
        log.warning("eip %s: %s", eip, message)
        obj = self.eips.store.get(eip)
        uid = obj.metadata.uid if obj is not None and obj.metadata else None
        target = Target("Eip", eip, None, uid, api_version=f"{names.GROUP}/{names.VERSION}")
        self.recorder.emit(target, "Warning", reason, message)

    def _resolve(self, pool: PoolInfo) -> str | None:
        """On an executor thread: netlink round trips."""
        try:
            ifname = hostnet.resolve(pool.interface)
            subnets = hostnet.subnets(ifname)
        except OSError as exc:
            log.warning("eip %s unusable for %s on %s: %s", pool.name, pool.protocol, self.opts.node, exc)
            return None
        rng = pool.range
        inside = any(
            n.version == rng.version and int(n.network_address) <= rng.first and rng.last <= int(n.broadcast_address)
            for n in subnets
        )
        if not inside:
            # Served anyway (OpenELB issue #456): clients then need a route to the range via this link.
            message = (
                f"{self.opts.node}: {rng} is outside the subnets of {ifname} "
                f"({', '.join(map(str, subnets)) or 'none'}); answering anyway"
            )
            reason = "VIPRangeOutsideSubnet" if pool.protocol == "vip" else "Layer2RangeOutsideSubnet"
            self._loop.call_soon_threadsafe(self._warn_eip, pool.name, reason, message)
        return ifname

    # ---- applying the plan's changes ----------------------------------------------------------

    def _schedule(self) -> None:
        """A burst of events (a relist, a node death) is applied once, after the burst."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._apply)

    def _apply(self) -> None:
        self._scheduled = False
        if self._peers_dirty or self.plan.peers_changed:
            self._update_peers()
        if not self.ready:
            return  # still JOINING: the plan keeps its changes until we may claim
        changes = self.plan.take_changes()
        self.counts["moves"] += changes.owner_moves
        if changes.layer2 and self.announcer is not None:
            me = self.opts.node
            wanted = {
                ip: (a.interface if a is not None and a.owner == me else None) for ip, a in changes.layer2.items()
            }
            gained, lost = self.announcer.apply(wanted)
            self.counts["gained"] += len(gained)
            for ip in gained:
                self.marks.gained(self.plan.layer2[ip])
            self._log_ips("announcing", gained)
            self._log_ips("stopped announcing", lost)
        if changes.bgp and self.bgp is not None:
            self.bgp.update_routes(changes.bgp)
            self._claim_bgp(changes.bgp)
        if changes.vip and self.vip is not None:
            self.vip.configure(changes.vip)

    def _log_ips(self, what: str, ips: set[str]) -> None:
        if len(ips) <= LOG_EACH_IP:
            for ip in sorted(ips):
                log.info("%s %s", what, ip)
        else:
            log.info("%s %d IPs", what, len(ips))

    def _claim_bgp(self, changes: dict[str, tuple[str, ...] | None]) -> None:
        """A next hop answers ping on the IP, as in Layer2 mode; strict ARP (as kube-proxy's IPVS
        strictARP) keeps it from answering ARP for those addresses on any link."""
        if self.host is None:
            return
        me = self.plan.nodes.get(self.opts.node)
        add, remove = set(), set()
        for ip, hops in changes.items():
            addr = me.address(6 if ":" in ip else 4) if me else None
            if hops and addr in hops:
                add.add(ip)
            elif ip in self._bgp_mine:
                remove.add(ip)
        if add and not self._strict_all:
            hostnet.strict_arp("all")
            self._strict_all = True
        self._bgp_mine = (self._bgp_mine | add) - remove
        self.host.update("bgp", add, remove)

    def _update_peers(self) -> None:
        """Whom to send heartbeats to: everyone in a small cluster; otherwise only the candidates
        ranked below us for our IPs (bounded by the IPs we may own, not by the cluster size)."""
        self._peers_dirty = False
        if self.heartbeats is None:
            return
        names_ = self.plan.nodes if self.plan.full_mesh else self.plan.heartbeat_peers()
        out = []
        for name in names_:
            info = self.plan.nodes.get(name)
            if name == self.opts.node or info is None:
                continue
            addr = info.address(4) or (info.addresses[0] if info.addresses else None)
            if addr:
                out.append(addr)
        self.heartbeats.peers = tuple(out)

    # ---- periodic work -------------------------------------------------------------------------

    async def _refresh(self, every: float = 30.0) -> None:
        """A slow gratuitous refresh heals switches and neighbours that missed the burst."""
        while True:
            await asyncio.sleep(every)
            if self.announcer:
                self.announcer.refresh()

    async def _check(self) -> None:
        """Every `check_interval`: a full recompute on an executor thread, compared with the
        incremental plan (when no input changed meanwhile); a difference is counted, logged and
        replaced by the full answer."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.opts.check_interval)
            generation, snap = self.plan.generation, self.plan.snapshot()
            layer2, bgp = await loop.run_in_executor(None, full, snap)
            if self.plan.generation != generation:
                continue  # inputs moved on meanwhile: compare next time
            self.counts["checks"] += 1
            if not self.plan.adopt(layer2, bgp):
                self.counts["inconsistent"] += 1
                log.error("incremental plan differed from the full recompute; took the full answer (please report)")
                self._schedule()

    async def check_kube_proxy(self) -> str | None:
        """Warn (log + Event on our Node) when kube-proxy runs IPVS without strictARP (seed step 2):
        every node would then answer ARP for every LoadBalancer IP on kube-ipvs0."""
        try:
            cm = await self.client.get(ConfigMap, "kube-proxy", namespace="kube-system")
        except ApiError:
            return None  # no kubeadm-style ConfigMap: nothing to check
        conf = yaml.safe_load((cm.data or {}).get("config.conf", "") or "{}") or {}
        if conf.get("mode") != "ipvs" or (conf.get("ipvs") or {}).get("strictARP"):
            return None
        message = (
            "kube-proxy runs in IPVS mode without strictARP: every node answers ARP for LoadBalancer IPs; "
            "set ipvs.strictARP: true in ConfigMap kube-system/kube-proxy and restart kube-proxy"
        )
        log.warning("%s", message)
        node = self.nodes.store.get(self.opts.node)
        uid = node.metadata.uid if node and node.metadata else None
        self.recorder.emit(Target("Node", self.opts.node, None, uid), "Warning", "IPVSWithoutStrictARP", message)
        return message

    # ---- lifecycle -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        loop = self._loop = asyncio.get_running_loop()
        keys, watch = self.opts.keys, None
        if not keys:
            assert self.opts.secret_name, "speaker options need keys or a secret_name"
            watch = memberlist.KeyWatch(self.client, self.opts.namespace, self.opts.secret_name, self.opts.secret_poll)
            keys = await watch.first()
        if keys[0] == names.PUBLISHED_HEARTBEAT_KEY.encode():
            log.warning(
                "heartbeats are signed with the published default key: anyone on the node network can forge "
                "them. Put a random key in the Secret (docs/security.md)"
            )
        try:
            self.heartbeats = Heartbeats(
                self.opts.node,
                keys,
                port=self.opts.port,
                interval=self.opts.interval,
                dead_after=self.opts.dead_after,
                bind=self.opts.bind_addr,
                loop=loop,
                on_change=self._live_changed,
                registry=self.registry,
            )
        except OSError as exc:
            raise CannotListen(
                "speaker heartbeats, --bind-port", f"UDP {self.opts.bind_addr}:{self.opts.port}", exc
            ) from exc
        runner = await serve_metrics(self.registry, self.opts.metrics_addr) if self.opts.metrics_addr else None
        await self._endpoints_source()
        informers: list[Informer[Any]] = [self.services, self.slices, self.nodes, self.eips]
        if self.bgp is not None:
            informers += self.bgp.informers
        tasks = [asyncio.create_task(i.run()) for i in informers]
        tasks.append(asyncio.create_task(self._pools_loop()))
        await asyncio.gather(*(i.synced.wait() for i in informers))
        await self.check_kube_proxy()
        self._update_peers()
        self.heartbeats.start()
        tasks.append(asyncio.create_task(self._refresh()))
        if watch is not None:
            hb = self.heartbeats
            tasks.append(asyncio.create_task(watch.run(lambda ks: setattr(hb, "keys", ks))))
        # Hear the others before claiming anything, so a restart does not briefly grab every IP.
        try:
            await asyncio.wait_for(self.heartbeats.settled.wait(), 30)
        except TimeoutError:
            raise RuntimeError(
                "the heartbeat process did not report within 30 s (its errors, if any, are above); "
                f"check that `{sys.executable} -m openelb.speaker.liveness_child` can start on this node"
            ) from None
        if self.opts.local_addresses:
            self.host = await loop.run_in_executor(None, hostnet.HostAddresses)
            self.watcher = hostnet.NetWatcher(loop, self._net_events, ignore_index=self.host.index)
        if self.opts.enable_layer2:
            self.announcer = Layer2Announcer(loop, self.host)
        if self.opts.enable_vip and self.opts.local_addresses:
            self.vip_host = await loop.run_in_executor(None, VipAddresses)
            self.vip = VipProcess(loop, self._vip_state, self.vip_host)  # started with the first router
        self.ready = True
        self.heartbeats.ready = True
        tasks.append(asyncio.create_task(self.marks.run()))
        tasks.append(asyncio.create_task(self.vip_marks.run()))
        if self.opts.check_interval > 0:
            tasks.append(asyncio.create_task(self._check()))
        if self.bgp is not None:
            self.bgp.node_changed()
            tasks.append(asyncio.create_task(self.bgp.run()))
        self._apply()
        api_server = await self._serve_gobgp_api() if self.opts.api_hosts else None
        log.info("speaker on %s ready (heartbeat port %d)", self.opts.node, self.opts.port)
        try:
            await stop.wait()
        finally:
            if api_server is not None:
                await api_server.stop(0.5)
            self.ready = False  # no decision or reconfiguration may run while closing
            for t in tasks:
                t.cancel()
            self.heartbeats.leave()  # peers take over at once
            if self.vip is not None:
                await loop.run_in_executor(None, self.vip.close)  # priority 0: backups take over now
            if self.vip_host is not None:
                await loop.run_in_executor(None, self.vip_host.close)
            if self.announcer:
                self.announcer.close()
            if self.bgp is not None:
                await self.bgp.close(graceful_restart=not await self._uninstalled())
            if self.watcher is not None:
                self.watcher.close()
            if self.host is not None:
                await loop.run_in_executor(None, self.host.close)
            self.heartbeats.close()
            if runner:
                await runner.cleanup()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await self.recorder.flush()
            await self.client.close()

    async def _uninstalled(self) -> bool:
        """Whether this stop is an uninstall: our DaemonSet is gone or going, or our own RBAC or
        ServiceAccount is (403, 401; `kubectl delete -f` and `helm uninstall` remove them within
        the same second). No restart will follow then, so keeping our routes at the routers for
        restartTime (graceful restart) would only blackhole them. A rolling update or a node
        reboot keeps all of these, and anything unclear (no answer in 2 s) keeps graceful restart."""
        if not self.opts.daemonset:
            return False
        try:
            async with asyncio.timeout(2):
                ds = await self.client.get(DaemonSet, self.opts.daemonset, namespace=self.opts.namespace)
        except ApiError as exc:
            gone = exc.status.code in (401, 403, 404)
        except Exception:  # the apiserver away or slow: a restart is as likely as anything
            return False
        else:
            gone = ds.metadata is not None and ds.metadata.deletionTimestamp is not None
        if gone:
            log.info("DaemonSet %s/%s is gone (an uninstall): BGP sessions close without graceful restart",
                     self.opts.namespace, self.opts.daemonset)  # fmt: skip
        return gone

    async def _endpoints_source(self) -> None:
        """EndpointSlices, or core/v1 Endpoints where RBAC grants only those (Go OpenELB's
        ClusterRole for its speaker): one log line, the same decisions."""
        try:
            async for _ in self.client.list(EndpointSlice, namespace="*", chunk_size=1):
                break
        except ApiError as exc:
            if exc.status.code != 403:
                raise
            log.warning(
                "no RBAC to list endpointslices (Go OpenELB's ClusterRole grants endpoints): reading Endpoints "
                "instead, with the same rules; grant endpointslices list/watch to use them"
            )
            self.slices = Informer(self.client, Endpoints, self._slice_changed, transform=inputs.slim_endpoints)

    async def _serve_gobgp_api(self) -> Any:
        """Started once the speaker is ready, so Go OpenELB's readiness probe (`gobgp -p 50051
        global`) passes exactly then. Imported here: grpc costs ~30 MB of RSS."""
        from openelb.speaker.bgp import gobgp_api  # noqa: PLC0415 - only when asked for (RSS)

        try:
            return await gobgp_api.serve(self.opts.api_hosts, lambda: gobgp_api.view_of(self.bgp))
        except OSError as exc:
            raise CannotListen("GoBGP API, --api-hosts", self.opts.api_hosts, exc) from exc


def main(opts: SpeakerOptions) -> None:
    async def run() -> None:
        stop = stop_on_signals(GRACE_SECONDS)
        await Speaker(opts).run(stop)

    run_daemon(run(), log)
