"""Install OpenELB into the lab for the demo: CRDs, the webhook registration, a controller
process in the root namespace and a supervised speaker in every node's namespace (recorded like
the lab's other daemons, so `lab down` stops them).

The apiserver calls the webhook at the lab's root address; in a real cluster the install
manifest points it at the controller's Service instead.
"""

from __future__ import annotations

import sys
import time

from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.coordination_v1 import Lease

from openelb.api import crds, names
from openelb.controller.webhook import webhook_configuration
from openelb.kube.resources import Eip
from openelb.lab import netns, processes, workloads
from openelb.lab.components import Paths
from openelb.lab.plan import LabPlan

DAEMON = "openelb-controller"


def install(client: Client, plan: LabPlan, paths: Paths) -> None:
    for crd in crds.definitions():
        workloads.apply(client, crd)
    workloads.poll("the Eip API", lambda: list(client.list(Eip)) is not None, 30)
    workloads.ensure_namespace(client, names.DEFAULT_NAMESPACE)
    workloads.apply(client, webhook_configuration("openelb-admission", url=f"https://{plan.api_v4}:9443"))
    running = [d for d in processes.recorded(paths.state) if d.name == DAEMON and processes.is_running(d)]
    if not running:
        argv = [
            sys.executable, "-m", "openelb", "controller",
            f"--kubeconfig={paths.kubeconfig('admin')}",
            f"--webhook-addr={plan.api_v4}:9443", f"--webhook-ip={plan.api_v4}",
            "--metrics-addr=127.0.0.1:50052",
        ]  # fmt: skip
        processes.start(paths.state, DAEMON, argv)
    for node in plan.nodes:
        name = f"openelb-speaker-{node.name}"
        if any(d.name == name and processes.is_running(d) for d in processes.recorded(paths.state)):
            continue
        speaker = [sys.executable, "-m", "openelb", "speaker", f"--kubeconfig={paths.kubeconfig('admin')}"]
        argv = [sys.executable, "-m", "openelb", "lab", "supervise", "--", *netns.exec_argv(node.netns, speaker)]
        processes.start(paths.state, name, argv, env={"NODE_NAME": node.name})
    workloads.poll("the controller to lead", lambda: _leader(client), 30)
    workloads.poll("the admission webhook", lambda: _webhook_answers(client), 30)


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
