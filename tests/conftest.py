"""Shared fixtures: the lab is brought up once per test run and torn down at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from openelb_lab import binaries, lab
from openelb_lab.components import Paths
from openelb_lab.plan import LabPlan


def _lab_capability() -> str | None:
    """Why the lab cannot run here, or None. Only truly absent capabilities count."""
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces); run scripts/test as root"
    if shutil.which("ip") is None or shutil.which("nft") is None:
        return "iproute2/nftables missing: run scripts/setup"
    probe = subprocess.run(["ip", "netns", "add", "olab-probe"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"cannot create network namespaces here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "olab-probe"], check=False)
    return None


def _lab_ready() -> None:
    """Skip where the lab cannot run; build its binaries if missing; take down a running lab."""
    why = _lab_capability()
    if why:
        pytest.skip(why)
    if binaries.find() is None:
        # Built by scripts/setup; building here too keeps `pytest` alone working on a fresh clone.
        binaries.ensure(build=True)
    # Tests own their lab: a running one (say, the demo's, with OpenELB installed) is replaced,
    # so no earlier state or process can leak into the results.
    if lab.load_plan(Paths(lab.state_dir())) is not None:
        lab.down(quiet=True)


@pytest.fixture
def own_lab() -> Iterator[None]:
    """For a test that brings up a lab of its own shape (and takes it down itself): none other runs."""
    _lab_ready()
    try:
        yield
    finally:
        if lab.load_plan(Paths(lab.state_dir())) is not None:
            lab.down(quiet=True)


@pytest.fixture(scope="session")
def lab_plan() -> Iterator[LabPlan]:
    _lab_ready()
    plan = lab.up(3)
    try:
        yield plan
    finally:
        if lab.load_plan(Paths(lab.state_dir())) is not None:  # test_zz_down may have done it
            lab.down(quiet=True)


@pytest.fixture(scope="session")
def kube(lab_plan: LabPlan):  # type: ignore[no-untyped-def]
    from openelb.kube.client import sync_client

    return sync_client(Paths(lab.state_dir()).kubeconfig("admin"), field_manager="openelb-tests")
