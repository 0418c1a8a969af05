"""Runs after every test of the shared lab (it asks for `lab_teardown`): `lab down` must leave
nothing behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from openelb_lab import lab, netns, processes
from openelb_lab.components import Paths
from openelb_lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.k8s_lab, pytest.mark.usefixtures("lab_teardown")]


def test_down_leaves_no_namespace_process_link_or_file(lab_plan: LabPlan) -> None:
    paths = Paths(lab.state_dir())
    daemons = processes.recorded(paths.state)
    assert daemons, "the lab recorded no processes"
    lab.down(quiet=True)
    assert netns.lab_netns() == []
    assert not netns.link_exists(lab_plan.root_link)
    assert not paths.state.exists()
    for d in daemons:
        assert not processes.is_running(d), d.name
    assert _live_lab_processes() == []
    # and down is idempotent
    lab.down(quiet=True)


PATTERN = "|".join(
    (
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
        "openelb_lab agent",
        "openelb_lab.podserver",
        "etcd --name=openelb-lab",
        "runc --root /run/openelb-lab",  # the kubelet's containers of the OpenELB image
    )
)


def _live_lab_processes() -> list[str]:
    """Lab processes still alive (zombies awaiting their reaper are dead and do not count)."""
    pids = subprocess.run(["pgrep", "-f", PATTERN], capture_output=True, text=True, check=False).stdout.split()
    live = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[0] != "Z":
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            live.append(f"{pid}: {cmdline[:200]!r}")
    return live
