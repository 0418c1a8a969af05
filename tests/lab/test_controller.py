"""The controller against the real lab apiserver: OpenELB manifests verbatim, pool choice, sharing,
dual-stack, release, loadBalancerClass, Eip status, webhook rejections, Eip delete guard."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
import time
from typing import Any

import pytest
from helpers import (
    HERE,
    apply_yaml,
    delete_eip,
    eip,
    eip_status,
    events,
    ingress_ips,
    lb_service,
    scrape,
    settle,
    wait_event,
    wait_ips,
)
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.admissionregistration_v1 import ValidatingWebhookConfiguration
from lightkube.resources.core_v1 import Service
from lightkube.types import PatchType

from openelb.controller.ipam import EIP_STATUS_DELAY
from openelb.controller.webhook import webhook_configuration
from openelb.kube.resources import Eip
from openelb_lab import lab, workloads
from openelb_lab.components import Paths
from openelb_lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.k8s_lab, pytest.mark.usefixtures("controller")]


@pytest.fixture
def eips(kube: Client) -> Any:
    created: list[str] = []

    def make(name: str, address: str, **spec: Any) -> str:
        workloads.apply(kube, eip(name, address, **spec))
        created.append(name)
        return name

    yield make
    for name in created:
        delete_eip(kube, name)


def test_seed_walkthrough_manifests_verbatim(kube: Client, ns: str) -> None:
    apply_yaml(kube, (HERE / "manifests/layer2-eip.yaml").read_text())
    try:
        apply_yaml(kube, (HERE / "manifests/layer2-svc.yaml").read_text(), namespace=ns)
        (ip,) = wait_ips(kube, ns, "layer2-svc")
        assert (
            ipaddress.ip_address("192.168.1.240") <= ipaddress.ip_address(ip) <= ipaddress.ip_address("192.168.1.250")
        )
        svc = kube.get(Service, "layer2-svc", namespace=ns)
        assert svc.metadata.labels["eip.openelb.kubesphere.io/v1alpha2"] == "eip-pool"  # type: ignore[index,union-attr]
        assert not svc.metadata.finalizers  # type: ignore[union-attr]  # none: an uninstall never hangs on it
        assert svc.status.loadBalancer.ingress[0].ipMode == "VIP"  # type: ignore[union-attr,index]
        st = workloads.poll("eip status", lambda: (s := eip_status(kube, "eip-pool")).get("usage") == 1 and s, 20)
        assert st["poolSize"] == 11 and st["firstIP"] == "192.168.1.240" and st["lastIP"] == "192.168.1.250"
        assert st["used"] == {ip: f"{ns}/layer2-svc"} and st["v4"] is True and st["occupied"] is False
        assert "success to assign ip" in wait_event(kube, ns, "layer2-svc", "AssignIP")
    finally:
        kube.delete(Service, "layer2-svc", namespace=ns)
        workloads.poll("svc gone", lambda: not list(kube.list(Service, namespace=ns)), 20)
        delete_eip(kube, "eip-pool")


def test_specific_ip_annotation_overrides_load_balancer_ip(kube: Client, ns: str, eips: Any) -> None:
    pool = eips("pin-pool", "198.51.100.16/28")
    workloads.apply(
        kube,
        lb_service(
            "a",
            ns,
            annotations={"eip.openelb.kubesphere.io/v1alpha1": "198.51.100.20"},
            loadBalancerIP="198.51.100.21",
        ),
        lb_service("b", ns, loadBalancerIP="198.51.100.21"),
        lb_service("c", ns, annotations={"eip.openelb.kubesphere.io/v1alpha2": pool}),
    )
    assert wait_ips(kube, ns, "a") == ["198.51.100.20"]
    assert wait_ips(kube, ns, "b") == ["198.51.100.21"]
    assert wait_ips(kube, ns, "c") == ["198.51.100.16"]  # lowest free of the pinned pool


def test_namespace_pools_by_priority_and_no_match_reason(kube: Client, ns: str, eips: Any) -> None:
    eips("ns-low", "198.51.100.64/30", namespaces=[ns], priority=5)
    eips("ns-high", "198.51.100.72/30", namespaceSelector={"kubernetes.io/metadata.name": ns}, priority=1)
    workloads.apply(kube, lb_service("a", ns))
    assert wait_ips(kube, ns, "a") == ["198.51.100.72"]
    workloads.apply(kube, lb_service("v6", ns, ipFamilies=["IPv6"], ipFamilyPolicy="SingleStack"))
    msg = wait_event(kube, ns, "v6", "AssignIPFailed")
    assert "no available default eip found for IPv6" in msg
    assert ingress_ips(kube, ns, "v6") == []


def test_sharing_by_key_with_port_conflict_never_steals(kube: Client, ns: str, eips: Any) -> None:
    pool = eips("share-pool", "198.51.100.96/30")
    pin = {"eip.openelb.kubesphere.io/v1alpha2": pool, "lb.kubesphere.io/share-key": "web"}
    workloads.apply(
        kube,
        lb_service("http", ns, annotations=pin),
        lb_service("https", ns, annotations=pin, ports=[{"name": "s", "port": 443, "targetPort": 8443}]),
    )
    (ip,) = wait_ips(kube, ns, "http")
    assert wait_ips(kube, ns, "https") == [ip]
    workloads.poll("shared record", lambda: ";" in eip_status(kube, pool).get("used", {}).get(ip, ""), 20)
    # Explicitly asking for the shared IP with a clashing port: pending with a reason, nothing stolen.
    workloads.apply(
        kube,
        lb_service("clash", ns, annotations={**pin, "eip.openelb.kubesphere.io/v1alpha1": ip}),
    )
    assert "port TCP/80 is already in use" in wait_event(kube, ns, "clash", "AssignIPFailed")
    assert ingress_ips(kube, ns, "clash") == []
    assert ingress_ips(kube, ns, "http") == [ip] and ingress_ips(kube, ns, "https") == [ip]
    # Without the key, an explicitly requested used IP is refused too.
    workloads.apply(kube, lb_service("thief", ns, annotations={"eip.openelb.kubesphere.io/v1alpha1": ip}))
    assert "is used by" in wait_event(kube, ns, "thief", "AssignIPFailed")


def test_dual_stack_and_ipv6_slash_64(kube: Client, ns: str, eips: Any) -> None:
    eips("ds-v4", "203.0.113.0/29", namespaces=[ns])
    eips("ds-v6", "2001:db8:cafe::/64", namespaces=[ns])
    workloads.apply(
        kube,
        lb_service("both", ns, ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv6", "IPv4"]),
        lb_service("six", ns, ipFamilyPolicy="SingleStack", ipFamilies=["IPv6"]),
    )
    both = wait_ips(kube, ns, "both", count=2)
    assert both == ["2001:db8:cafe::", "203.0.113.0"]  # one per family, in ipFamilies order
    assert wait_ips(kube, ns, "six") == ["2001:db8:cafe::1"]
    st = workloads.poll("v6 status", lambda: (s := eip_status(kube, "ds-v6")).get("usage") == 2 and s, 20)
    assert st["poolSize"] == 2**63 - 1 and st["lastIP"] == "2001:db8:cafe:0:ffff:ffff:ffff:ffff" and "v4" not in st


def test_release_on_delete_type_change_and_annotation_removal(kube: Client, ns: str, eips: Any) -> None:
    pool = eips("rel-pool", "198.51.100.128/30", namespaces=[ns])
    workloads.apply(kube, lb_service("a", ns), lb_service("b", ns), lb_service("c", ns))
    for name in ("a", "b", "c"):
        wait_ips(kube, ns, name)
    workloads.poll("3 used", lambda: eip_status(kube, pool).get("usage") == 3, 20)
    kube.patch(Service, "a", {"spec": {"type": "ClusterIP"}}, namespace=ns, patch_type=PatchType.MERGE)
    kube.patch(
        Service,
        "b",
        {"metadata": {"annotations": {"lb.kubesphere.io/v1alpha1": None}}},
        namespace=ns,
        patch_type=PatchType.MERGE,
    )
    kube.delete(Service, "c", namespace=ns)
    workloads.poll("all released", lambda: eip_status(kube, pool).get("usage") == 0, 20)
    for name in ("a", "b"):
        svc = kube.get(Service, name, namespace=ns)
        assert not (svc.metadata.finalizers or [])  # type: ignore[union-attr]
        assert "eip.openelb.kubesphere.io/v1alpha2" not in (svc.metadata.labels or {})  # type: ignore[union-attr]
        assert ingress_ips(kube, ns, name) == []
        assert "success to release ip" in wait_event(kube, ns, name, "ReleaseIP")
    with pytest.raises(ApiError):
        kube.get(Service, "c", namespace=ns)  # the finalizer did not hold the deletion


def test_load_balancer_class(kube: Client, ns: str, eips: Any) -> None:
    eips("class-pool", "198.51.100.160/30", namespaces=[ns])
    workloads.apply(
        kube,
        lb_service(
            "ours", ns, annotations={"lb.kubesphere.io/v1alpha1": ""}, loadBalancerClass="openelb.kubesphere.io/lb"
        ),
        lb_service("theirs", ns, loadBalancerClass="example.com/other"),  # annotated, but another class
        lb_service("plain", ns, annotations={"lb.kubesphere.io/v1alpha1": ""}),  # neither: not ours by default
    )
    assert wait_ips(kube, ns, "ours")
    settle(2)
    assert ingress_ips(kube, ns, "theirs") == [] and ingress_ips(kube, ns, "plain") == []
    assert not [e for e in events(kube, ns, "theirs") if e[1].startswith("AssignIP")]


def test_webhook_rejections_are_readable(kube: Client, eips: Any) -> None:
    eips("wh-base", "203.0.113.64/28")
    cases = [
        (eip("wh-parse", "203.0.113.200-203.0.113.100"), "ends before it starts"),
        (eip("wh-iface", "203.0.113.128/30", protocol="layer2"), "interface should not be empty"),
        (eip("wh-overlap", "203.0.113.70-203.0.113.90"), "eip address overlap with wh-base"),
    ]
    for body, message in cases:
        with pytest.raises(ApiError) as err:
            kube.create(Eip(body))
        assert message in err.value.status.message  # type: ignore[operator]
    default = {"eip.openelb.kubesphere.io/is-default-eip": "true"}
    eips("wh-def1", "2001:db8:d1::/120", annotations=default)
    with pytest.raises(ApiError) as err:
        kube.create(Eip(eip("wh-def2", "2001:db8:d2::/120", annotations=default)))
    assert "already exists a default EIP: wh-def1" in err.value.status.message  # type: ignore[operator]


def test_in_use_eip_cannot_shrink_or_be_deleted(kube: Client, ns: str, eips: Any) -> None:
    pool = eips("guard", "198.51.100.192/29", namespaces=[ns])
    workloads.apply(kube, lb_service("a", ns, annotations={"eip.openelb.kubesphere.io/v1alpha1": "198.51.100.199"}))
    wait_ips(kube, ns, "a")
    workloads.poll("usage 1", lambda: eip_status(kube, pool).get("usage") == 1, 20)
    with pytest.raises(ApiError) as err:
        kube.patch(Eip, pool, {"spec": {"address": "198.51.100.192/30"}}, patch_type=PatchType.MERGE)
    assert "leaves out ip 198.51.100.199 in use by " + f"{ns}/a" in err.value.status.message  # type: ignore[operator]
    kube.patch(Eip, pool, {"spec": {"address": "198.51.100.192/28"}}, patch_type=PatchType.MERGE)  # growing is fine
    workloads.poll("recomputed size", lambda: eip_status(kube, pool).get("poolSize") == 16, 20)
    with pytest.raises(ApiError) as err:
        kube.delete(Eip, pool)
    assert f"eip is in use by {ns}/a" in err.value.status.message  # type: ignore[operator]


def test_without_webhook_an_eip_in_use_goes_and_its_service_waits(kube: Client, ns: str, lab_plan: LabPlan) -> None:
    """No finalizer holds the Eip (one only the controller removes hangs every uninstall): it goes,
    the Service keeps the IP it shows, pending, and gets one again once an Eip covers it."""
    kube.delete(ValidatingWebhookConfiguration, "openelb-admission")
    try:
        workloads.apply(kube, eip("held", "198.51.100.224/30", namespaces=[ns]))
        workloads.apply(kube, lb_service("a", ns))
        (ip,) = wait_ips(kube, ns, "a")
        assert not kube.get(Eip, "held").metadata.finalizers  # type: ignore[union-attr]
        kube.delete(Eip, "held")
        workloads.poll("eip gone", lambda: not [e for e in kube.list(Eip) if e.metadata.name == "held"], 10)
        assert "eip" in wait_event(kube, ns, "a", "AssignIPFailed")
        assert ingress_ips(kube, ns, "a") == [ip]  # the Service keeps what it shows
        workloads.apply(kube, eip("held", "198.51.100.224/30", namespaces=[ns]))
        workloads.poll("in the pool's status again", lambda: eip_status(kube, "held").get("usage") == 1, 20)
        assert ingress_ips(kube, ns, "a")[0] in {f"198.51.100.{i}" for i in range(224, 228)}
        kube.delete(Service, "a", namespace=ns)
        workloads.poll("released", lambda: eip_status(kube, "held").get("usage") == 0, 20)
        kube.delete(Eip, "held")
    finally:
        workloads.apply(kube, webhook_configuration("openelb-admission", url=f"https://{lab_plan.api_v4}:9443"))
        from helpers import wait_webhook

        wait_webhook(kube)


def test_bgp_objects_basic_validation(kube: Client) -> None:
    from openelb.kube.resources import BgpConf, BgpPeer

    with pytest.raises(ApiError) as err:  # the schema's range first
        kube.create(BgpConf({"metadata": {"name": "default"}, "spec": {"as": 0, "routerId": "nope"}}))
    assert "spec.as in body should be greater than or equal to 1" in err.value.status.message  # type: ignore[operator]
    with pytest.raises(ApiError) as err:  # then the webhook
        kube.create(BgpConf({"metadata": {"name": "default"}, "spec": {"as": 65000, "routerId": "nope"}}))
    assert "routerId 'nope'" in err.value.status.message  # type: ignore[operator]
    with pytest.raises(ApiError) as err:
        kube.create(BgpPeer({"metadata": {"name": "p"}, "spec": {"conf": {"peerAs": 65000, "neighborAddress": "x"}}}))
    assert "neighborAddress 'x' is not an IP address" in err.value.status.message  # type: ignore[operator]
    # ranges in the CRD schema itself: refused by the apiserver with its own message (issue 14 #5)
    spec = {"conf": {"peerAs": 65000, "neighborAddress": "198.51.100.2"}, "transport": {"remotePort": 70000},
            "bfd": {"enabled": True, "multiplier": 256}}  # fmt: skip
    with pytest.raises(ApiError) as err:
        kube.create(BgpPeer({"metadata": {"name": "p"}, "spec": spec}), dry_run=True)
    message = err.value.status.message or ""
    assert "remotePort" in message and "65535" in message and "multiplier" in message, message


def test_metrics_report_pools_allocations_and_latency(
    kube: Client, ns: str, eips: Any, controller: dict[str, Any]
) -> None:
    pool = eips("metrics-pool", "203.0.113.32/28", namespaces=[ns])
    workloads.apply(kube, lb_service("a", ns), lb_service("b", ns))
    wait_ips(kube, ns, "a")
    wait_ips(kube, ns, "b")
    leader = next(p for p in controller["procs"] if p.alive())

    url = f"http://127.0.0.1:{leader.metrics_port}/metrics"
    labels = (("eip", pool), ("family", "IPv4"))
    m = workloads.poll(
        "pool gauges", lambda: (x := scrape(url)).get(("openelb_pool_addresses_in_use", labels)) == 2 and x, 20
    )
    assert m[("openelb_pool_addresses_total", labels)] == 16
    assert m[("openelb_allocations_total", ())] >= 2
    assert m[("openelb_controller_leader", ())] == 1
    assert m[("openelb_reconcile_duration_seconds_count", (("kind", "svc"),))] >= 2


def _count_modified(
    resource: Any, namespace: str | None, seconds: float, out: dict[str, int], listed: threading.Event
) -> None:
    """Count MODIFIED events per object for `seconds` (run in a thread: its own loop and client).
    `listed` is set once the starting resourceVersion is known: every later change is counted."""
    from openelb.kube.client import async_client

    async def count() -> None:
        client = async_client(Paths(lab.state_dir()).kubeconfig("admin"))
        kwargs = {"namespace": namespace} if namespace else {}
        listing = client.list(resource, **kwargs)
        async for _ in listing:
            pass
        listed.set()
        try:
            async for event, obj in client.watch(resource, resource_version=listing.resourceVersion, **kwargs):
                if event == "MODIFIED":
                    out[obj.metadata.name] = out.get(obj.metadata.name, 0) + 1
        finally:
            await client.close()

    with contextlib.suppress(TimeoutError):
        asyncio.run(asyncio.wait_for(count(), seconds))


def test_one_write_per_assignment_and_coalesced_pool_status(kube: Client, ns: str, eips: Any) -> None:
    """A burst of Services costs one write each (IP, finalizer and label together, never re-sent
    from a stale cache), and the pool's status is rewritten about once a second, not once per echo
    of its own previous write."""
    pool = eips("burst-pool", "192.0.2.128/25", namespaces=[ns])  # API only: no traffic in this test
    workloads.poll("pool ready", lambda: eip_status(kube, pool).get("ready"), 20)
    svc_writes: dict[str, int] = {}
    eip_writes: dict[str, int] = {}
    listed = (threading.Event(), threading.Event())
    watchers = [
        threading.Thread(target=_count_modified, args=(Service, ns, 12, svc_writes, listed[0])),
        threading.Thread(target=_count_modified, args=(Eip, None, 12, eip_writes, listed[1])),
    ]
    for w in watchers:
        w.start()
    assert all(e.wait(10) for e in listed)  # both starting points known before the burst
    t0 = time.monotonic()
    count = 100  # created back to back: the pool's usage keeps changing for a few seconds
    for i in range(count):
        workloads.apply(kube, lb_service(f"b{i:02d}", ns))
    for i in range(count):
        wait_ips(kube, ns, f"b{i:02d}")
    burst = time.monotonic() - t0
    for w in watchers:
        w.join(30)
    assert not any(w.is_alive() for w in watchers)
    assert len(svc_writes) == count and set(svc_writes.values()) == {1}, svc_writes
    svc = kube.get(Service, "b00", namespace=ns)
    assert svc.metadata.labels["eip.openelb.kubesphere.io/v1alpha2"] == pool  # type: ignore[index,union-attr]
    assert not svc.metadata.finalizers  # type: ignore[union-attr]
    assert eip_status(kube, pool)["usage"] == count
    # at most one status write per second of the burst, plus the trailing one and some slack
    assert 1 <= eip_writes.get(pool, 0) <= burst / EIP_STATUS_DELAY + 2, (eip_writes, burst)
