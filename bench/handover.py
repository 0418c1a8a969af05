"""OpenELB's speakers in the lab, as the peer benchmarks see them: the process on a node, and
handing the nodes over to a peer (never two load balancers answering for the same addresses)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from lightkube.core.exceptions import ApiError
from lightkube.resources.apps_v1 import DaemonSet

from openelb.api import names
from openelb_lab import containers, netns, workloads
from openelb_lab.plan import LabPlan


def speaker_pid(plan: LabPlan, node: str) -> int | None:
    """The speaker Pod's process on `node` (hostNetwork: it runs in the node's namespace; the lab's
    kubelet restarts it when it exits, as a DaemonSet pod's container)."""
    for pid in netns.netns_pids(plan.node(node).netns):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            if containers.openelb_role(argv) == "speaker":
                return pid
    return None


def stop_openelb_speakers(client: Any, plan: LabPlan) -> None:
    """Remove OpenELB's speaker DaemonSet and wait until no speaker process is left on any node:
    the peer's speakers must be the only ones answering for the benchmark's addresses (the
    benchmark applies OpenELB's manifest again afterwards)."""
    with contextlib.suppress(ApiError):
        client.delete(DaemonSet, "openelb-speaker", namespace=names.DEFAULT_NAMESPACE)
    workloads.poll("OpenELB's speakers to stop", lambda: all(speaker_pid(plan, n.name) is None for n in plan.nodes), 60)
