"""NodeProxy mode's reconciler: one proxy workload per Service, the nodes' addresses published.

Level-triggered like the IPAM reconciler (events only enqueue the Service's key): a Service with
`node-proxy.openelb.kubesphere.io/type: deployment|daemonset` gets the workload
`nodeproxy.workload.manifest` describes (the other kind removed); the nodes whose proxy Pod is
Running and Ready are written to the Service as Go OpenELB's two annotations and — beyond it — as
`status.loadBalancer.ingress`, so `kubectl get svc` shows them. Removing the annotation, changing
the type or the ports, and deleting the Service converge with nothing left behind. No finalizer:
Go OpenELB's (whose Service hung when its workload was already gone, and which hangs every
uninstall) is removed where found; a Service deleted while we were down loses its workload at
the next start, when every workload's owner is reconciled.

Proxy Pods and workloads map back to their Service by the workload's name, indexed when the
workload is written or first seen (its annotation names the Service).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.apps_v1 import DaemonSet, Deployment
from lightkube.resources.core_v1 import ConfigMap, Node, Pod, Service
from lightkube.types import PatchType

from openelb.api import names
from openelb.controller import servicepolicy as sp
from openelb.kube.events import EventRecorder, service_target
from openelb.kube.informer import Informer
from openelb.kube.workqueue import WorkQueue
from openelb.nodeproxy import workload as wl

log = logging.getLogger("openelb.nodeproxy")
FIELD_MANAGER = "openelb-node-proxy"
KINDS: dict[str, type[Deployment] | type[DaemonSet]] = {"deployment": Deployment, "daemonset": DaemonSet}
SVC, NODE = "svc/", "node/"
STUCK_AFTER = 10.0
"""Seconds a proxy Pod may run unready before the Service gets a Warning Event."""


def _pod_ready(pod: Pod) -> bool:
    st = pod.status
    if st is None or st.phase != "Running" or pod.metadata is None or pod.metadata.deletionTimestamp:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in st.conditions or [])


class NodeProxyController:
    def __init__(  # noqa: PLR0917 - the wiring of one reconciler
        self,
        client: AsyncClient,
        services: Informer[Service],
        policy: sp.Policy,
        recorder: EventRecorder,
        namespace: str,
        image: str = wl.DEFAULT_IMAGE,
    ) -> None:
        self.client, self.services, self.policy, self.recorder = client, services, policy, recorder
        self.namespace, self.image = namespace, image
        self.queue = WorkQueue()
        selector = {names.LABEL_NODE_PROXY: "true"}
        self.pods: Informer[Pod] = Informer(client, Pod, self._on_proxy, namespace=namespace, labels=selector)
        self.deployments: Informer[Deployment] = Informer(
            client, Deployment, self._on_proxy, namespace=namespace, labels=selector
        )
        self.daemonsets: Informer[DaemonSet] = Informer(
            client, DaemonSet, self._on_proxy, namespace=namespace, labels=selector
        )
        self.nodes: Informer[Node] = Informer(client, Node, lambda k: self.queue.add(NODE + k))
        self.owner: dict[str, str] = {}
        """Workload name → Service key."""
        self.serving: dict[str, set[str]] = {}
        """Service key → names of the nodes it was last published with (a node change re-publishes)."""
        self._warned: dict[str, str] = {}
        self._stuck: dict[str, str] = {}
        self._node_addrs: dict[str, tuple[tuple[str, str], ...]] = {}

    # ---- triggers ----------------------------------------------------------------------------

    def on_service(self, key: str) -> None:
        self.queue.add(SVC + key)

    def _on_proxy(self, key: str) -> None:
        _ns, _, name = key.partition("/")
        obj = self.pods.store.get(key) or self.deployments.store.get(key) or self.daemonsets.store.get(key)
        workload = name
        if isinstance(obj, Pod):
            workload = ((obj.metadata.labels if obj.metadata else None) or {}).get("name", "")
        elif obj is not None and obj.metadata is not None:
            svc = (obj.metadata.annotations or {}).get(names.ANNOTATION_NODE_PROXY_SERVICE)
            if svc:
                self.owner[workload] = svc
        svc_key = self.owner.get(workload)
        if svc_key:
            self.queue.add(SVC + svc_key)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def _note_go_images(self) -> None:
        try:
            cm = await self.client.get(ConfigMap, "openelb-images", namespace=self.namespace)
        except ApiError:
            return
        keys = sorted(k for k in (cm.data or {}) if k in ("forward-image", "proxy-image"))
        if keys:
            log.info("ConfigMap openelb-images (%s): accepted, unused: NodeProxy's Pods run %s (`openelb forward`)",
                     ", ".join(keys), self.image)  # fmt: skip

    async def run(self) -> None:
        await self._note_go_images()
        informers = (self.pods, self.deployments, self.daemonsets, self.nodes)
        tasks = [asyncio.create_task(i.run()) for i in informers]
        try:
            await asyncio.gather(self.services.synced.wait(), *(i.synced.wait() for i in informers))
            for store in (self.deployments.store, self.daemonsets.store):
                for obj in store.values():
                    svc = ((obj.metadata.annotations if obj.metadata else None) or {}).get(
                        names.ANNOTATION_NODE_PROXY_SERVICE
                    )
                    if svc and obj.metadata and obj.metadata.name:
                        self.owner[obj.metadata.name] = svc
            for key in set(self.services.store) | set(self.owner.values()):
                self.queue.add(SVC + key)
            tasks.append(asyncio.create_task(self._worker()))
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                if key.startswith(NODE):
                    await self.reconcile_node(key.removeprefix(NODE))
                else:
                    await self.reconcile(key.removeprefix(SVC))
            except Exception:
                log.exception("node proxy %s failed; retrying", key)
                self.queue.add_after(key, 2.0)
            finally:
                self.queue.done(key)

    # ---- nodes ---------------------------------------------------------------------------------

    async def reconcile_node(self, name: str) -> None:
        """Go OpenELB's preference label on nodes with an ExternalIP; their addresses re-published."""
        node = self.nodes.store.get(name)
        if node is not None and node.metadata is not None:
            has_external = any(a.type == "ExternalIP" for a in (node.status.addresses if node.status else None) or [])
            labelled = names.LABEL_NODE_PROXY_PREFERRED in (node.metadata.labels or {})
            if has_external != labelled and any(self.serving.values()):
                value = "" if has_external else None
                patch = {"metadata": {"labels": {names.LABEL_NODE_PROXY_PREFERRED: value}}}
                try:
                    await self.client.patch(Node, name, patch, patch_type=PatchType.MERGE)
                except ApiError as exc:
                    if exc.status.code != 404:
                        raise
        # Node status heartbeats arrive every few seconds from every node: only a change of the
        # addresses this node publishes re-publishes the Services it serves (none else read them).
        addrs = tuple(
            sorted((a.type, a.address) for a in (node.status.addresses if node and node.status else None) or [])
        )
        if self._node_addrs.get(name) == addrs:
            return
        if node is None:
            self._node_addrs.pop(name, None)
        else:
            self._node_addrs[name] = addrs
        for svc_key, nodes in self.serving.items():
            if name in nodes:
                self.queue.add(SVC + svc_key)

    def _addresses(self) -> dict[str, dict[str, tuple[str, ...]]]:
        out: dict[str, dict[str, tuple[str, ...]]] = {}
        for name, node in self.nodes.store.items():
            by_type: dict[str, list[str]] = {}
            for a in (node.status.addresses if node.status else None) or []:
                by_type.setdefault(a.type, []).append(a.address)
            out[name] = {t: tuple(v) for t, v in by_type.items()}
        return out

    # ---- services ------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> None:
        svc = self.services.store.get(key)
        ns, _, name = key.partition("/")
        wname = wl.workload_name(ns, name)
        if svc is None or svc.metadata is None:
            await self._delete_workloads(wname)  # deleted (while we were down, too: `run` queues every owner)
            self.serving.pop(key, None)
            return
        md = svc.metadata
        ours = names.FINALIZER_NODE_PROXY in (md.finalizers or [])
        if md.deletionTimestamp is not None or not sp.is_node_proxy(svc, self.policy):
            if ours or self._exists(wname) or key in self.serving:
                await self._teardown(svc, key, wname, deleting=md.deletionTimestamp is not None)
            return
        kind = sp.node_proxy_type(svc)
        if kind not in names.NODE_PROXY_TYPES:
            self._warn(svc, key, "InvalidNodeProxyType",
                       f"{names.ANNOTATION_NODE_PROXY_TYPE}: {str(kind)[:40]!r} is not one of "
                       f"{', '.join(names.NODE_PROXY_TYPES)}; nothing is proxied (and no Eip IP given)")  # fmt: skip
            return
        spec = svc.spec
        assert spec is not None
        ports = [(p.protocol or "TCP", p.port) for p in spec.ports or [] if (p.protocol or "TCP") in ("TCP", "UDP")]
        cluster_ips = spec.clusterIPs or ([spec.clusterIP] if spec.clusterIP else [])
        if not ports or not [ip for ip in cluster_ips if ip != "None"]:
            self._warn(svc, key, "NodeProxyNothingToForward",
                       "the Service has no TCP/UDP port or no ClusterIP: no proxy runs for it")  # fmt: skip
            await self._delete_workloads(wname)
            await self._publish(svc, key, set())
            return
        self._warned.pop(key, None)
        if ours:  # Go OpenELB's, never ours: see names.GO_FINALIZERS
            patch = {"metadata": {"$deleteFromPrimitiveList/finalizers": [names.FINALIZER_NODE_PROXY]}}
            await self._patch_service(svc, patch)
        proxy = wl.proxy_spec(key, kind, cluster_ips, ports)
        body = wl.manifest(proxy, self.namespace, self.image)
        self.owner[wname] = key
        other = "daemonset" if kind == "deployment" else "deployment"
        await self._delete(KINDS[other], wname)
        await self._apply(KINDS[kind], body)
        pods = [
            p for p in self.pods.store.values()
            if p.spec and p.spec.nodeName and ((p.metadata.labels if p.metadata else None) or {}).get("name") == wname
        ]  # fmt: skip
        ready = {p.spec.nodeName for p in pods if p.spec and p.spec.nodeName and _pod_ready(p)}
        self._report_stuck(svc, key, pods)
        await self._publish(svc, key, ready)

    def _report_stuck(self, svc: Service, key: str, pods: list[Pod]) -> None:
        """A proxy Pod Running but not Ready for `STUCK_AFTER` s: most likely its port is taken on
        that node (the relay retries, and says so in its log). A Warning Event names the node."""
        now = dt.datetime.now(dt.UTC)
        stuck = []
        for p in pods:
            st = p.status
            if st is None or st.phase != "Running" or _pod_ready(p) or st.startTime is None:
                continue
            if (now - st.startTime).total_seconds() >= STUCK_AFTER:
                stuck.append(p.spec.nodeName if p.spec else "?")
            else:
                self.queue.add_after(SVC + key, STUCK_AFTER)
        mark = ",".join(sorted(n or "?" for n in stuck))
        if stuck and self._stuck.get(key) != mark:
            self.recorder.emit(
                service_target(svc), "Warning", "NodeProxyNotReady",
                f"the proxy on {mark} is not ready: a Service port is most likely taken on that node by another "
                "program (see `kubectl -n " + self.namespace + " logs` of its Pod); that node is left out",
            )  # fmt: skip
        if mark:
            self._stuck[key] = mark
        else:
            self._stuck.pop(key, None)

    def _exists(self, wname: str) -> bool:
        key = f"{self.namespace}/{wname}"
        return key in self.deployments.store or key in self.daemonsets.store

    async def _teardown(self, svc: Service, key: str, wname: str, *, deleting: bool) -> None:
        """Workloads first; the finalizer goes once none is left — also when none was there."""
        await self._delete_workloads(wname)
        if self._exists(wname):
            self.queue.add_after(SVC + key, 1.0)  # their DELETED events bring us back sooner
            return
        assert svc.metadata is not None
        patch: dict[str, Any] = {"metadata": {}}
        finalizers = svc.metadata.finalizers or []
        if names.FINALIZER_NODE_PROXY in finalizers:
            patch["metadata"]["$deleteFromPrimitiveList/finalizers"] = [names.FINALIZER_NODE_PROXY]
        if not deleting:
            ann = svc.metadata.annotations or {}
            stale = {k: None for k in wl.Published((), ()).annotations() if k in ann}
            if stale:
                patch["metadata"]["annotations"] = stale
            if key in self.serving:
                await self._write_ingress(svc, ())
        self.serving.pop(key, None)
        self.owner.pop(wname, None)
        if patch["metadata"]:
            await self._patch_service(svc, patch)
        log.info("node proxy of %s removed", key)

    async def _publish(self, svc: Service, key: str, ready: set[str]) -> None:
        pub = wl.published(ready, self._addresses())
        assert svc.metadata is not None
        have = svc.metadata.annotations or {}
        want = pub.annotations()
        if any(have.get(k) != v for k, v in want.items()):
            await self._patch_service(svc, {"metadata": {"annotations": want}})
        current = [
            i.ip for i in (svc.status.loadBalancer.ingress if svc.status and svc.status.loadBalancer else None) or []
        ]
        if current != list(pub.ingress):
            await self._write_ingress(svc, pub.ingress)
        if self.serving.get(key) != ready:
            log.info("%s is served by the node proxy on %s", key, ", ".join(sorted(ready)) or "no node yet")
        self.serving[key] = ready

    async def _write_ingress(self, svc: Service, ips: tuple[str, ...]) -> None:
        assert svc.metadata is not None
        ingress = [{"ip": ip, "ipMode": "Proxy"} for ip in ips] or None
        try:
            out: Any = await self.client.patch(
                Service.Status, svc.metadata.name or "", {"status": {"loadBalancer": {"ingress": ingress}}},
                namespace=svc.metadata.namespace, patch_type=PatchType.MERGE,
            )  # fmt: skip
            self.services.remember(out)
        except ApiError as exc:
            if exc.status.code != 404:
                raise

    async def _patch_service(self, svc: Service, patch: dict[str, Any]) -> None:
        """Strategic merge: finalizers are deleted from the list, never replaced (others keep theirs)."""
        assert svc.metadata is not None
        await self.services.patch(svc.metadata.name or "", patch, namespace=svc.metadata.namespace)

    async def _apply(self, kind: type[Deployment] | type[DaemonSet], body: dict[str, Any]) -> None:
        obj: Any = kind.from_dict(body)
        await self.client.apply(obj, field_manager=FIELD_MANAGER, force=True)

    async def _delete(self, kind: type[Deployment] | type[DaemonSet], wname: str) -> None:
        store = self.deployments.store if kind is Deployment else self.daemonsets.store
        if f"{self.namespace}/{wname}" not in store:
            return
        try:
            await self.client.delete(kind, wname, namespace=self.namespace)
            log.info("deleted %s %s/%s", kind.__name__, self.namespace, wname)
        except ApiError as exc:
            if exc.status.code != 404:
                raise

    async def _delete_workloads(self, wname: str) -> None:
        for kind in KINDS.values():
            await self._delete(kind, wname)

    def _warn(self, svc: Service, key: str, reason: str, message: str) -> None:
        if self._warned.get(key) != reason:
            self._warned[key] = reason
            self.recorder.emit(service_target(svc), "Warning", reason, message)
            log.warning("%s: %s", key, message)
