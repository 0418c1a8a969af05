"""`openelb speaker`: runs on every node (host network) and announces the IPs this node owns.

Informers give the API's view (Services, EndpointSlices, Nodes, Eips); UDP heartbeats between
speakers give liveness without any API write on the failover path: a speaker that misses
heartbeats for `--dead-after` (default 350 ms) leaves every candidate set at once, and the next
ranked node starts answering and sends its gratuitous burst. A speaker that stops gracefully says
so (LEAVING) and hands over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import yaml
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import ConfigMap, Node, Service
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import PatchType
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from openelb.api import names
from openelb.ipam.ranges import AddressError, IPRange, parse_range
from openelb.kube.client import async_client
from openelb.kube.events import EventRecorder, Target
from openelb.kube.informer import Informer
from openelb.kube.resources import Eip
from openelb.protocols import heartbeat as hbp
from openelb.runtime import CannotListen, run_daemon, serve_metrics, stop_on_signals
from openelb.speaker import desired, inputs
from openelb.speaker.bgp.mode import BgpMode
from openelb.speaker.layer2 import Layer2Announcer, LocalAddresses, resolve_interface
from openelb.speaker.layer2 import stats as layer2_stats

log = logging.getLogger("openelb.speaker")
GRACE_SECONDS = 5.0
FULL_MESH_NODES = 16
"""Up to this many nodes every speaker heartbeats every other one (cheap, and every speaker then
knows every other one is up); beyond, only the candidates of shared IPs exchange heartbeats."""


@dataclass
class SpeakerOptions:
    node: str
    kubeconfig: str | None = None
    key: bytes = b"openelb-speakers"
    port: int = 7946
    interval: float = 0.05
    dead_after: float = 0.2
    enable_layer2: bool = True
    enable_bgp: bool = True
    bgp_status_interval: float = 30.0
    local_addresses: bool = True
    metrics_addr: str = "0.0.0.0:50053"


class HeartbeatProtocol(asyncio.DatagramProtocol):
    def __init__(self, speaker: Speaker) -> None:
        self.speaker = speaker

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            hb = hbp.decode(data, self.speaker.opts.key)
        except hbp.HeartbeatError:
            self.speaker.bad_heartbeats += 1
            return
        if hb.kind == hbp.PROBE:
            self.speaker.reply(hb, addr)
            return
        if hb.kind == hbp.REPLY:
            self.speaker.rtt.observe(max(0, time.time_ns() - hb.seq) / 1e9)
            return
        if self.speaker.membership.receive(hb, time.monotonic()):
            log.info("membership: %s is %s", hb.node, "leaving" if hb.kind == hbp.LEAVING else "alive")
            self.speaker.recompute_soon()


class Speaker:
    def __init__(self, opts: SpeakerOptions) -> None:
        self.opts = opts
        self.client = async_client(opts.kubeconfig, field_manager=f"openelb-speaker-{opts.node}")
        self.recorder = EventRecorder(self.client, "openelb-speaker")
        self.membership = hbp.Membership(opts.node, timeout=opts.dead_after)
        self.bad_heartbeats = 0
        self.services: Informer[Service] = Informer(self.client, Service, self._changed)
        self.slices: Informer[EndpointSlice] = Informer(self.client, EndpointSlice, self._changed)
        self.nodes: Informer[Node] = Informer(self.client, Node, self._node_changed)
        self.eips: Informer[Any] = Informer(self.client, Eip, self._changed, name="Eip")
        self.announcer: Layer2Announcer | None = None
        self.ready = False
        self.local: LocalAddresses | None = None
        self._strict_all = False
        """False while joining: heard the other speakers yet, claims nothing."""
        self.bgp = (
            BgpMode(self.client, opts.node, self.recorder, self._own_node, opts.bgp_status_interval)
            if opts.enable_bgp
            else None
        )
        self._scheduled = False
        self.transport: asyncio.DatagramTransport | None = None
        self.failovers = 0
        self._peer_addrs: list[str] = []
        self._eip_cache: dict[tuple[str, str, str], tuple[str, IPRange] | None] = {}
        self.registry = CollectorRegistry()
        self.rtt = Histogram(
            "openelb_speaker_heartbeat_rtt_seconds",
            "Round-trip time of heartbeat probes to the peers",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
            registry=self.registry,
        )
        self._metrics()

    def _metrics(self) -> None:
        """Exported at scrape time from the responders' counters and the current state."""
        speaker = self

        class Collector:
            def collect(self) -> Any:
                owned = GaugeMetricFamily("openelb_speaker_owned_ips", "IPs this node announces", labels=["family"])
                mine = list(speaker.announcer.owned) if speaker.announcer else []
                for fam in (4, 6):
                    owned.add_metric([f"IPv{fam}"], len([ip for ip in mine if ipaddress.ip_address(ip).version == fam]))
                yield owned
                for name, doc in (
                    ("requests_received", "ARP requests and Neighbor Solicitations received for owned IPs"),
                    ("responses_sent", "ARP replies and Neighbor Advertisements sent"),
                    ("gratuitous_sent", "gratuitous ARP and unsolicited NA packets sent"),
                    ("malformed", "frames dropped as malformed or off-link"),
                ):
                    c = CounterMetricFamily(f"openelb_layer2_{name}", doc)
                    c.add_metric([], float(layer2_stats[name]))
                    yield c
                c = CounterMetricFamily("openelb_speaker_ownership_gained", "IPs this node took over")
                c.add_metric([], float(speaker.failovers))
                yield c
                c = CounterMetricFamily("openelb_speaker_bad_heartbeats", "heartbeats refused (garbage or wrong key)")
                c.add_metric([], float(speaker.bad_heartbeats))
                yield c
                g = GaugeMetricFamily("openelb_speaker_live_peers", "speakers heard, this one included")
                g.add_metric([], float(len(speaker.membership.alive())))
                yield g
                backend = speaker.bgp.backend if speaker.bgp else None
                if backend is not None:
                    labels = ["peer", "address"]
                    up = GaugeMetricFamily(
                        "openelb_bgp_session_established", "1 while the session is up", labels=labels
                    )
                    paths = GaugeMetricFamily("openelb_bgp_paths_sent", "paths in the Adj-RIB-Out", labels=labels)
                    bfd = GaugeMetricFamily("openelb_bfd_up", "1 while BFD is Up (peers with BFD)", labels=labels)
                    flaps = CounterMetricFamily("openelb_bgp_session_flaps", "Established sessions lost", labels=labels)
                    for st in backend.status():
                        key = [st.name, st.address]
                        up.add_metric(key, float(st.state == "ESTABLISHED"))
                        paths.add_metric(key, float(st.prefixes_sent))
                        flaps.add_metric(key, float(st.flops))
                        if st.bfd != "disabled":
                            bfd.add_metric(key, float(st.bfd == "up"))
                    yield from (up, paths, bfd, flaps)

        self.registry.register(Collector())

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

    def _changed(self, _key: str) -> None:
        self.recompute_soon()

    def _node_changed(self, key: str) -> None:
        self.recompute_soon()
        if key == self.opts.node and self.bgp is not None:
            self.bgp.node_changed()

    def _own_node(self) -> desired.NodeInfo | None:
        node = self.nodes.store.get(self.opts.node)
        return inputs.node_infos([node])[0] if node is not None and node.status is not None else None

    def recompute_soon(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._recompute)

    # ---- inputs --------------------------------------------------------------------------

    def _layer2_eips(self) -> dict[str, tuple[str, IPRange]]:
        out = {}
        seen: set[tuple[str, str, str]] = set()
        for obj in self.eips.store.values():
            spec = obj.get("spec") or {}
            md = obj.metadata
            if spec.get("protocol") != "layer2" or spec.get("disable") or (md and md.deletionTimestamp):
                continue  # disabled and deleted Eips stop being answered at once
            key = (md.name, str(spec.get("interface") or ""), str(spec.get("address") or ""))
            if key not in self._eip_cache:  # resolving may run `ip route get`: once per Eip version
                self._eip_cache[key] = self._resolve(obj, key[1], key[2])
            resolved = self._eip_cache[key]
            if resolved is not None:
                out[md.name] = resolved
            seen.add(key)
        for stale in self._eip_cache.keys() - seen:  # edited or deleted Eips
            del self._eip_cache[stale]
        return out

    def _resolve(self, obj: Any, interface: str, address: str) -> tuple[str, IPRange] | None:
        name = obj.metadata.name
        try:
            ifname, rng = resolve_interface(interface), parse_range(address)
        except (AddressError, OSError, ValueError, subprocess.CalledProcessError) as exc:
            log.warning("eip %s unusable for layer2 on %s: %s", name, self.opts.node, exc)
            return None
        subnets = interface_subnets(ifname)
        if not any(net.version == rng.version and _within(rng, net) for net in subnets):
            # Served anyway (OpenELB issue #456): clients then need a route to the range via this link.
            message = (
                f"{self.opts.node}: {address} is outside the subnets of {ifname} "
                f"({', '.join(map(str, subnets)) or 'none'}); answering anyway"
            )
            log.warning("%s", message)
            self.recorder.emit(
                Target("Eip", name, None, obj.metadata.uid, api_version=f"{names.GROUP}/{names.VERSION}"),
                "Warning",
                "Layer2RangeOutsideSubnet",
                message,
            )
        return ifname, rng

    def _service_infos(self) -> list[desired.ServiceInfo]:
        return inputs.service_infos(self.services.store.values(), self.slices.store.values())

    def _node_infos(self) -> list[desired.NodeInfo]:
        return inputs.node_infos(self.nodes.store.values())

    # ---- decisions -----------------------------------------------------------------------

    def _recompute(self) -> None:
        self._scheduled = False
        if not self.ready:
            self._update_peers({})  # still JOINING: nothing to claim yet
            return
        services = self._service_infos()
        nodes = self._node_infos()
        if self.bgp is not None:
            self._recompute_bgp(services, nodes)
        if self.announcer is None:
            self._update_peers({})
            return
        eips = self._layer2_eips()
        in_use: dict[str, tuple[str, list[str]]] = {name: (ifname, []) for name, (ifname, _r) in eips.items()}
        for svc in services:
            for ip in svc.ips:
                for name, (_ifname, rng) in eips.items():
                    if rng.contains(ip):
                        in_use[name][1].append(ip)
        plan = desired.announcements(in_use, services, nodes, self.membership.alive())
        self._update_peers(plan)
        mine = {ip: a.interface for ip, a in plan.items() if a.owner == self.opts.node}
        gained, lost = self.announcer.set_owned(mine)
        self.failovers += len(gained)
        for ip in sorted(gained):
            log.info("announcing %s on %s", ip, mine[ip])
            asyncio.get_running_loop().create_task(self._mark_announcer(plan[ip]))
        for ip in sorted(lost):
            log.info("stopped announcing %s", ip)

    def _recompute_bgp(self, services: list[desired.ServiceInfo], nodes: list[desired.NodeInfo]) -> None:
        assert self.bgp is not None
        ranges = []
        for obj in self.eips.store.values():
            spec = obj.get("spec") or {}
            if (spec.get("protocol") or "bgp") != "bgp" or spec.get("disable") or obj.metadata.deletionTimestamp:
                continue
            with contextlib.suppress(AddressError, ValueError):
                ranges.append(parse_range(str(spec.get("address") or "")))
        ips = {ip for svc in services for ip in svc.ips if any(r.contains(ip) for r in ranges)}
        # Liveness from heartbeats: a dead node leaves every next-hop set within --dead-after.
        # Beyond the full-mesh size not every speaker hears every other one: Node Ready decides.
        live = self.membership.alive() if len(self.nodes.store) <= FULL_MESH_NODES else None
        hops = desired.bgp_next_hops(ips, services, nodes, live, self.bgp.rack)
        self.bgp.set_routes(hops)
        if self.local is not None:
            # A next hop answers ping on the IP, as in Layer2 mode; strict ARP (as kube-proxy's
            # IPVS strictARP) keeps it from answering ARP for those addresses on any link.
            me = next((n for n in nodes if n.name == self.opts.node), None)
            mine = {ip for ip, hs in hops.items() if me and me.address(6 if ":" in ip else 4) in hs}
            if mine and not self._strict_all:
                self.local.strict_arp("all")
                self._strict_all = True
            self.local.claim("bgp", mine)

    async def _mark_announcer(self, ann: desired.Announcement) -> None:
        """After taking over (never before): annotate the Services and record an Event."""
        for key in ann.services:
            ns, name = key.split("/", 1)
            svc = self.services.store.get(key)
            current = ((svc.metadata.annotations if svc and svc.metadata else None) or {}).get(
                names.ANNOTATION_LAYER2_ANNOUNCER
            )
            if current == self.opts.node:
                continue
            try:
                await self.client.patch(
                    Service,
                    name,
                    {"metadata": {"annotations": {names.ANNOTATION_LAYER2_ANNOUNCER: self.opts.node}}},
                    namespace=ns,
                    patch_type=PatchType.MERGE,
                )
            except Exception as exc:
                log.warning("cannot annotate %s: %s", key, exc)
                continue
            uid = svc.metadata.uid if svc and svc.metadata else None
            self.recorder.emit(
                Target("Service", name, ns, uid),
                "Normal",
                "Layer2Announcer",
                f"{self.opts.node} answers ARP/NDP for {ann.ip} on {ann.interface}",
            )

    # ---- heartbeats ----------------------------------------------------------------------

    def _update_peers(self, plan: dict[str, desired.Announcement]) -> None:
        """Whom to send heartbeats to: everyone in a small cluster; otherwise only the candidates
        ranked below us for our IPs (bounded by the IPs we may own, not by the cluster size)."""
        wanted = None if len(self.nodes.store) <= FULL_MESH_NODES else desired.heartbeat_peers(plan, self.opts.node)
        out = []
        for node in self.nodes.store.values():
            name = node.metadata.name if node.metadata else None
            if not name or name == self.opts.node or not node.status or (wanted is not None and name not in wanted):
                continue
            addrs = [a.address for a in node.status.addresses or [] if a.type == "InternalIP"]
            v4 = [a for a in addrs if ipaddress.ip_address(a).version == 4]
            if v4 or addrs:
                out.append((v4 or addrs)[0])
        self._peer_addrs = out

    def _peers(self) -> list[str]:
        return self._peer_addrs

    def reply(self, probe: hbp.Heartbeat, addr: tuple[str | Any, int]) -> None:
        if self.transport is not None and probe.node != self.opts.node:
            msg = hbp.encode(hbp.Heartbeat(self.opts.node, probe.seq, hbp.REPLY), self.opts.key)
            with contextlib.suppress(OSError):
                self.transport.sendto(msg, (addr[0], self.opts.port))

    def _send(self, kind: int) -> None:
        if self.transport is None:
            return
        msg = hbp.encode(hbp.Heartbeat(self.opts.node, time.time_ns(), kind), self.opts.key)
        for peer in self._peers():
            with contextlib.suppress(OSError):
                self.transport.sendto(msg, (peer, self.opts.port))

    async def _refresh(self, every: float = 30.0) -> None:
        """A slow gratuitous refresh heals switches and neighbours that missed the burst."""
        while True:
            await asyncio.sleep(every)
            if self.announcer:
                self.announcer.refresh()

    async def _heartbeats(self) -> None:
        probes_every = max(1, round(1.0 / self.opts.interval))  # one RTT probe per peer per second
        tick = 0
        while True:
            tick += 1
            if tick % probes_every == 0:
                self._send(hbp.PROBE)
            # JOINING until this speaker announces: the current owners keep the IPs until then,
            # so a returning node takes them over make-before-break.
            self._send(hbp.ALIVE if self.ready else hbp.JOINING)
            if self.membership.expire(time.monotonic()):
                self.recompute_soon()
            await asyncio.sleep(self.opts.interval)

    # ---- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.transport, _ = await loop.create_datagram_endpoint(
                lambda: HeartbeatProtocol(self),
                local_addr=("0.0.0.0", self.opts.port),  # noqa: S104 - node port
            )
        except OSError as exc:
            raise CannotListen("speaker heartbeats, --bind-port", f"UDP 0.0.0.0:{self.opts.port}", exc) from exc
        runner = await serve_metrics(self.registry, self.opts.metrics_addr) if self.opts.metrics_addr else None
        informers: list[Informer[Any]] = [self.services, self.slices, self.nodes, self.eips]
        if self.bgp is not None:
            informers += self.bgp.informers
        tasks = [asyncio.create_task(i.run()) for i in informers]
        await asyncio.gather(*(i.synced.wait() for i in informers))
        await self.check_kube_proxy()
        tasks.append(asyncio.create_task(self._heartbeats()))
        tasks.append(asyncio.create_task(self._refresh()))
        # Hear the others before claiming anything, so a restart does not briefly grab every IP.
        await asyncio.sleep(self.opts.dead_after)
        if self.opts.local_addresses:
            self.local = LocalAddresses()
        if self.opts.enable_layer2:
            self.announcer = Layer2Announcer(loop, self.local)
        self.ready = True
        if self.bgp is not None:
            self.bgp.node_changed()
            tasks.append(asyncio.create_task(self.bgp.run()))
        self._recompute()
        log.info("speaker on %s ready (heartbeat port %d)", self.opts.node, self.opts.port)
        try:
            await stop.wait()
        finally:
            self.ready = False  # no decision or reconfiguration may run while closing
            for t in tasks:
                t.cancel()
            self._send(hbp.LEAVING)  # peers take over at once
            if self.announcer:
                self.announcer.close()
            if self.bgp is not None:
                await self.bgp.close(graceful_restart=True)
            if self.local is not None:
                self.local.close()
            self.transport.close()
            if runner:
                await runner.cleanup()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await self.recorder.flush()
            await self.client.close()


def _within(rng: IPRange, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return int(net.network_address) <= rng.first and rng.last <= int(net.broadcast_address)


def interface_subnets(ifname: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = subprocess.run(["ip", "-j", "addr", "show", "dev", ifname], capture_output=True, text=True, check=False)
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for link in json.loads(out.stdout or "[]"):
        for a in link.get("addr_info", []):
            net = ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False)
            if not net.is_link_local:
                nets.append(net)
    return nets


def main(opts: SpeakerOptions) -> None:
    async def run() -> None:
        stop = stop_on_signals(GRACE_SECONDS)
        await Speaker(opts).run(stop)

    run_daemon(run(), log)
