"""Runs last in the lab tests (file order): `lab down` must leave nothing behind."""

from __future__ import annotations

import subprocess

import pytest

from openelb.lab import lab, netns, processes
from openelb.lab.components import Paths
from openelb.lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.k8s_lab]


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
    leftovers = subprocess.run(
        ["pgrep", "-f", "kube-apiserver|kube-controller-manager|kube-scheduler|kube-proxy|openelb lab agent|etcd --name=openelb-lab"],
        capture_output=True, text=True, check=False,
    ).stdout
    assert leftovers.strip() == ""
    # and down is idempotent
    lab.down(quiet=True)
