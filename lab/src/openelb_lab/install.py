"""Install OpenELB into the lab the way a user does: `kubectl apply -f deploy/openelb.yaml`.

The manifest's own Deployment and DaemonSet run: the lab's kubelet executes the OpenELB image's
containers from the Pod specs (`lab/containers.py`), under their ServiceAccounts and RBAC, and
the apiserver reaches the webhook through the controller's Service. Waits until every Pod of the
install is Ready and the webhook answers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.apps_v1 import DaemonSet, Deployment
from lightkube.resources.coordination_v1 import Lease

from openelb.api import names
from openelb.kube.resources import Eip
from openelb_lab import workloads

MANIFEST = Path(__file__).resolve().parents[3] / "deploy" / "openelb.yaml"


def manifest_docs(path: Path = MANIFEST) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def install(client: Client, manifest: Path = MANIFEST, timeout: float = 120) -> None:
    docs = manifest_docs(manifest)
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    workloads.apply(client, *crds)
    workloads.poll("the Eip API", lambda: list(client.list(Eip)) is not None, 30)
    workloads.apply(client, *(d for d in docs if d["kind"] != "CustomResourceDefinition"))
    wait_ready(client, timeout)


def wait_ready(client: Client, timeout: float = 120) -> None:
    ns = names.DEFAULT_NAMESPACE
    workloads.poll("the controller Deployment to be available", lambda: _deployment_ready(client, ns), timeout)
    workloads.poll("a speaker Ready on every node", lambda: _daemonset_ready(client, ns), timeout)
    workloads.poll("the controller to lead", lambda: _leader(client), 30)
    workloads.poll("the admission webhook", lambda: _webhook_answers(client), 30)


def _deployment_ready(client: Client, ns: str) -> bool:
    dep = client.get(Deployment, "openelb-controller", namespace=ns)
    want = dep.spec.replicas if dep.spec and dep.spec.replicas is not None else 1
    return bool(dep.status and dep.status.readyReplicas == want and dep.status.updatedReplicas == want)


def _daemonset_ready(client: Client, ns: str) -> bool:
    ds = client.get(DaemonSet, "openelb-speaker", namespace=ns)
    st = ds.status
    return bool(st and st.desiredNumberScheduled and st.numberReady == st.desiredNumberScheduled)


def _leader(client: Client) -> bool:
    lease = client.get(Lease, names.LEADER_LEASE, namespace=names.DEFAULT_NAMESPACE)
    return bool(lease.spec and lease.spec.holderIdentity)


def _webhook_answers(client: Client) -> bool:
    probe = Eip.from_dict({"metadata": {"name": f"probe-{int(time.time())}"}, "spec": {"address": "not-an-address"}})
    try:
        client.create(probe, dry_run=True)
    except ApiError as exc:
        return "invalid eip address format" in str(exc.status.message)
    return False
