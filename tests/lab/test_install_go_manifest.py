"""Drop-in for Go OpenELB (issue 13): its own v0.6.0 `deploy/openelb.yaml`, only the two `image:`
values swapped to ours (and the seed's `--enable-layer2=true` edit), installs and works — Go's
command lines and flags, its RBAC (no Secrets for the controller, `endpoints` not
`endpointslices` for the speaker), its cert-gen Jobs' certificate mounted where controller-runtime
reads it, its `gobgp -p 50051 global` readiness probe, its published memberlist key.

Runs with the install test (both ask for `bare_cluster`), before any module starts the session's
controller."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import NS, apply_yaml, delete_eip, in_netns, openelb_processes, wait_ips
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.apps_v1 import DaemonSet, Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Pod, Secret, Service

from openelb.api import crds, names
from openelb.kube.resources import Eip
from openelb_lab import binaries, install, lab, workloads
from openelb_lab.components import Paths
from openelb_lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.k8s_lab, pytest.mark.usefixtures("bare_cluster")]
REPO = Path(__file__).resolve().parents[2]
GO_MANIFEST = Path(__file__).parent / "manifests" / "go-openelb-0.6.yaml"
OUR_IMAGE = "docker.io/openelb/openelb-python:0.1.0"


def go_manifest_with_our_images() -> str:
    text = GO_MANIFEST.read_text()
    for go_image in ("kubesphere/openelb-controller:v0.6.0", "kubesphere/openelb-speaker:v0.6.0"):
        assert text.count(go_image) == 1, go_image
        text = text.replace(go_image, OUR_IMAGE)
    assert text.count("- --enable-layer2=false") == 1
    return text.replace("- --enable-layer2=false", "- --enable-layer2=true")  # the seed's edit


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    kc = f"--kubeconfig={Paths(lab.state_dir()).kubeconfig('admin')}"
    exe = str(binaries.ensure(build=False) / "kubectl")
    out = subprocess.run([exe, kc, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def _jobs_done(kube: Client) -> bool:
    jobs = [kube.get(Job, n, namespace=NS) for n in ("openelb-admission-create", "openelb-admission-patch")]
    return all(j.status and j.status.succeeded for j in jobs)


def _logs(component: str) -> str:
    return "".join(p.read_text(errors="replace") for p in (lab.state_dir() / "logs").glob(f"pod-*-{component}.log"))


@pytest.fixture(scope="module")
def go_installed(kube: Client, lab_plan: LabPlan) -> Iterator[str]:
    text = go_manifest_with_our_images()
    # A cluster that never ran ours: the install module's controller left its own webhook Secret, which
    # Go's cert-gen `create` would keep as it is (it only creates a missing one).
    kubectl("delete", "secret", "-n", NS, "openelb-admission", "--ignore-not-found")
    try:
        kubectl("apply", "-f", "-", stdin=text)
        workloads.poll("Go's cert-gen Jobs completed", lambda: _jobs_done(kube), 90)
        install.wait_ready(kube, timeout=150)
        yield text
    finally:
        docs = [d for d in yaml.safe_load_all(text) if d and d["kind"] not in ("CustomResourceDefinition", "Namespace")]
        for d in reversed(docs):
            where = ["-n", d["metadata"]["namespace"]] if d["metadata"].get("namespace") else []
            kubectl("delete", "--ignore-not-found", "--wait=false", d["kind"].lower(), d["metadata"]["name"], *where,
                    check=False)  # fmt: skip
        kubectl("delete", "pods", "-n", NS, "-l", "job-name", "--ignore-not-found", check=False)
        for secret in ("openelb-admission",):
            kubectl("delete", "secret", "-n", NS, secret, "--ignore-not-found", check=False)
        workloads.poll(
            "Go manifest's pods gone", lambda: not list(kube.list(Pod, namespace=NS, labels={"app": "openelb"})), 60
        )
        try:
            workloads.poll("its processes gone", lambda: not openelb_processes(), 20)
        finally:
            with contextlib.suppress(ApiError):
                kube.delete(Lease, names.LEADER_LEASE, namespace=NS)
            for crd in crds.definitions():  # ours again, for the modules after this one
                workloads.apply(kube, crd)


def test_go_manifest_runs_our_daemons_with_its_command_lines(
    kube: Client, lab_plan: LabPlan, go_installed: str
) -> None:
    ctl = [a for _p, a, _u in openelb_processes("controller")]
    spk = [a for _p, a, _u in openelb_processes("speaker")]
    assert len(ctl) == 1 and ctl[0].rstrip().endswith("--metrics-addr=:50052 --webhook-port=443 --leader-elect"), ctl
    assert len(spk) == len(lab_plan.nodes)
    assert all("--api-hosts=:50051 --enable-keepalived-vip=false --enable-layer2=true" in a for a in spk), spk
    ds = kube.get(DaemonSet, "openelb-speaker", namespace=NS)
    assert ds.status and ds.status.numberReady == len(lab_plan.nodes)  # Go's exec probe passed on each
    for node in lab_plan.nodes:  # ... which is what operators run too
        out = in_netns(node.netns, "sh", "-c", "gobgp -p 50051 global")
        assert out.returncode == 0 and "AS:" in out.stdout, out.stdout + out.stderr
    # the webhook serves the cert-gen Jobs' certificate (the controller may not touch Secrets here)
    sec = kube.get(Secret, "openelb-admission", namespace=NS)
    assert sec.data and {"ca", "cert", "key"} <= sec.data.keys()
    controller_log, speaker_log = _logs("openelb-controller"), _logs("openelb-speaker")
    assert "webhook certificate from /tmp/k8s-webhook-server/serving-certs" in controller_log, controller_log[-2000:]
    assert "reading Endpoints instead" in speaker_log  # Go's RBAC: endpoints, not endpointslices
    assert "published default key" in speaker_log  # Go's memberlist Secret
    assert "Traceback" not in controller_log + speaker_log
    dep = kube.get(Deployment, "openelb-controller", namespace=NS)
    assert dep.status and dep.status.readyReplicas == 1


def test_webhook_rejects_with_gos_configuration(kube: Client, go_installed: str) -> None:
    bad = Eip.from_dict({"metadata": {"name": "go-bad"}, "spec": {"address": "not-an-address"}})
    with pytest.raises(ApiError) as err:
        kube.create(bad)
    assert "invalid eip address format" in str(err.value.status.message)


def test_seed_layer2_walkthrough_through_gos_manifest(kube: Client, lab_plan: LabPlan, go_installed: str) -> None:
    ns = "t-go-manifest"
    workloads.ensure_namespace(kube, ns)
    try:
        for name in ("layer2-eip.yaml", "layer2-deployment.yaml", "layer2-svc.yaml"):
            apply_yaml(kube, (REPO / "examples/seed" / name).read_text(), namespace=ns)
        (ip,) = wait_ips(kube, ns, "layer2-svc", timeout=30)
        workloads.poll(
            "2 ready endpoints",
            lambda: len(workloads.ready_endpoints(kube, ns, "layer2-svc").get("IPv4", [])) == 2,
            60,
        )
        seen = workloads.collect_pod_names(lab_plan.client.netns, workloads.url(ip, 80), expected=2)
        assert len(set(seen)) == 2
        # externalTrafficPolicy Local: the announcer follows the endpoints, read from Endpoints here
        kube.patch(Service, "layer2-svc", {"spec": {"externalTrafficPolicy": "Local"}}, namespace=ns)

        def announcer() -> str | None:
            svc = kube.get(Service, "layer2-svc", namespace=ns)
            return (svc.metadata.annotations or {}).get(names.ANNOTATION_LAYER2_ANNOUNCER)  # type: ignore[union-attr]

        pod_nodes = {p.spec.nodeName for p in kube.list(Pod, namespace=ns, labels={"app": "layer2-openelb"})}  # type: ignore[union-attr]
        workloads.poll("an announcer with an endpoint", lambda: announcer() in pod_nodes, 20)
    finally:
        for svc in kube.list(Service, namespace=ns):
            kube.delete(Service, svc.metadata.name, namespace=ns)  # type: ignore[union-attr]
        workloads.poll("Services released", lambda: not list(kube.list(Service, namespace=ns)), 60)
        delete_eip(kube, "eip-pool")
        workloads.delete_namespace(kube, ns)
