"""Controller restarts, leader failover and takeover of Go-OpenELB state: no IP ever moves."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from helpers import (
    delete_eip,
    eip,
    eip_status,
    ingress_ips,
    lb_service,
    lease_holder,
    wait_ips,
    wait_webhook,
)
from lightkube import Client
from lightkube.resources.admissionregistration_v1 import ValidatingWebhookConfiguration
from lightkube.resources.core_v1 import Service
from lightkube.types import PatchType

from openelb.api import names
from openelb.controller.webhook import webhook_configuration
from openelb.kube.resources import BgpConf, BgpPeer, Eip
from openelb_lab import workloads
from openelb_lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.k8s_lab]


def running(controller: dict[str, Any]) -> list[Any]:
    return [p for p in controller["procs"] if p.alive()]


def stop_all(controller: dict[str, Any]) -> None:
    for p in running(controller):
        p.stop()


def test_restart_keeps_every_ip_and_fills_holes(kube: Client, ns: str, controller: dict[str, Any]) -> None:
    workloads.apply(kube, eip("restart-pool", "198.51.100.32/29", namespaces=[ns]))
    try:
        workloads.apply(kube, *(lb_service(n, ns) for n in ("a", "b", "c")))
        before = {n: wait_ips(kube, ns, n) for n in ("a", "b", "c")}
        assert sorted(before.values()) == [["198.51.100.32"], ["198.51.100.33"], ["198.51.100.34"]]
        kube.delete(Service, "b", namespace=ns)
        workloads.poll("b released", lambda: eip_status(kube, "restart-pool").get("usage") == 2, 20)
        stop_all(controller)
        workloads.apply(kube, lb_service("d", ns))  # created while no controller runs
        controller["start"]("ctl-restart")
        assert wait_ips(kube, ns, "d", timeout=30) == before["b"]  # the hole, never a held IP
        assert ingress_ips(kube, ns, "a") == before["a"] and ingress_ips(kube, ns, "c") == before["c"]
    finally:
        for n in ("a", "c", "d"):
            kube.delete(Service, n, namespace=ns)
        workloads.poll("pool free", lambda: eip_status(kube, "restart-pool").get("usage") == 0, 30)
        delete_eip(kube, "restart-pool")


def test_leader_kill_fails_over_to_the_standby(kube: Client, ns: str, controller: dict[str, Any]) -> None:
    leader = running(controller)
    assert len(leader) == 1
    holder = workloads.poll("a lease holder", lambda: lease_holder(kube), 20)
    standby = controller["start"]("ctl-standby", webhook_port=9444)
    workloads.apply(kube, eip("ha-pool", "198.51.100.48/30", namespaces=[ns]))  # while the webhook runs
    time.sleep(3)
    assert lease_holder(kube) == holder  # the standby waits
    leader[0].stop(signal.SIGKILL)  # no graceful release: the Lease must expire
    killed_at = time.monotonic()
    new_holder = workloads.poll("a new leader", lambda: (h := lease_holder(kube)) and h != holder and h, 40)
    took = time.monotonic() - killed_at
    assert standby.alive() and new_holder
    assert took < 30, f"failover took {took:.1f}s"
    try:
        workloads.apply(kube, lb_service("after-failover", ns))
        assert wait_ips(kube, ns, "after-failover", timeout=30) == ["198.51.100.48"]
    finally:
        controller["start"]("ctl-webhook")  # the killed leader served the webhook the apiserver calls
        wait_webhook(kube)
        kube.delete(Service, "after-failover", namespace=ns)
        workloads.poll("pool free", lambda: eip_status(kube, "ha-pool").get("usage") == 0, 30)
        delete_eip(kube, "ha-pool")


def test_takeover_of_go_openelb_state(kube: Client, ns: str, controller: dict[str, Any], lab_plan: LabPlan) -> None:
    stop_all(controller)
    kube.delete(ValidatingWebhookConfiguration, "openelb-admission")  # as on a cluster before our install
    go = {"eip.openelb.kubesphere.io/v1alpha2": "go-pool"}
    try:
        body = eip("go-pool", "198.51.100.240/29")
        body["metadata"]["finalizers"] = ["finalizer.ipam.kubesphere.io/v1alpha1"]
        workloads.apply(kube, body)
        kube.patch(
            Eip.Status,
            "go-pool",
            {
                "status": {
                    "firstIP": "198.51.100.240",
                    "lastIP": "198.51.100.247",
                    "poolSize": 8,
                    "usage": 3,
                    "v4": True,
                    "used": {
                        "198.51.100.245": f"{ns}/x",
                        "198.51.100.246": f"{ns}/y;{ns}/z",  # Go shared it without any port check
                        "198.51.100.247": f"{ns}/w",  # recorded, but w's status was never written
                    },
                }
            },
            patch_type=PatchType.MERGE,
        )

        def go_service(name: str, ip: str | None, annotations: dict[str, str]) -> None:
            svc = lb_service(name, ns, annotations=annotations)
            svc["metadata"]["labels"] = go
            svc["metadata"]["finalizers"] = ["finalizer.lb.kubesphere.io/v1alpha1"]
            workloads.apply(kube, svc)
            if ip:
                kube.patch(
                    Service.Status,
                    name,
                    {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}},
                    namespace=ns,
                    patch_type=PatchType.MERGE,
                )

        go_service("x", "198.51.100.245", go)
        go_service("y", "198.51.100.246", {"eip.openelb.kubesphere.io/v1alpha1": "198.51.100.246"})
        go_service("z", "198.51.100.246", {"eip.openelb.kubesphere.io/v1alpha1": "198.51.100.246"})
        go_service("w", None, go)
        workloads.apply(kube, lb_service("new", ns, annotations=go))
        # Go's speakers' finalizer on BGP objects (a peer for no node, a BgpConf no speaker reads)
        go_bgp: list[tuple[Any, dict[str, Any]]] = [
            (BgpConf, {"metadata": {"name": "go-conf"}, "spec": {"as": 65000, "listenPort": -1}}),
            (BgpPeer, {"metadata": {"name": "go-peer"},
                       "spec": {"conf": {"peerAs": 65001, "neighborAddress": "198.51.100.254"},
                                "nodeSelector": {"matchLabels": {"t-takeover": "none"}}}}),
        ]  # fmt: skip
        for res, body in go_bgp:
            body["metadata"]["finalizers"] = [names.FINALIZER_SERVICE]
            kube.create(res.from_dict(body))

        controller["start"]("ctl-takeover")
        assert wait_ips(kube, ns, "new", timeout=30) == ["198.51.100.240"]
        assert wait_ips(kube, ns, "w") == ["198.51.100.247"]
        assert ingress_ips(kube, ns, "x") == ["198.51.100.245"]
        assert ingress_ips(kube, ns, "y") == ["198.51.100.246"] and ingress_ips(kube, ns, "z") == ["198.51.100.246"]
        used = workloads.poll(
            "status rewritten", lambda: (s := eip_status(kube, "go-pool")).get("usage") == 4 and s, 20
        )
        assert used["used"] == {
            "198.51.100.240": f"{ns}/new",
            "198.51.100.245": f"{ns}/x",
            "198.51.100.246": f"{ns}/y;{ns}/z",
            "198.51.100.247": f"{ns}/w",
        }

        def go_finalizers() -> list[str]:
            objs = [*kube.list(Service, namespace=ns), kube.get(Eip, "go-pool")]
            objs += [kube.get(res, body["metadata"]["name"]) for res, body in go_bgp]
            return [f"{o.metadata.name}: {f}" for o in objs for f in o.metadata.finalizers or []]

        # none left that only Go's daemons would remove: deleting them (or our CRDs) never hangs
        try:
            workloads.poll("Go OpenELB's finalizers removed", lambda: not go_finalizers(), 20)
        except TimeoutError:
            raise AssertionError(f"finalizers left: {go_finalizers()}") from None
        for res, body in go_bgp:
            kube.delete(res, body["metadata"]["name"])
    finally:
        workloads.apply(kube, webhook_configuration("openelb-admission", url=f"https://{lab_plan.api_v4}:9443"))
        if not running(controller):
            controller["start"]("ctl-after-takeover")
        wait_webhook(kube)
        for svc in kube.list(Service, namespace=ns):
            kube.delete(Service, svc.metadata.name, namespace=ns)  # type: ignore[union-attr]
        workloads.poll("go pool free", lambda: eip_status(kube, "go-pool").get("usage") == 0, 30)
        delete_eip(kube, "go-pool")
