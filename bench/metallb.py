"""MetalLB, run out of cluster against the lab, for the peer benchmarks (`--peer metallb`).

Users choose between OpenELB and MetalLB, so the benchmarks measure both in one run, one after
the other, with the same workload, probe and clock. MetalLB is built from the Go module proxy by
`tools/peers/metallb.sh` (pinned version, cached; never by `scripts/test`) and started without a
kubelet, as `../shared/reference/peers-out-of-cluster.md` records from its sources:

- its CRDs (the bases, without the conversion webhook), Namespace `metallb-system`, an
  `IPAddressPool` and an `L2Advertisement` on the nodes' `eth0` (or, for BGP, a `BGPPeer` and a
  `BGPAdvertisement`: its native BGP mode, which has no BFD);
- its controller in the root namespace with `--webhook-mode=disabled` (no webhook Service here);
- one speaker per node inside the node's namespace (as its DaemonSet's hostNetwork Pod runs),
  with the env its manifest sets, memberlist on with a secret key (as `metallb-native.yaml`
  makes one), and a Pod object per speaker whose `status.podIP` is the node's address: MetalLB
  finds its memberlist peers by listing those Pods. The Pods name no node and an unknown
  scheduler, so the lab's kubelet never runs them; a supervisor thread restarts an exited
  speaker after the lab kubelet's probe period, as the kubelet restarts ours (neither backs
  off: MetalLB's speaker exits when it cannot reach the apiserver at start, e.g. on a node
  whose link is cut, and is started again every period until it can).

**MetalLB's defaults, untuned**: memberlist's LAN configuration (1 s probes, 4 s suspicion), no
BFD, its default GARP schedule. One deviation, for safety only: `--lb-class` on both daemons, and
the benchmark's Services name that class, so MetalLB never touches a Service OpenELB serves (it
would otherwise clear the status of Services whose IP is outside its pools). `stop()` removes
every process and object it made, the CRDs included.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import yaml
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import Namespace, Pod
from lightkube.types import PatchType

from openelb_lab import netns, workloads
from openelb_lab.plan import LabPlan, NodePlan

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "metallb-system"
LB_CLASS = "metallb.io/bench"
SPEAKER_LABELS = {"app": "metallb", "component": "speaker"}
ML_PORT = 7946
SPEAKER_METRICS_PORT = 7473
RESTART_PERIOD = 2.0  # the lab kubelet's probe period (lab/agent.py PROBE_SECONDS)
LOGS = Path("/tmp/openelb-bench-metallb")

# Registered so that apply() can encode them (lightkube looks kinds up by apiVersion/kind).
IPAddressPool = create_namespaced_resource("metallb.io", "v1beta1", "IPAddressPool", "ipaddresspools")
L2Advertisement = create_namespaced_resource("metallb.io", "v1beta1", "L2Advertisement", "l2advertisements")
BGPAdvertisement = create_namespaced_resource("metallb.io", "v1beta1", "BGPAdvertisement", "bgpadvertisements")
BGPPeer = create_namespaced_resource("metallb.io", "v1beta2", "BGPPeer", "bgppeers")


def build() -> Path:
    """The directory with MetalLB's controller, speaker and crd/ (built on first use, then cached)."""
    out = subprocess.run([str(ROOT / "tools" / "peers" / "metallb.sh")], stdout=subprocess.PIPE, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


def version(bins: Path) -> str:
    return (bins / "VERSION").read_text().strip()


def service(name: str, namespace: str, selector: str | None = None) -> dict[str, Any]:
    """A Service only MetalLB serves here: our class, no OpenELB annotation."""
    spec: dict[str, Any] = {
        "type": "LoadBalancer",
        "loadBalancerClass": LB_CLASS,
        "allocateLoadBalancerNodePorts": False,
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
    }
    if selector:
        spec["selector"] = {"app": selector}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


class MetalLB:
    """One MetalLB installation in the lab: objects, controller, speakers; `stop()` undoes all."""

    def __init__(
        self,
        client: Client,
        plan: LabPlan,
        kubeconfig: Path,
        addresses: list[str],
        *,
        speakers: bool,
        controller_port: int = 7472,
        bins: Path | None = None,
        bgp_peer: dict[str, Any] | None = None,
    ) -> None:
        """`bgp_peer`: a BGPPeer spec (v1beta2) to announce the pool by BGP (MetalLB's native
        mode, a BGPAdvertisement) instead of Layer2 (an L2Advertisement on eth0)."""
        self.client, self.plan, self.kubeconfig = client, plan, kubeconfig
        self.addresses, self.with_speakers, self.controller_port = addresses, speakers, controller_port
        self.bgp_peer = bgp_peer
        self.bins = bins or build()
        self.controller: subprocess.Popen[bytes] | None = None
        self.speakers: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None
        self.crd_names: list[str] = []

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        crds = [yaml.safe_load(p.read_text()) for p in sorted((self.bins / "crd").glob("*.yaml"))]
        self.crd_names = [c["metadata"]["name"] for c in crds]
        workloads.apply(self.client, *crds, field_manager="openelb-bench")
        workloads.poll("MetalLB's CRDs to be established", self._crds_established, 60)
        workloads.ensure_namespace(self.client, NAMESPACE)
        pool = {
            "apiVersion": "metallb.io/v1beta1",
            "kind": "IPAddressPool",
            "metadata": {"name": "bench", "namespace": NAMESPACE},
            "spec": {"addresses": self.addresses},
        }
        adv: list[dict[str, Any]] = [
            {
                "apiVersion": "metallb.io/v1beta1",
                "kind": "L2Advertisement",
                "metadata": {"name": "bench", "namespace": NAMESPACE},
                "spec": {"ipAddressPools": ["bench"], "interfaces": ["eth0"]},
            }
        ]
        if self.bgp_peer is not None:
            adv = [
                {
                    "apiVersion": "metallb.io/v1beta1",
                    "kind": "BGPAdvertisement",
                    "metadata": {"name": "bench", "namespace": NAMESPACE},
                    "spec": {"ipAddressPools": ["bench"]},
                },
                {
                    "apiVersion": "metallb.io/v1beta2",
                    "kind": "BGPPeer",
                    "metadata": {"name": "router", "namespace": NAMESPACE},
                    "spec": self.bgp_peer,
                },
            ]
        workloads.poll("the IPAddressPool API", lambda: workloads.apply(self.client, pool, *adv) or True, 30)
        env = {**os.environ, "METALLB_NAMESPACE": NAMESPACE, "KUBECONFIG": str(self.kubeconfig)}
        with (LOGS / "controller.log").open("wb") as log:
            self.controller = subprocess.Popen(
                [str(self.bins / "controller"), f"--kubeconfig={self.kubeconfig}", "--webhook-mode=disabled",
                 f"--port={self.controller_port}", "--log-level=info", f"--lb-class={LB_CLASS}"],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        if self.with_speakers:
            self._start_speakers()

    def _crds_established(self) -> bool:
        for name in self.crd_names:
            crd = self.client.get(CustomResourceDefinition, name)
            conds = crd.status.conditions if crd.status else None
            if not any(c.type == "Established" and c.status == "True" for c in conds or []):
                return False
        return True

    def _start_speakers(self) -> None:
        key_dir = LOGS / "mlkey"
        key_dir.mkdir(exist_ok=True)
        (key_dir / "secretkey").write_text(base64.b64encode(os.urandom(128)).decode())
        nodes = [n for n in self.plan.nodes if not n.light]
        for node in nodes:  # every Pod before any speaker: a speaker reads the peer list once at start
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": self.pod_name(node), "namespace": NAMESPACE, "labels": SPEAKER_LABELS},
                "spec": {
                    "schedulerName": "bench.invalid/nobody",  # never scheduled: the runner is its kubelet
                    "containers": [{"name": "speaker", "image": f"quay.io/metallb/speaker:{version(self.bins)}"}],
                },
            }
            workloads.apply(self.client, pod, field_manager="openelb-bench")
            status = {"status": {"podIP": node.lan_v4, "podIPs": [{"ip": node.lan_v4}], "hostIP": node.lan_v4}}
            self.client.patch(Pod.Status, self.pod_name(node), status, namespace=NAMESPACE, patch_type=PatchType.MERGE)
        for node in nodes:
            self._spawn(node)
        self._supervisor = threading.Thread(target=self._supervise, name="metallb-supervisor", daemon=True)
        self._supervisor.start()
        workloads.poll("every MetalLB speaker's metrics endpoint", self._speakers_listening, 60)

    @staticmethod
    def pod_name(node: NodePlan) -> str:
        return f"speaker-{node.name}"

    def _spawn(self, node: NodePlan) -> None:
        assert node.lan_v4
        env = {
            **os.environ,
            "METALLB_NAMESPACE": NAMESPACE,
            "METALLB_NODE_NAME": node.name,
            "METALLB_POD_NAME": self.pod_name(node),
            "METALLB_HOST": node.lan_v4,
            "METALLB_ML_BIND_ADDR": node.lan_v4,
            "METALLB_ML_BIND_PORT": str(ML_PORT),
            "METALLB_ML_LABELS": ",".join(f"{k}={v}" for k, v in SPEAKER_LABELS.items()),
            "METALLB_ML_SECRET_KEY_PATH": str(LOGS / "mlkey"),
        }
        argv = [str(self.bins / "speaker"), f"--kubeconfig={self.kubeconfig}", f"--port={SPEAKER_METRICS_PORT}",
                "--log-level=info", f"--lb-class={LB_CLASS}"]  # fmt: skip
        with (LOGS / f"speaker-{node.name}.log").open("ab") as log:  # the child keeps its own descriptor
            self.speakers[node.name] = subprocess.Popen(
                netns.exec_argv(node.netns, argv), stdout=log, stderr=subprocess.STDOUT, env=env
            )

    def _supervise(self) -> None:
        """restartPolicy Always: a speaker that exited is started again (bounded by `stop()`)."""
        while not self._stopping.wait(RESTART_PERIOD):
            with self._lock:
                for node in self.plan.nodes:
                    proc = self.speakers.get(node.name)
                    if proc is not None and proc.poll() is not None and not self._stopping.is_set():
                        self.restarts[node.name] = self.restarts.get(node.name, 0) + 1
                        self._spawn(node)

    def _speakers_listening(self) -> bool:
        for node in self.plan.nodes:
            if node.name not in self.speakers:
                continue
            probe = [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "1",
                f"http://{node.lan_v4}:{SPEAKER_METRICS_PORT}/metrics",
            ]
            if subprocess.run(netns.exec_argv(node.netns, probe), check=False).returncode != 0:
                return False
        return True

    def speaker_pid(self, node: str) -> int | None:
        """The speaker's own process (the child of `ip netns exec`, which execs it: the same pid)."""
        with self._lock:
            proc = self.speakers.get(node)
            return proc.pid if proc is not None and proc.poll() is None else None

    def stop(self) -> None:
        """Every process, then every object, then the CRDs; bounded waits, also after a failure."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(RESTART_PERIOD * 2)
        procs = [p for p in (self.controller, *self.speakers.values()) if p is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        with contextlib.suppress(ApiError):
            self.client.delete(Namespace, NAMESPACE)
        for name in self.crd_names:
            with contextlib.suppress(ApiError):
                self.client.delete(CustomResourceDefinition, name)
        workloads.poll(f"namespace {NAMESPACE} to be gone", self._namespace_gone, 120)

    def _namespace_gone(self) -> bool:
        try:
            self.client.get(Namespace, NAMESPACE)
        except ApiError as exc:
            if exc.status.code == 404:
                return True
            raise
        return False

    def __enter__(self) -> MetalLB:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
