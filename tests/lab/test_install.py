"""The install manifest for real: deploy/openelb.yaml applied over a cluster that ran Go OpenELB
0.6, its own Deployment and DaemonSet running in the lab (the lab's kubelet executes the OpenELB
image's containers from the Pod specs, under their ServiceAccounts), the seed's Layer2 walkthrough
through it, and RBAC proven by taking one rule away.

Runs first (it asks for `bare_cluster`): it needs the cluster without the session's stand-alone
controller, and it removes everything it installed, so later modules start from the state they
expect."""

from __future__ import annotations

import base64
import contextlib
import copy
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import apply_yaml, delete_eip, eip, in_netns, lb_service, openelb_processes, wait_ips
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Pod, Service
from lightkube.resources.rbac_authorization_v1 import ClusterRole
from lightkube.types import PatchType

from openelb.api import names
from openelb.kube.resources import Eip
from openelb_lab import binaries, containers, install, lab, workloads
from openelb_lab.components import Paths
from openelb_lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.k8s_lab, pytest.mark.usefixtures("bare_cluster")]
REPO = Path(__file__).resolve().parents[2]
NS = names.DEFAULT_NAMESPACE
GO_FINALIZER = "finalizer.lb.kubesphere.io/v1alpha1"


def kubectl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    kc = f"--kubeconfig={Paths(lab.state_dir()).kubeconfig('admin')}"
    exe = str(binaries.ensure(build=False) / "kubectl")
    out = subprocess.run([exe, kc, *args], capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def go_openelb_state(kube: Client, namespace: str) -> None:
    """What a cluster running Go OpenELB 0.6 holds: its CRDs (same names), an Eip with status, a
    Service it served (IP in status, its label and finalizer), and its webhook registration
    pointing at a Service whose certificate we do not have."""
    for crd in install.manifest_docs():
        if crd["kind"] == "CustomResourceDefinition":
            workloads.apply(kube, crd)
    workloads.poll("Eip API", lambda: list(kube.list(Eip)) is not None, 30)
    workloads.apply(kube, eip("go-pool", "198.18.0.230-198.18.0.239", protocol="layer2", interface="eth0"))
    kube.patch(
        Eip.Status,
        "go-pool",
        {"status": {"occupied": False, "usage": 1, "poolSize": 10, "used": {"198.18.0.233": f"{namespace}/go-svc"}}},
        patch_type=PatchType.MERGE,
    )
    svc = lb_service("go-svc", namespace, annotations={"lb.kubesphere.io/v1alpha1": "openelb"})
    svc["metadata"]["labels"] = {names.LABEL_POOL: "go-pool"}
    svc["metadata"]["finalizers"] = [GO_FINALIZER]
    workloads.apply(kube, svc)
    kube.patch(
        Service.Status,
        "go-svc",
        {"status": {"loadBalancer": {"ingress": [{"ip": "198.18.0.233"}]}}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    go_vwc = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "openelb-admission"},
        "webhooks": [
            {
                "name": "validate.eip.network.kubesphere.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Ignore",
                "clientConfig": {
                    "service": {
                        "name": "openelb-admission",
                        "namespace": NS,
                        "path": "/validate-network-kubesphere-io-v1alpha2-eip",
                    },
                    "caBundle": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
                },
                "rules": [
                    {
                        "apiGroups": ["network.kubesphere.io"],
                        "apiVersions": ["v1alpha2"],
                        "resources": ["eips"],
                        "operations": ["CREATE"],
                    }
                ],
            }
        ],
    }
    workloads.ensure_namespace(kube, NS)
    workloads.apply(kube, go_vwc, field_manager="go-openelb")
    # ... and the Secret its cert-gen Jobs made, same name as ours, another layout (keys `ca`, `cert`,
    # `key`): our controller must replace it, not crash on the conflict
    junk = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    go_secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "openelb-admission", "namespace": NS},
        "data": {"ca": junk, "cert": junk, "key": junk},
    }
    workloads.apply(kube, go_secret, field_manager="go-openelb")


def uninstall(kube: Client) -> None:
    docs = install.manifest_docs()
    for d in reversed(docs):
        if d["kind"] in ("CustomResourceDefinition", "Namespace"):
            continue  # later modules keep using both
        where = ["-n", d["metadata"]["namespace"]] if d["metadata"].get("namespace") else []
        kubectl(
            "delete",
            "--ignore-not-found",
            "--wait=false",
            d["kind"].lower(),
            d["metadata"]["name"],
            *where,
            check=False,
        )
    workloads.poll(
        "the install's pods gone",
        lambda: not list(kube.list(Pod, namespace=NS, labels={"app": "openelb"})),
        60,
    )
    with contextlib.suppress(ApiError):
        kube.delete(Lease, names.LEADER_LEASE, namespace=NS)
    # ... and their processes: a leftover speaker holds its node's ports and breaks later modules
    try:
        workloads.poll("the install's processes gone", lambda: not openelb_processes(), 20)
    except TimeoutError:
        raise AssertionError(f"processes left after uninstall: {openelb_processes()}") from None


@pytest.fixture(scope="module")
def upgraded(kube: Client, lab_plan: LabPlan) -> Iterator[str]:
    ns = "t-upgrade"
    workloads.ensure_namespace(kube, ns)
    go_openelb_state(kube, ns)
    try:
        out = kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", str(install.MANIFEST))
        assert "serverside-applied (server dry run)" in out.stdout
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(install.MANIFEST))
        install.wait_ready(kube, timeout=120)
        yield ns
    finally:
        for svc in kube.list(Service, namespace=ns):
            kube.delete(Service, svc.metadata.name, namespace=ns)  # type: ignore[union-attr]
        workloads.poll("Services released", lambda: not list(kube.list(Service, namespace=ns)), 60)
        for pool in ("go-pool", "eip-pool"):
            delete_eip(kube, pool)
        try:
            uninstall(kube)
        finally:
            workloads.delete_namespace(kube, ns)


def test_upgrade_from_go_openelb_keeps_every_ip(kube: Client, upgraded: str) -> None:
    ns = upgraded
    assert wait_ips(kube, ns, "go-svc") == ["198.18.0.233"]
    svc = kube.get(Service, "go-svc", namespace=ns)
    assert svc.metadata and svc.metadata.labels and svc.metadata.labels[names.LABEL_POOL] == "go-pool"
    status = workloads.poll(
        "Eip status rewritten by the new controller",
        lambda: (st := kube.get(Eip, "go-pool").get("status") or {}).get("ready") and st,
        30,
    )
    assert status["usage"] == 1 and status["used"] == {"198.18.0.233": f"{ns}/go-svc"}
    # the Go webhook registration was taken over: it now points at our controller and works
    with pytest.raises(ApiError, match="invalid eip address format"):
        kube.create(Eip.from_dict({"metadata": {"name": "bad"}, "spec": {"address": "bogus"}}), dry_run=True)
    # a new Service in the same pool gets another address
    workloads.apply(
        kube,
        lb_service(
            "new-svc", ns, annotations={"lb.kubesphere.io/v1alpha1": "openelb", names.ANNOTATION_POOL: "go-pool"}
        ),
    )
    (ip,) = wait_ips(kube, ns, "new-svc")
    assert ip != "198.18.0.233" and ip.startswith("198.18.0.23")


def test_install_pods_run_under_their_own_accounts(kube: Client, lab_plan: LabPlan, upgraded: str) -> None:
    pods = list(kube.list(Pod, namespace=NS, labels={"app": "openelb"}))
    by_component: dict[str, list[Any]] = {}
    for p in pods:
        assert p.metadata and p.metadata.labels and p.spec and p.status
        by_component.setdefault(p.metadata.labels["component"], []).append(p)
        assert any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []), p.metadata.name
    assert len(by_component["controller"]) == 2
    assert {p.spec.nodeName for p in by_component["speaker"]} == {n.name for n in lab_plan.nodes}
    assert {p.spec.serviceAccountName for p in by_component["controller"]} == {"openelb-controller"}
    assert {p.spec.serviceAccountName for p in by_component["speaker"]} == {"openelb-speaker"}
    # the processes: the controller as non-root without capabilities, the speaker with exactly three
    seen = {"controller": 0, "speaker": 0}
    for pid, args, uid in openelb_processes():
        role = containers.openelb_role(args.split())
        if role == "controller" and "--webhook-service=" in args:
            assert uid == "65532"
            assert _caps(pid, "CapEff") == 0
            seen["controller"] += 1
        elif role == "speaker" and "--bind-port=7946" in args and "--kubeconfig" not in args:
            assert uid == "0"
            assert _caps(pid, "CapBnd") == (1 << 10) | (1 << 12) | (1 << 13) | (
                1 << 23
            )  # NET_BIND_SERVICE, NET_ADMIN, NET_RAW, SYS_NICE
            seen["speaker"] += 1
    assert seen == {"controller": 2, "speaker": len(lab_plan.nodes)}, seen


def _caps(pid: str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {field} for {pid}")


def test_seed_walkthrough_through_the_manifest(kube: Client, lab_plan: LabPlan, upgraded: str) -> None:
    for name in ("layer2-eip.yaml", "layer2-deployment.yaml", "layer2-svc.yaml"):
        apply_yaml(kube, (REPO / "examples/seed" / name).read_text(), namespace=upgraded)
    (ip,) = wait_ips(kube, upgraded, "layer2-svc", timeout=30)
    workloads.poll(
        "2 ready endpoints",
        lambda: len(workloads.ready_endpoints(kube, upgraded, "layer2-svc").get("IPv4", [])) == 2,
        60,
    )
    out = in_netns(lab_plan.client.netns, "ping", "-c", "3", "-i", "0.2", "-W", "1", ip)
    assert out.returncode == 0, out.stdout
    seen = workloads.collect_pod_names(lab_plan.client.netns, workloads.url(ip, 80), expected=2)
    assert len(set(seen)) == 2
    # the announcing speaker marked the Service (its RBAC allows exactly this patch)
    workloads.poll(
        "announcer annotation",
        lambda: (kube.get(Service, "layer2-svc", namespace=upgraded).metadata.annotations or {}).get(  # type: ignore[union-attr]
            names.ANNOTATION_LAYER2_ANNOUNCER
        ),
        20,
    )
    kube.delete(Deployment, "layer2-openelb", namespace=upgraded)


def test_removing_one_rbac_rule_breaks_what_it_allows(kube: Client, upgraded: str) -> None:
    """Without `services/status: patch` the controller cannot publish an IP; with the rule back it does."""
    role = next(
        d
        for d in install.manifest_docs()
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "openelb-controller"
    )
    cut = copy.deepcopy(role)
    cut["rules"] = [r for r in role["rules"] if r["resources"] != ["services/status"]]
    assert len(cut["rules"]) == len(role["rules"]) - 1
    kube.replace(ClusterRole.from_dict(cut))
    try:
        workloads.apply(
            kube,
            lb_service(
                "rbac-svc",
                upgraded,
                annotations={"lb.kubesphere.io/v1alpha1": "openelb", names.ANNOTATION_POOL: "go-pool"},
            ),
        )
        time.sleep(6)
        svc = kube.get(Service, "rbac-svc", namespace=upgraded)
        lb = svc.status.loadBalancer if svc.status else None
        assert not (lb and lb.ingress), "an IP was published without the services/status rule"
        logs = "".join(p.read_text(errors="replace") for p in (lab.state_dir() / "logs").glob("pod-*-controller.log"))
        assert "403" in logs or "forbidden" in logs.lower()
    finally:
        kube.replace(ClusterRole.from_dict({**role, "metadata": {**role["metadata"], "resourceVersion": None}}))
    assert wait_ips(kube, upgraded, "rbac-svc", timeout=60)


def test_rendered_chart_applies_with_another_release_name(upgraded: str) -> None:
    helm = subprocess.run(
        [str(REPO / "tools/helm/build.sh")], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    rendered = subprocess.run(
        [helm, "template", "lb", str(REPO / "charts/openelb"), "--namespace", NS],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = subprocess.run(
        [str(binaries.ensure(build=False) / "kubectl"), f"--kubeconfig={Paths(lab.state_dir()).kubeconfig('admin')}",
         "apply", "--server-side", "--dry-run=server", "-f", "-"],
        input=rendered, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "deployment.apps/lb-openelb-controller serverside-applied (server dry run)" in out.stdout
    assert "daemonset.apps/lb-openelb-speaker serverside-applied (server dry run)" in out.stdout
