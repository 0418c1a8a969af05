from pathlib import Path

from openelb_lab import components
from openelb_lab.components import Paths
from openelb_lab.plan import make_plan

BINS = Path("/opt/k8s")
PATHS = Paths(Path("/run/openelb-lab"))


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)


def test_apiserver_is_dual_stack_tls_rbac_with_sa_issuer() -> None:
    plan = make_plan(3)
    argv = components.apiserver(BINS, plan, PATHS)
    f = _flags(argv)
    assert argv[0] == "/opt/k8s/kube-apiserver"
    assert f["service-cluster-ip-range"] == "198.19.0.0/16,2001:db8:ff::/112"
    assert f["bind-address"] == "198.18.0.1" and f["secure-port"] == "6443"
    assert "RBAC" in f["authorization-mode"].split(",")
    assert f["client-ca-file"].endswith("pki/ca.crt")
    assert f["service-account-signing-key-file"].endswith("pki/sa.key")
    assert f["etcd-servers"] == "http://127.0.0.1:23790"


def test_controller_manager_runs_what_the_lab_needs_and_no_node_lifecycle() -> None:
    f = _flags(components.controller_manager(BINS, make_plan(), PATHS))
    ctrls = f["controllers"].split(",")
    for needed in (
        "deployment-controller",
        "replicaset-controller",
        "endpointslice-controller",
        "serviceaccount-controller",
        "garbage-collector-controller",
        "namespace-controller",
    ):
        assert needed in ctrls
    assert not any("node-lifecycle" in c for c in ctrls)
    assert f["leader-elect"] == "false"


def test_kube_proxy_per_node_identity_mode_and_conntrack() -> None:
    plan = make_plan(2, "iptables")
    f = _flags(components.kube_proxy(BINS, plan, PATHS, plan.nodes[1]))
    assert f["hostname-override"] == "node-2"
    assert f["bind-address"] == "198.18.0.12"
    assert f["proxy-mode"] == "iptables"
    assert f["cluster-cidr"] == "198.18.64.0/18,2001:db8:1::/48"
    assert f["conntrack-max-per-core"] == "0"
    assert f["kubeconfig"].endswith("kube-proxy.kubeconfig")


def test_etcd_stays_on_loopback() -> None:
    f = _flags(components.etcd(BINS, make_plan(), PATHS))
    for key in ("listen-client-urls", "listen-peer-urls", "advertise-client-urls"):
        assert f[key].startswith("http://127.0.0.1:")
    assert f["data-dir"] == "/run/openelb-lab/etcd"
