"""Uninstall that finishes (issue 16), as a user does it, while every mode serves a Service: Layer2,
VIP (addresses on a node) and BGP with graceful restart and no BFD (routes at BIRD, which keeps a
restarting speaker's routes for restartTime). `kubectl delete -f deploy/openelb.yaml` and `helm uninstall`
must return on their own, leave no finalizer that only OpenELB would remove, no VIP on any node
interface and no route at the router; whatever stays (Helm keeps CRDs and Eips) deletes at once.

Runs with the install tests (they ask for `bare_cluster`), after them, before the session's
controller starts; it puts our CRDs back for the modules after it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import NS, apply_yaml, in_netns, openelb_processes, wait_ips
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import Namespace, Service

from openelb.api import crds
from openelb.kube.resources import BgpConf, BgpPeer, Eip
from openelb_lab import binaries, install, lab, router, workloads
from openelb_lab.components import Paths
from openelb_lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.k8s_lab, pytest.mark.usefixtures("bare_cluster")]
REPO = Path(__file__).resolve().parents[2]
APP_NS = "t-uninstall"
SEED = [REPO / "examples/seed" / n for n in ("layer2-eip.yaml", "vip-eip.yaml", "layer2-deployment.yaml",
                                               "layer2-svc.yaml", "vip-svc.yaml")]  # fmt: skip
BGP = [REPO / "examples/bgp" / n for n in ("bgpconf.yaml", "bgppeer.yaml", "eip.yaml", "deployment.yaml", "svc.yaml")]


def run(*argv: str, timeout: float = 150) -> tuple[int, str, float]:
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    return out.returncode, out.stdout + out.stderr, time.monotonic() - t0


def _kubeconfig() -> str:
    return f"--kubeconfig={Paths(lab.state_dir()).kubeconfig('admin')}"


def kubectl(*args: str) -> tuple[int, str, float]:
    return run(str(binaries.ensure(build=False) / "kubectl"), _kubeconfig(), *args)


def helm(*args: str) -> tuple[int, str, float]:
    build = subprocess.run([str(REPO / "tools/helm/build.sh")], capture_output=True, text=True, check=True)
    return run(build.stdout.split()[-1], _kubeconfig(), *args)


@pytest.fixture(scope="module")
def bird(lab_plan: LabPlan) -> Iterator[router.Bird]:
    why = router.have_router_daemons()
    if why:
        pytest.skip(why)
    b = router.Bird(lab_plan, lab.state_dir(), router.BirdOptions())
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def app(kube: Client) -> Iterator[str]:
    workloads.ensure_namespace(kube, APP_NS)
    try:
        yield APP_NS
    finally:
        workloads.delete_namespace(kube, APP_NS)
        workloads.poll(f"namespace {APP_NS} gone", lambda: not _exists(kube, Namespace, APP_NS), 90)
        for crd in crds.definitions():  # ours again, for the modules after this one
            workloads.apply(kube, crd)
        workloads.poll("the Eip API", lambda: list(kube.list(Eip)) is not None, 30)
        workloads.poll("the install's processes gone", lambda: not openelb_processes(), 60)


def _exists(kube: Client, res: Any, name: str, namespace: str | None = None) -> bool:
    try:
        kube.get(res, name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return False
        raise
    return True


def serve_every_mode(kube: Client, lab_plan: LabPlan, ns: str) -> dict[str, str]:
    """The seed's Layer2 and VIP Services and the BGP example's, each with its IP in place."""
    for path in [*SEED, *BGP]:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        for d in docs:
            if d["kind"] == "BgpPeer":  # BFD's AdminDown ends the session at once, restart or not:
                d["spec"].pop("bfd", None)  # without it, only a NOTIFICATION keeps BIRD from waiting
        apply_yaml(kube, yaml.safe_dump_all(docs), namespace=ns)
    ips = {svc: wait_ips(kube, ns, svc, timeout=60)[0] for svc in ("layer2-svc", "vip-svc", "bgp-svc")}
    workloads.poll("the BGP route at the router", lambda: router.kernel_next_hops(lab_plan, ips["bgp-svc"]), 60)
    workloads.poll("the VIP on a node", lambda: _nodes_holding(lab_plan, ips["vip-svc"]), 60)
    return ips


def _nodes_holding(lab_plan: LabPlan, ip: str) -> list[str]:
    return [n.name for n in lab_plan.nodes if f" {ip}/" in in_netns(n.netns, "ip", "-o", "addr", "show").stdout]


def left_behind(kube: Client, lab_plan: LabPlan, ns: str, ips: dict[str, str]) -> list[str]:
    found = [f"Service {s.metadata.name}: finalizer {f}"  # type: ignore[union-attr]
             for s in kube.list(Service, namespace=ns) for f in s.metadata.finalizers or []]  # type: ignore[union-attr]  # fmt: skip
    served = {c.metadata.name for c in kube.list(CustomResourceDefinition)}  # type: ignore[union-attr]
    for res, plural in ((Eip, "eips"), (BgpConf, "bgpconfs"), (BgpPeer, "bgppeers")):
        if f"{plural}.network.kubesphere.io" not in served:
            continue  # the CRD is gone, and with it every object of its kind
        objs = list(kube.list(res))
        found += [f"{res.__name__} {o.metadata.name}: finalizer {f}" for o in objs for f in o.metadata.finalizers or []]
    found += [f"{ip} on {node}" for ip in ips.values() for node in _nodes_holding(lab_plan, ip)]
    if hops := router.kernel_next_hops(lab_plan, ips["bgp-svc"]):
        found.append(f"route to {ips['bgp-svc']} via {sorted(hops)} at the router")
    return found


def assert_nothing_left(kube: Client, lab_plan: LabPlan, ns: str, ips: dict[str, str]) -> None:
    try:  # BGP withdraws at once (NOTIFICATION, no graceful restart); the rest is gone already
        workloads.poll("nothing left behind", lambda: not left_behind(kube, lab_plan, ns, ips), 10)
    except TimeoutError:
        raise AssertionError(f"left behind: {left_behind(kube, lab_plan, ns, ips)}") from None
    for svc in ("layer2-svc", "vip-svc", "bgp-svc", "bgp-svc-v6"):  # the user's Services still delete
        kube.delete(Service, svc, namespace=ns)
    workloads.poll("the Services deleted", lambda: not list(kube.list(Service, namespace=ns)), 15)


def test_manifest_uninstall_finishes_and_leaves_nothing(
    kube: Client, lab_plan: LabPlan, bird: router.Bird, app: str
) -> None:
    install.install(kube)
    ips = serve_every_mode(kube, lab_plan, app)
    rc, out, took = kubectl("delete", "-f", str(install.MANIFEST), "--timeout=120s")
    assert rc == 0, out  # it waits for every object, finalizers included
    assert took < 120, took
    print(f"kubectl delete -f deploy/openelb.yaml returned after {took:.1f} s")
    workloads.poll(f"namespace {NS} gone", lambda: not _exists(kube, Namespace, NS), 90)
    assert not [c.metadata.name for c in kube.list(CustomResourceDefinition)  # type: ignore[union-attr]
                if c.metadata.name.endswith(".network.kubesphere.io")]  # type: ignore[union-attr]  # fmt: skip
    assert_nothing_left(kube, lab_plan, app, ips)


def test_helm_uninstall_finishes_and_leaves_nothing(
    kube: Client, lab_plan: LabPlan, bird: router.Bird, app: str
) -> None:
    """Helm keeps the CRDs (and so the Eips and BGP objects) by design; the speakers, stopped
    while BgpPeers still exist, see their DaemonSet gone and close without graceful restart."""
    rc, out, _ = helm("install", "openelb", str(REPO / "charts/openelb"), "--namespace", NS, "--create-namespace")
    assert rc == 0, out
    try:
        install.wait_ready(kube, timeout=150)
        ips = serve_every_mode(kube, lab_plan, app)
        rc, out, took = helm("uninstall", "openelb", "--namespace", NS, "--wait", "--timeout", "120s")
        assert rc == 0, out
        print(f"helm uninstall --wait returned after {took:.1f} s")
        workloads.poll("the speakers and controllers gone", lambda: not openelb_processes(), 60)
        assert_nothing_left(kube, lab_plan, app, ips)
        # what Helm kept deletes without anyone's help: the objects, then the CRDs
        for path in reversed([*SEED, *BGP]):
            kubectl("delete", "--ignore-not-found", "--wait=false", "-n", app, "-f", str(path))
        rc, out, _ = kubectl("delete", "crd", *(c["metadata"]["name"] for c in crds.definitions()), "--timeout=60s")
        assert rc == 0, out
    finally:
        helm("uninstall", "openelb", "--namespace", NS, "--ignore-not-found")
        workloads.delete_namespace(kube, NS)
        workloads.poll(f"namespace {NS} gone", lambda: not _exists(kube, Namespace, NS), 90)
