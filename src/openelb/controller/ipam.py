"""The IPAM controller: Services and Eips in, IPs and Eip status out.

Glue only: informers fill caches, keys go through a de-duplicating queue, and each reconcile reads
the caches, asks the pure allocator, and writes what changed. Allocation decisions are made
synchronously between awaits, so several workers may run while the allocator stays consistent.

Start-up order is what makes IPs survive restarts and takeovers: wait for every cache, then
`restore` every IP that Services already hold (their status, or Go OpenELB's `Eip.status.used`),
and only then allocate anything new.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Namespace, Service
from lightkube.types import PatchType

from openelb.api import names
from openelb.api.eip import EipView
from openelb.api.ingress import ingress_ips
from openelb.api.ranges import IPAddress, parse_ip
from openelb.controller import servicepolicy as sp
from openelb.controller.metrics import Metrics
from openelb.ipam.allocator import Allocation, AllocationError, Allocator, Request
from openelb.ipam.pools import accepted_pools
from openelb.kube.events import EventRecorder, Target, service_target
from openelb.kube.informer import Informer
from openelb.kube.resources import Eip
from openelb.kube.workqueue import WorkQueue

log = logging.getLogger("openelb.controller")

MAX_INT64 = 2**63 - 1
EIP_STATUS_DELAY = 1.0
EIP_STATUS_MAX_DELAY = 30.0
SVC, EIP, POOLS = "svc/", "eip/", "pools"


def _fmt(ips: tuple[IPAddress, ...] | list[IPAddress]) -> str:
    return ",".join(str(ip) for ip in ips)


class IpamController:
    def __init__(
        self,
        client: AsyncClient,
        policy: sp.Policy,
        recorder: EventRecorder,
        metrics: Metrics | None = None,
        workers: int = 4,
    ) -> None:
        self.client = client
        self.policy = policy
        self.recorder = recorder
        self.metrics = metrics or Metrics()
        self.workers = workers
        self.alloc = Allocator()
        self.queue = WorkQueue()
        self.services: Informer[Service] = Informer(client, Service, self._on_service)
        self.service_hooks: list[Callable[[str], None]] = []
        """Also told of every Service event (NodeProxy shares this informer: one Service cache)."""
        self.eips: Informer[Any] = Informer(client, Eip, self._on_eip, name="Eip")
        self.namespaces: Informer[Namespace] = Informer(client, Namespace, self._on_namespace)
        self.problems: dict[str, list[str]] = {}
        self.pending: set[str] = set()
        self._status_due: set[str] = set()
        self._status_delay: dict[str, float] = {}
        self._eip_marks: dict[str, tuple[Any, ...]] = {}  # what besides status a change can touch
        self._last_views: list[EipView] | None = None
        self.ready = asyncio.Event()

    # ---- triggers ----------------------------------------------------------------------------

    def _on_service(self, key: str) -> None:
        self.queue.add(SVC + key)
        for hook in self.service_hooks:
            hook(key)

    def _on_eip(self, name: str) -> None:
        """Spec and lifecycle changes reconcile now; status-only changes (mostly the echo of our own
        status writes) go through the same delay as `_touch`, or each write would trigger the next."""
        obj = self.eips.store.get(name)
        md = obj.metadata if obj is not None else None
        mark = (md.generation, md.deletionTimestamp, md.finalizers, md.annotations) if md else None
        if mark is not None and self._eip_marks.get(name) == mark:
            self._schedule_status(name)
            return
        if mark is None:
            self._eip_marks.pop(name, None)
        else:
            self._eip_marks[name] = mark
        self.queue.add(POOLS)
        self.queue.add(EIP + name)

    def _on_namespace(self, name: str) -> None:
        for key in list(self.pending):
            if key.startswith(f"{name}/"):
                self.queue.add(SVC + key)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        tasks = [asyncio.create_task(i.run()) for i in (self.services, self.eips, self.namespaces)]
        try:
            await asyncio.gather(*(i.synced.wait() for i in (self.services, self.eips, self.namespaces)))
            self._sync_pools()
            self._restore_all()
            for key in list(self.services.store):
                self.queue.add(SVC + key)
            for name in list(self.eips.store):
                self.queue.add(EIP + name)
            self.ready.set()
            log.info(
                "caches synced: %d services, %d eips; %d allocations restored",
                len(self.services.store),
                len(self.eips.store),
                len(self.alloc.allocations()),
            )
            tasks += [asyncio.create_task(self._worker()) for _ in range(self.workers)]
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            started = time.perf_counter()
            try:
                if key == POOLS:
                    self._sync_pools()
                elif key.startswith(SVC):
                    await self.reconcile_service(key.removeprefix(SVC))
                else:
                    await self.reconcile_eip(key.removeprefix(EIP))
            except Exception:
                log.exception("reconcile %s failed; retrying", key)
                self.metrics.reconcile_errors.inc()
                self.queue.add_after(key, 1.0)
            finally:
                self.metrics.reconcile_seconds.labels(kind=key.split("/", 1)[0]).observe(time.perf_counter() - started)
                self.queue.done(key)

    # ---- pools -------------------------------------------------------------------------------

    def _views(self) -> list[EipView]:
        return sorted((EipView.from_object(obj) for obj in self.eips.store.values()), key=lambda v: v.name)

    def _sync_pools(self) -> None:
        views = self._views()
        if views == self._last_views:
            return  # only Eip status changed (mostly our own writes): the pools are the same
        self._last_views = views
        pools, problems = accepted_pools(views)
        before = self.alloc.pools
        evicted = self.alloc.set_pools(pools)
        self.problems = problems
        for key in evicted:
            log.info("ip of %s left every pool; reallocating", key)
            self.queue.add(SVC + key)
        if before != self.alloc.pools:
            for key in list(self.pending):
                self.queue.add(SVC + key)
            for name in self.eips.store:
                self.queue.add(EIP + name)

    def _used_records(self) -> dict[str, list[IPAddress]]:
        """Go OpenELB's bookkeeping: `Eip.status.used` ip -> "ns/a;ns/b"."""
        out: dict[str, list[IPAddress]] = {}
        for obj in self.eips.store.values():
            used = (obj.get("status") or {}).get("used") or {}
            for ip_text, keys in used.items():
                try:
                    ip = parse_ip(ip_text)
                except ValueError:
                    continue
                for key in str(keys).split(";"):
                    if key:
                        out.setdefault(key, []).append(ip)
        return out

    def _restore_all(self) -> None:
        records = self._used_records()
        for key, svc in self.services.store.items():
            if not (sp.is_ours(svc, self.policy) or sp.has_our_marks(svc)):
                continue
            ips = ingress_ips(svc) or records.get(key, [])
            if not ips:
                continue
            try:
                req = sp.build_request(svc, self._ns_labels(svc))
            except sp.RequestError:
                req = Request(key=key)
            self.alloc.restore(req, ips)

    def _namespace(self, svc: Service) -> Namespace | None:
        return self.namespaces.store.get((svc.metadata.namespace if svc.metadata else None) or "default")

    def _namespace_terminating(self, svc: Service) -> bool:
        ns = self._namespace(svc)
        return bool(ns and ns.status and ns.status.phase == "Terminating")

    def _ns_labels(self, svc: Service) -> Mapping[str, str]:
        ns = self._namespace(svc)
        return (ns.metadata.labels if ns and ns.metadata else None) or {}

    # ---- services ----------------------------------------------------------------------------

    async def reconcile_service(self, key: str) -> None:
        svc = self.services.store.get(key)
        if svc is None:
            gone = self.alloc.release(key)
            self.pending.discard(key)
            if gone:
                self.metrics.releases.inc()
                self._touch(gone)
            return
        assert svc.metadata is not None
        if not sp.is_ours(svc, self.policy):
            await self._release(key, svc)
            return
        old = self.alloc.get(key)
        try:
            req = sp.build_request(svc, self._ns_labels(svc))
            got = self.alloc.assign(req)
        except (sp.RequestError, AllocationError) as exc:
            log.info("cannot assign %s: %s", key, exc)
            self.pending.add(key)
            if old is not None and not ingress_ips(svc):
                # Held only in the bookkeeping (restored from a stale Eip.status.used after a
                # leader change), never shown by the Service: it cannot keep it, so neither may
                # the Eip's status (found by the chaos soak: an IP recorded for a Service without one).
                self.alloc.release(key)
                self._touch(old)
            self.metrics.failures.inc()
            self.recorder.emit(service_target(svc), "Warning", "AssignIPFailed", f"failed to assign ip: {exc}")
            # Whatever the Service held stays (status untouched): a bad edit never loses an IP.
            if names.FINALIZER_SERVICE in (svc.metadata.finalizers or []):  # but not Go's finalizer
                strip = {"$deleteFromPrimitiveList/finalizers": [names.FINALIZER_SERVICE]}
                await self._patch_service(svc, {"metadata": strip})
            return
        self.pending.discard(key)
        if old is not None and old != got:
            self._touch(old)
        self._touch(got)
        await self._write_assigned(svc, got)
        if old is None or old.ips != got.ips:
            log.info("assigned %s to %s from %s", _fmt(got.ips), key, ",".join(got.pools))
            self.metrics.allocations.inc()
            self.recorder.emit(service_target(svc), "Normal", "AssignIP", f"success to assign ip: {_fmt(got.ips)}")

    def _touch(self, alloc: Allocation) -> None:
        """Schedule a status write for the pools of `alloc`, coalescing bursts: each write carries
        the whole `used` map, so one write per pool per `_status_delay` instead of one per Service."""
        for pool in set(alloc.pools):
            self._schedule_status(pool)

    def _schedule_status(self, pool: str) -> None:
        if pool not in self._status_due:
            self._status_due.add(pool)
            self.queue.add_after(EIP + pool, self._status_delay.get(pool, EIP_STATUS_DELAY))

    async def _write_assigned(self, svc: Service, got: Allocation) -> None:
        assert svc.metadata is not None
        md = svc.metadata
        pool_label = got.pools[0] if len(got.pools[0]) <= 63 else None
        marks: dict[str, Any] = {}
        if names.FINALIZER_SERVICE in (md.finalizers or []):  # Go OpenELB's: see names.GO_FINALIZERS
            marks["$deleteFromPrimitiveList/finalizers"] = [names.FINALIZER_SERVICE]
        if pool_label and (md.labels or {}).get(names.LABEL_POOL) != pool_label:
            marks["labels"] = {names.LABEL_POOL: pool_label}
        ingress = [{"ip": str(ip), "ipMode": "VIP"} for ip in got.ips]
        if marks or _ingress(svc) != ingress:
            await self._write_service(svc, marks, {"loadBalancer": {"ingress": ingress}})

    async def _write_service(self, svc: Service, marks: dict[str, Any], status: dict[str, Any]) -> None:
        """One strategic merge patch to `services/status` carrying the finalizer and label changes
        too: the Service status strategy keeps metadata edits (it resets only spec), so the IP, its
        finalizer and its pool label land atomically in one write instead of two. Should an
        apiserver drop them, the metadata goes in a second patch to the Service itself."""
        assert svc.metadata is not None
        ns, name = svc.metadata.namespace or "default", svc.metadata.name or ""
        patch: dict[str, Any] = {"status": status}
        if marks:
            patch["metadata"] = marks
        try:
            out: Any = await self.client.patch(
                Service.Status, name, patch, namespace=ns, patch_type=PatchType.STRATEGIC
            )  # a Service, typed by lightkube as its status subresource
            self.services.remember(out)
            if marks and not _marks_applied(out, marks):
                await self._patch_service(svc, {"metadata": marks})
        except ApiError as exc:
            if exc.status.code != 404:
                raise  # 404: the Service is gone; its DELETED event releases whatever it held

    async def _patch_service(self, svc: Service, patch: dict[str, Any]) -> None:
        """The Service itself (its metadata: labels, finalizers)."""
        assert svc.metadata is not None
        await self.services.patch(svc.metadata.name or "", patch, namespace=svc.metadata.namespace or "default")

    async def _release(self, key: str, svc: Service) -> None:
        gone = self.alloc.release(key)
        self.pending.discard(key)
        if gone is None and not sp.has_our_marks(svc):
            return  # not ours and never was: not even its status is ours to touch
        released = gone.ips if gone else tuple(ingress_ips(svc))
        marks: dict[str, Any] = {}
        if names.LABEL_POOL in ((svc.metadata.labels if svc.metadata else None) or {}):
            marks["labels"] = {names.LABEL_POOL: None}
        if names.FINALIZER_SERVICE in ((svc.metadata.finalizers if svc.metadata else None) or []):
            marks["$deleteFromPrimitiveList/finalizers"] = [names.FINALIZER_SERVICE]
        if sp.is_node_proxy(svc, self.policy):  # its ingress lists node addresses, NodeProxy's to write
            if marks:
                await self._write_service(svc, marks, {})
        elif marks or _ingress(svc):
            await self._write_service(svc, marks, {"loadBalancer": {"ingress": None}})
        if gone:
            log.info("released %s from %s", _fmt(gone.ips), key)
            self._touch(gone)
            self.metrics.releases.inc()
        if released and not self._namespace_terminating(svc):  # its Events could not be created anyway
            self.recorder.emit(service_target(svc), "Normal", "ReleaseIP", f"success to release ip: {_fmt(released)}")

    # ---- eips --------------------------------------------------------------------------------

    async def reconcile_eip(self, name: str) -> None:
        self._status_due.discard(name)
        obj = self.eips.store.get(name)
        if obj is None:
            self.metrics.forget_pool(name)
            self._status_delay.pop(name, None)
            return
        view = EipView.from_object(obj)
        md = obj.metadata
        finalizers = (md.finalizers if md else None) or []
        if names.FINALIZER_EIP in finalizers:  # Go OpenELB's (or ours before 0.7): see names.GO_FINALIZERS
            rest = [f for f in finalizers if f != names.FINALIZER_EIP]
            await self._patch_eip(name, {"metadata": {"finalizers": rest, "resourceVersion": md.resourceVersion}})
            return  # its event brings us back
        status = self._eip_status(view)
        current = obj.get("status") or {}
        changed = {k: v for k, v in status.items() if current.get(k) != v}
        if changed:
            if "used" in changed:  # send only the entries that changed (None deletes in a merge patch)
                old_used, new_used = current.get("used") or {}, status["used"]
                changed["used"] = {
                    ip: new_used.get(ip)
                    for ip in old_used.keys() | new_used.keys()
                    if old_used.get(ip) != new_used.get(ip)
                }
            started = time.perf_counter()
            await self.client.patch(Eip.Status, name, {"status": changed}, patch_type=PatchType.MERGE)
            self._status_delay[name] = status_delay(time.perf_counter() - started, len(status.get("used") or ()))
        problems = self.problems.get(name)
        if problems and not view.deleting:
            self.recorder.emit(_eip_target(obj), "Warning", "InvalidEip", "; ".join(problems))

    def _pool_used(self, name: str) -> dict[str, list[str]]:
        return self.alloc.used(name) if name in self.alloc.pools else {}

    def _eip_status(self, view: EipView) -> dict[str, Any]:
        pool = self.alloc.pools.get(view.name)
        if pool is None:
            return {"ready": False}
        used = {ip: ";".join(keys) for ip, keys in self._pool_used(view.name).items()}
        usage = len(used)
        size = pool.range.size
        self.metrics.observe_pool(view.name, pool.version, size, usage)
        return {
            "occupied": usage >= size,
            "usage": usage,
            "poolSize": min(size, MAX_INT64),
            "used": used,
            "firstIP": str(pool.range.first_ip),
            "lastIP": str(pool.range.last_ip),
            "v4": True if pool.version == 4 else None,
            "ready": True,
        }

    async def _patch_eip(self, name: str, patch: dict[str, Any]) -> None:
        """Merge patch (custom resources have no strategic merge); resourceVersion guards lists."""
        try:
            await self.client.patch(Eip, name, patch, patch_type=PatchType.MERGE)
        except ApiError as exc:
            if exc.status.code != 404:
                raise


def status_delay(write_seconds: float, used: int) -> float:
    """Seconds between two status writes of one Eip. A big `used` map makes every write expensive
    for the apiserver (measured on the lab: ~0.1 s at 2,000 entries, ~0.7 s at 10,000, ~1 MB with
    managedFields; each one also delays the requests around it) and for every speaker watching
    Eips, so the interval grows with the size and with how long the last write took: one Eip's
    status takes at most ~5% of the apiserver's time, and Services keep getting their IPs at full
    speed during a burst."""
    return min(EIP_STATUS_MAX_DELAY, max(EIP_STATUS_DELAY, 20 * write_seconds, used / 500))


def _ingress(svc: Service) -> list[dict[str, str]]:
    lb = svc.status.loadBalancer if svc.status else None
    out = []
    for ing in (lb.ingress if lb else None) or []:
        entry = {"ip": ing.ip or ""}
        if ing.ipMode:
            entry["ipMode"] = ing.ipMode
        out.append(entry)
    return out


def _marks_applied(svc: Service, marks: dict[str, Any]) -> bool:
    md = svc.metadata
    labels, finalizers = (md.labels if md else None) or {}, (md.finalizers if md else None) or []
    if any(labels.get(k) != v for k, v in (marks.get("labels") or {}).items()):
        return False
    if any(f not in finalizers for f in marks.get("finalizers") or ()):
        return False
    return not any(f in finalizers for f in marks.get("$deleteFromPrimitiveList/finalizers") or ())


def _eip_target(obj: Any) -> Target:
    md = obj.metadata
    return Target("Eip", md.name, None, md.uid, api_version=f"{names.GROUP}/{names.VERSION}")
