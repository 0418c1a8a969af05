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
        if lab.load_plan(Paths(lab.state_dir())) is not None:  # test_down may have done it
            lab.down(quiet=True)


@pytest.fixture(scope="session")
def bare_cluster(lab_plan: LabPlan) -> LabPlan:
    """The shared lab before the session's stand-alone controller starts (the `controller`
    fixture, which lives until the end): tests that install OpenELB as users do ask for this."""
    return lab_plan


@pytest.fixture(scope="session")
def lab_teardown(lab_plan: LabPlan) -> LabPlan:
    """For the test that takes the shared lab down and checks that nothing is left."""
    return lab_plan


def _phase(item: pytest.Item) -> int:
    """When a test runs, from what it asks for: the bare cluster first, then every other test
    of the shared lab, its teardown, the tests with a lab of their own (each replaces whatever
    runs), and the tests without a lab (unit, image) last, on a quiet machine."""
    fixtures = set(getattr(item, "fixturenames", ()))
    if "own_lab" in fixtures:
        return 3
    if "lab_teardown" in fixtures:
        return 2
    if "bare_cluster" in fixtures:
        return 0
    if "lab_plan" in fixtures:
        return 1
    return 4


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_phase)  # stable: the collection order holds within a phase


@pytest.fixture(scope="session")
def kube(lab_plan: LabPlan):  # type: ignore[no-untyped-def]
    from openelb.kube.client import sync_client

    return sync_client(Paths(lab.state_dir()).kubeconfig("admin"), field_manager="openelb-tests")
