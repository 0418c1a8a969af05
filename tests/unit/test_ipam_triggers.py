"""What makes the controller write: the triggers of its work queue and its informer's write-through
cache, without an apiserver (the lab tests count the real writes)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from lightkube.resources.core_v1 import Service

from openelb.api.ingress import ingress_ips
from openelb.controller import ipam
from openelb.controller.ipam import IpamController
from openelb.controller.servicepolicy import Policy
from openelb.kube.informer import Informer
from openelb.kube.resources import Eip


def _eip(rv: int, *, generation: int = 1, status: dict[str, Any] | None = None, **meta: Any) -> Any:
    md = {"name": "pool", "resourceVersion": str(rv), "generation": generation, **meta}
    return Eip.from_dict({"metadata": md, "spec": {"address": "192.0.2.0/24"}, "status": status or {}})


def _drain(q: Any) -> list[str]:
    keys = []
    while len(q):
        key = q._queue.get_nowait()
        q._queued.discard(key)
        keys.append(key)
    return keys


def test_status_echoes_of_an_eip_are_coalesced_and_spec_changes_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ipam, "EIP_STATUS_DELAY", 0.05)

    async def scenario() -> None:
        ctrl = IpamController(client=None, policy=Policy(), recorder=None)  # type: ignore[arg-type]
        ctrl.eips.store["pool"] = _eip(1)
        ctrl._on_eip("pool")
        assert _drain(ctrl.queue) == [ipam.POOLS, "eip/pool"]  # first sight: now

        for rv in (2, 3, 4):  # our own status writes coming back: one delayed reconcile for all
            ctrl.eips.store["pool"] = _eip(rv, status={"usage": rv})
            ctrl._on_eip("pool")
        assert _drain(ctrl.queue) == []
        await asyncio.sleep(0.2)
        assert _drain(ctrl.queue) == ["eip/pool"]

        ctrl._status_due.clear()  # as reconcile_eip does
        ctrl.eips.store["pool"] = _eip(5, generation=2)  # spec edit
        ctrl._on_eip("pool")
        assert _drain(ctrl.queue) == [ipam.POOLS, "eip/pool"]
        default = {"eip.openelb.kubesphere.io/is-default-eip": "true"}
        ctrl.eips.store["pool"] = _eip(6, generation=2, annotations=default)
        ctrl._on_eip("pool")
        assert _drain(ctrl.queue) == [ipam.POOLS, "eip/pool"]  # annotations do not bump generation
        ctrl.eips.store["pool"] = _eip(7, generation=2, deletionTimestamp="2026-11-26T00:00:00Z")
        ctrl._on_eip("pool")
        assert _drain(ctrl.queue) == [ipam.POOLS, "eip/pool"]
        del ctrl.eips.store["pool"]
        ctrl._on_eip("pool")
        assert _drain(ctrl.queue) == [ipam.POOLS, "eip/pool"]

    asyncio.run(scenario())


def test_big_or_slow_eip_status_is_written_less_often() -> None:
    assert ipam.status_delay(0.02, 10) == ipam.EIP_STATUS_DELAY  # the common case: once a second
    assert ipam.status_delay(0.05, 2_000) == 4.0  # 2,000 IPs in use: the map alone slows it
    assert ipam.status_delay(0.6, 2_000) == pytest.approx(12.0)  # a slow write: ~5% duty at most
    assert ipam.status_delay(0.6, 100_000) == ipam.EIP_STATUS_MAX_DELAY


class _Listing:
    def __init__(self, objs: list[Any], rv: str) -> None:
        self.objs, self.resourceVersion = objs, rv

    async def __aiter__(self) -> Any:
        for o in self.objs:
            yield o


class _FakeClient:
    """Lists one Eip, then serves queued watch events (and nothing more) on every watch."""

    def __init__(self, listed: Any, events: asyncio.Queue[tuple[str, Any]]) -> None:
        self.listed, self.events = listed, events

    def list(self, *_: Any, **__: Any) -> _Listing:
        return _Listing([self.listed], self.listed.metadata.resourceVersion)

    def watch(self, *_: Any, **__: Any) -> Any:
        async def stream() -> Any:
            while True:
                yield await self.events.get()

        return stream()


def test_remembered_writes_are_not_reported_again_and_never_go_back_in_time() -> None:
    async def scenario() -> list[str]:
        changes: list[str] = []
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        inf: Informer[Any] = Informer(_FakeClient(_eip(10), events), Eip, changes.append)  # type: ignore[arg-type]
        task = asyncio.create_task(inf.run())
        await asyncio.wait_for(inf.synced.wait(), 1)
        assert changes == ["pool"]

        inf.remember(_eip(11, status={"usage": 1}))  # our write's response, before its watch event
        inf.remember(_eip(9))  # something older never replaces what we hold
        assert inf.store["pool"].metadata.resourceVersion == "11"
        await events.put(("MODIFIED", _eip(11, status={"usage": 1})))  # the echo: stored already, not reported
        await events.put(("MODIFIED", _eip(12, status={"usage": 2})))  # someone else's change: reported
        await _until(lambda: inf.store["pool"].metadata.resourceVersion == "12")
        assert changes == ["pool", "pool"]

        # Someone else's change (13) lands just before our write (14) and arrives after its response:
        # the store keeps 14, but 13 is reported, since the write may have been decided without it.
        inf.remember(_eip(14, status={"usage": 3}))
        await events.put(("MODIFIED", _eip(13, status={"usage": 3})))
        await _until(lambda: len(changes) == 3)
        assert inf.store["pool"].metadata.resourceVersion == "14"
        await events.put(("MODIFIED", _eip(14, status={"usage": 3})))  # the echo of 14
        await events.put(("MODIFIED", _eip(15, status={"usage": 4})))
        await _until(lambda: inf.store["pool"].metadata.resourceVersion == "15")
        task.cancel()
        return changes

    assert asyncio.run(scenario()) == ["pool"] * 4  # list, 12, 13, 15: never the echoes 11 and 14


def test_the_transform_applies_to_listed_watched_and_remembered_objects() -> None:
    def slim(obj: Any) -> Any:
        return Eip.from_dict({"metadata": {"name": obj.metadata.name, "resourceVersion": obj.metadata.resourceVersion}})

    async def scenario() -> None:
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        inf: Informer[Any] = Informer(
            _FakeClient(_eip(10), events),  # type: ignore[arg-type]
            Eip,
            lambda _k: None,
            transform=slim,
        )
        task = asyncio.create_task(inf.run())
        await asyncio.wait_for(inf.synced.wait(), 1)
        assert not inf.store["pool"].get("spec")  # listed: slimmed
        await events.put(("MODIFIED", _eip(12)))
        await _until(lambda: inf.store["pool"].metadata.resourceVersion == "12")
        assert not inf.store["pool"].get("spec")  # watched: slimmed
        inf.remember(_eip(13))
        assert inf.store["pool"].metadata.resourceVersion == "13" and not inf.store["pool"].get("spec")
        task.cancel()

    asyncio.run(scenario())


async def _until(cond: Any) -> None:
    for _ in range(100):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in 1 s")


class _StatusDropsMetadata:
    """An apiserver whose status writes keep only the status (as CRDs do): the marks need a second patch."""

    def __init__(self, keeps_metadata: bool) -> None:
        self.keeps_metadata = keeps_metadata
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def patch(self, res: Any, name: str, body: dict[str, Any], **_: Any) -> Any:
        self.calls.append((res.__name__, body))
        md: dict[str, Any] = {"name": name, "namespace": "ns", "resourceVersion": str(len(self.calls))}
        if "metadata" in body and (res is Service or self.keeps_metadata):
            md.update(body["metadata"])
        return Service.from_dict({"metadata": md, "status": body.get("status") or {}})


@pytest.mark.parametrize("keeps_metadata", [True, False])
def test_ip_and_label_go_in_one_status_write_where_the_apiserver_allows(keeps_metadata: bool) -> None:
    api = _StatusDropsMetadata(keeps_metadata)
    ctrl = IpamController(client=api, policy=Policy(), recorder=None)  # type: ignore[arg-type]
    svc = Service.from_dict({"metadata": {"name": "a", "namespace": "ns", "resourceVersion": "1"}})
    marks = {"labels": {"eip.openelb.kubesphere.io/v1alpha2": "p"}}
    status = {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}]}}
    asyncio.run(ctrl._write_service(svc, marks, status))
    assert api.calls[0] == ("ServiceStatus", {"status": status, "metadata": marks})
    assert api.calls[1:] == ([] if keeps_metadata else [("Service", {"metadata": marks})])


def test_an_ip_restored_from_stale_records_is_dropped_when_the_service_cannot_keep_it() -> None:
    """Chaos soak finding: a new leader restored `ns/b` from an Eip.status.used written before b
    released it; b's request now conflicts (same share key, same port as a), so b gets no IP — and
    the restored allocation stayed in the bookkeeping and in Eip.status for ever."""
    from openelb.api import names
    from openelb.controller import servicepolicy as sp

    def svc(name: str, ip: str | None) -> Service:
        return Service.from_dict({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1", "annotations": {
                names.ANNOTATION_LB: "openelb", names.ANNOTATION_POOL: "pool", names.ANNOTATION_SHARE_KEY: "k"}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 93, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}] if ip else []}},
        })  # fmt: skip

    class Api:
        async def patch(self, res: Any, name: str, body: dict[str, Any], **_: Any) -> Any:
            return Service.from_dict({"metadata": {"name": name, "namespace": "ns", "resourceVersion": "2"}})

    ctrl = IpamController(client=Api(), policy=Policy(), recorder=_Events())  # type: ignore[arg-type]
    ctrl.eips.store["pool"] = _eip(1)
    ctrl._sync_pools()
    a, b = svc("a", "192.0.2.7"), svc("b", None)
    ctrl.services.store.update({"ns/a": a, "ns/b": b})
    ctrl.alloc.restore(sp.build_request(a, {}), ingress_ips(a))
    ctrl.alloc.restore(sp.build_request(b, {}), ingress_ips(a))  # from the stale record
    asyncio.run(ctrl.reconcile_service("ns/b"))
    assert ctrl.alloc.get("ns/b") is None and "ns/b" in ctrl.pending
    assert ctrl.alloc.get("ns/a") is not None  # a keeps what it shows


class _Events:
    def emit(self, *args: Any) -> None:
        pass


class _Recording:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    async def patch(self, res: Any, name: str, body: dict[str, Any], **_: Any) -> Any:
        self.calls.append((res.__name__, name, body))
        md = {"name": name, "namespace": "ns", "resourceVersion": "9", **(body.get("metadata") or {})}
        return Service.from_dict({"metadata": md, "status": body.get("status") or {}})


def test_no_finalizer_is_added_and_go_openelbs_are_removed() -> None:
    """A finalizer only our daemons remove hangs every uninstall (issue 16): none is added to a
    Service or an Eip, and Go OpenELB's are taken off where found."""
    from openelb.api import names

    def svc(name: str, finalizers: list[str], pool: str = "pool") -> Service:
        return Service.from_dict({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1", "finalizers": finalizers,
                         "annotations": {names.ANNOTATION_LB: "openelb", names.ANNOTATION_POOL: pool}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
        })  # fmt: skip

    api = _Recording()
    ctrl = IpamController(client=api, policy=Policy(), recorder=_Events())  # type: ignore[arg-type]
    ctrl.eips.store["pool"] = _eip(1)
    ctrl._sync_pools()
    ctrl.services.store.update({"ns/new": svc("new", []), "ns/go": svc("go", [names.FINALIZER_SERVICE, "x/keep"])})
    asyncio.run(ctrl.reconcile_service("ns/new"))
    asyncio.run(ctrl.reconcile_service("ns/go"))
    ctrl.services.store["ns/pending"] = svc("pending", [names.FINALIZER_SERVICE], pool="no-such-pool")
    asyncio.run(ctrl.reconcile_service("ns/pending"))  # gets no IP, loses Go's finalizer all the same
    (pending,) = [b for _r, n, b in api.calls if n == "pending"]
    assert pending == {"metadata": {"$deleteFromPrimitiveList/finalizers": [names.FINALIZER_SERVICE]}}
    asyncio.run(ctrl.reconcile_eip("pool"))
    new = [b for _r, n, b in api.calls if n == "new"]
    assert new and all("finalizers" not in (b.get("metadata") or {}) for b in new)
    assert all(not k.endswith("finalizers") for b in new for k in b.get("metadata") or {})
    (go,) = [b for _r, n, b in api.calls if n == "go"]
    assert go["metadata"]["$deleteFromPrimitiveList/finalizers"] == [names.FINALIZER_SERVICE]
    assert not [b for r, _n, b in api.calls if r == "Eip"]  # no finalizer added to a fresh Eip

    api.calls.clear()
    ctrl.eips.store["pool"] = _eip(2, finalizers=[names.FINALIZER_EIP, "x/keep"])
    asyncio.run(ctrl.reconcile_eip("pool"))
    assert api.calls == [("Eip", "pool", {"metadata": {"finalizers": ["x/keep"], "resourceVersion": "2"}})]
