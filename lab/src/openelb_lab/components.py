"""Command lines of the lab's upstream components, as pure functions of the plan and paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from openelb_lab.plan import LabPlan, NodePlan

KCM_CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "daemonset-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "job-controller",
)
"""No node-lifecycle controller: it would taint and evict the emulated nodes, whose kubelet is ours.
The job controller: Go OpenELB's manifest makes its webhook certificate with Jobs (`lab/certgen.py`)."""


@dataclass(frozen=True)
class Paths:
    """Files under the lab's state directory."""

    state: Path

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def etcd_data(self) -> Path:
        return self.state / "etcd"

    def kubeconfig(self, user: str) -> Path:
        return self.state / f"{user}.kubeconfig"

    @property
    def plan_file(self) -> Path:
        return self.state / "lab.json"

    @property
    def image(self) -> Path:
        """The OpenELB image unpacked (a runc bundle: `rootfs/`, the image's `config.json`)."""
        return self.state / "image"

    @property
    def runc(self) -> Path:
        """runc's state root for the lab's containers."""
        return self.state / "runc"


def etcd(bins: Path, plan: LabPlan, paths: Paths) -> list[str]:
    client = f"http://127.0.0.1:{plan.ports.etcd_client}"
    peer = f"http://127.0.0.1:{plan.ports.etcd_peer}"
    return [
        str(bins / "etcd"),
        "--name=openelb-lab",
        f"--data-dir={paths.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=openelb-lab={peer}",
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver(bins: Path, plan: LabPlan, paths: Paths) -> list[str]:
    pki = paths.pki
    return [
        str(bins / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{plan.ports.etcd_client}",
        f"--bind-address={plan.api_v4}",
        f"--advertise-address={plan.api_v4}",
        f"--secure-port={plan.ports.apiserver}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={plan.service_cidrs}",
        "--authorization-mode=Node,RBAC",
        "--allow-privileged=true",
        "--profiling=false",
        "--enable-priority-and-fairness=false",
        "--v=1",
    ]


def controller_manager(bins: Path, plan: LabPlan, paths: Paths) -> list[str]:
    kc = paths.kubeconfig("admin")
    return [
        str(bins / "kube-controller-manager"),
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        f"--controllers={','.join(KCM_CONTROLLERS)}",
        f"--root-ca-file={paths.pki / 'ca.crt'}",
        "--use-service-account-credentials=false",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={plan.ports.controller_manager}",
        "--v=1",
    ]


def scheduler(bins: Path, plan: LabPlan, paths: Paths) -> list[str]:
    kc = paths.kubeconfig("admin")
    return [
        str(bins / "kube-scheduler"),
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={plan.ports.scheduler}",
        "--v=1",
    ]


def kube_proxy(bins: Path, plan: LabPlan, paths: Paths, node: NodePlan) -> list[str]:
    """kube-proxy for one node; run inside the node's namespace.

    The conntrack settings are zero because `nf_conntrack_max` belongs to the machine's own
    namespace and is not writable from a child namespace.
    """
    return [
        str(bins / "kube-proxy"),
        f"--kubeconfig={paths.kubeconfig('kube-proxy')}",
        f"--hostname-override={node.name}",
        f"--bind-address={node.lan_v4}",
        f"--proxy-mode={plan.proxy_mode}",
        f"--cluster-cidr={plan.cluster_cidrs}",
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0s",
        "--conntrack-tcp-timeout-close-wait=0s",
        f"--healthz-bind-address={node.lan_v4}:10256",
        "--metrics-bind-address=127.0.0.1:10249",
        "--v=1",
    ]
