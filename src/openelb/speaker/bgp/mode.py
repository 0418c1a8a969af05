"""BGP mode of the speaker: BgpConf/BgpPeer → backend configuration, routes in, status out.

Reconfiguration is incremental (only changed peers restart; routes are kept as intent and re-sent
on every new session), node selectors are re-evaluated whenever this node's labels change, and
the status of sessions is written to `BgpConf.status.nodesConfStatus` and
`BgpPeer.status.nodesPeerStatus` every `status_interval` seconds — never per message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from lightkube import AsyncClient
from lightkube.types import PatchType

from openelb.api import names
from openelb.kube.events import EventRecorder, Target
from openelb.kube.informer import Informer
from openelb.kube.resources import BgpConf, BgpPeer
from openelb.protocols.bgp.codec import Prefix
from openelb.protocols.bgp.session import parse_prefix
from openelb.speaker.bgp import config as cfgmod
from openelb.speaker.bgp.backend import BgpBackend, InProcessBackend, PeerStatus
from openelb.speaker.bgp.bfd import BfdManager
from openelb.speaker.desired import NodeInfo

log = logging.getLogger("openelb.bgp")
CONF_NAME = "default"
"""Only the BgpConf named `default` is acted upon (as OpenELB)."""
CNI_LABEL = "openelb.kubesphere.io/cni"


def _skip(obj: Any) -> bool:
    md = obj.metadata
    return bool(md is None or md.deletionTimestamp or CNI_LABEL in (md.labels or {}))


class BgpMode:
    def __init__(
        self,
        client: AsyncClient,
        node: str,
        recorder: EventRecorder,
        node_info: Callable[[], NodeInfo | None],
        status_interval: float = 30.0,
    ) -> None:
        self.client = client
        self.node = node
        self.recorder = recorder
        self._node_info = node_info
        self.status_interval = status_interval
        self.confs: Informer[Any] = Informer(client, BgpConf, self._changed, name="BgpConf")
        self.peers: Informer[Any] = Informer(client, BgpPeer, self._changed, name="BgpPeer")
        self.backend: BgpBackend | None = None
        self.bfd: BfdManager | None = None
        self._dirty = asyncio.Event()
        self._warned: set[tuple[str, str, int, str]] = set()
        self.global_cfg: cfgmod.GlobalConfig | None = None
        self.active: dict[str, cfgmod.PeerConfig] = {}
        self._routes: dict[Prefix, tuple[str, ...]] = {}
        self.route_since: dict[Prefix, float] = {}
        """When each prefix was first announced (wall clock: the GoBGP API's path age)."""
        self._closed = False

    @property
    def routes(self) -> Mapping[Prefix, tuple[str, ...]]:
        """What this node announces: prefix → next hops (read by the GoBGP API)."""
        return self._routes

    @property
    def informers(self) -> list[Informer[Any]]:
        return [self.confs, self.peers]

    def _changed(self, _key: str) -> None:
        self._dirty.set()

    def node_changed(self) -> None:
        """Labels (rack, node selectors) or addresses may have changed."""
        self._dirty.set()

    def update_routes(self, changes: Mapping[str, tuple[str, ...] | None]) -> None:
        """IP → its next hops now (None: withdrawn). Kept here too: the backend is created on the
        first reconfiguration, which may come after the speaker's first decision."""
        delta = {parse_prefix(ip): hops for ip, hops in changes.items()}
        now = time.time()
        for prefix, hops in delta.items():
            if hops is None:
                self._routes.pop(prefix, None)
                self.route_since.pop(prefix, None)
            else:
                self._routes[prefix] = hops
                self.route_since.setdefault(prefix, now)
        if self.backend is not None:
            self.backend.update_routes(delta)

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._status_loop())]
        try:
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                try:
                    await self._reconfigure()
                except Exception:
                    log.exception("BGP reconfiguration failed; retrying on the next change")
        finally:
            for t in tasks:
                t.cancel()

    async def close(self, graceful_restart: bool) -> None:
        self._closed = True
        if self.bfd is not None:
            self.bfd.close()
        if self.backend is not None:
            await self.backend.close(graceful_restart)

    # ---- configuration ------------------------------------------------------------------------

    async def _warn(self, kind: str, obj: Any, reason: str, message: str) -> None:
        md = obj.metadata
        key = (kind, md.name, int(md.generation or 0), reason)
        if key in self._warned:
            return  # once per object generation
        self._warned.add(key)
        log.warning("%s %s: %s", kind, md.name, message)
        target = Target(kind, md.name, None, md.uid, api_version=f"{names.GROUP}/{names.VERSION}")
        self.recorder.emit(target, "Warning", reason, f"{self.node}: {message}")

    async def _reconfigure(self) -> None:
        me = self._node_info()
        if me is None or self._closed:
            return
        labels = me.labels
        if self.backend is None:
            hops = {v: a for v in (4, 6) if (a := me.address(v))}
            self.backend = InProcessBackend(hops)
            self.backend.set_routes(self._routes)
            self.bfd = BfdManager(self.backend.set_bfd_state)
        conf = self.confs.store.get(CONF_NAME)
        g: cfgmod.GlobalConfig | None = None
        if conf is not None and not _skip(conf):
            try:
                g = cfgmod.global_config(conf.get("spec") or {}, me.address(4), labels)
                if g.ignored:
                    fields = ", ".join(g.ignored)
                    await self._warn("BgpConf", conf, "UnsupportedFields", f"accepted but not acted upon: {fields}")
            except cfgmod.ConfigError as exc:
                await self._warn("BgpConf", conf, "InvalidBgpConf", str(exc))
        peers: dict[str, cfgmod.PeerConfig] = {}
        for obj in self.peers.store.values():
            if _skip(obj):
                continue
            name = obj.metadata.name
            spec = obj.get("spec") or {}
            if not cfgmod.selector_matches(spec.get("nodeSelector"), labels):
                continue
            try:
                peer = cfgmod.peer_config(name, spec)
            except cfgmod.ConfigError as exc:
                await self._warn("BgpPeer", obj, "InvalidBgpPeer", str(exc))
                continue
            if peer.ignored:
                fields = ", ".join(peer.ignored)
                await self._warn("BgpPeer", obj, "UnsupportedFields", f"accepted but not acted upon: {fields}")
            if peer.address in peers:
                await self._warn(
                    "BgpPeer", obj, "DuplicatePeer", f"{peer.address} is also in {peers[peer.address].name}"
                )
                continue
            peers[peer.address] = peer
        if g is None and peers:
            log.info("BgpPeers exist but no valid BgpConf %r: BGP stays down", CONF_NAME)
        self.global_cfg, self.active = g, (peers if g else {})
        await self.backend.configure(g, self.active)
        if self.bfd is not None:
            self.bfd.configure({a: p.bfd for a, p in self.active.items() if p.bfd is not None})

    # ---- status -------------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.status_interval)
            try:
                await self.write_status()
            except Exception as exc:  # the apiserver may be briefly away; next round retries
                log.warning("BGP status not written: %s", exc)

    async def write_status(self) -> None:
        g = self.global_cfg
        if g is not None and CONF_NAME in self.confs.store:
            body: dict[str, Any] = {"status": {"nodesConfStatus": {self.node: {"routerId": g.router_id, "as": g.asn}}}}
            await self.client.patch(BgpConf.Status, CONF_NAME, body, patch_type=PatchType.MERGE)
        statuses = {s.name: s for s in (self.backend.status() if self.backend else [])}
        for obj in list(self.peers.store.values()):
            name = obj.metadata.name
            mine = ((obj.get("status") or {}).get("nodesPeerStatus") or {}).get(self.node)
            st = statuses.get(name)
            if st is None and mine is None:
                continue
            value = peer_status(st) if st else None
            body = {"status": {"nodesPeerStatus": {self.node: value}}}
            await self.client.patch(BgpPeer.Status, name, body, patch_type=PatchType.MERGE)


def _messages(counts: Mapping[str, int]) -> dict[str, str]:
    keys = ("notification", "update", "open", "keepalive", "refresh", "total", "withdrawUpdate", "withdrawPrefix")
    return {k: str(counts.get(k, 0)) for k in keys}


def peer_status(st: PeerStatus) -> dict[str, Any]:
    """One node's entry of `BgpPeer.status.nodesPeerStatus`, in OpenELB's (GoBGP's) shape, plus
    `bfd` and `prefixesSent`."""
    return {
        "peerState": {
            "neighborAddress": st.address,
            "peerAs": st.peer_as,
            "localAs": st.local_as,
            "sessionState": st.state,
            "adminState": "UP",
            "flops": st.flops,
            "routerId": st.router_id,
            "messages": {"sent": _messages(st.sent), "received": _messages(st.received)},
        },
        "timersState": {
            "holdTime": str(st.hold_time),
            "keepaliveInterval": str(int(st.keepalive)),
            "negotiatedHoldTime": str(st.hold_time) if st.state == "ESTABLISHED" else "0",
            "uptime": str(int(st.uptime)) if st.uptime is not None else "0",
            "downtime": str(int(st.downtime)) if st.downtime is not None else "0",
        },
        "addPath": st.add_path,
        "prefixesSent": st.prefixes_sent,
        "bfd": st.bfd,
        "lastError": st.last_error,
    }
