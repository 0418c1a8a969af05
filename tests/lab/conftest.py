"""Fixtures for controller tests: CRDs installed, the webhook registered, controller processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import NS, ControllerProcess, lease_holder, wait_webhook
from lightkube import Client
from lightkube.resources.core_v1 import Service

from openelb.api import crds
from openelb.controller.webhook import webhook_configuration
from openelb.kube.resources import Eip
from openelb_lab import lab, workloads
from openelb_lab.components import Paths
from openelb_lab.plan import LabPlan


@pytest.fixture(scope="session")
def openelb_api(kube: Client, lab_plan: LabPlan) -> Iterator[None]:
    """CRDs, the openelb-system namespace and the webhook registration (pointing at the root netns)."""
    for crd in crds.definitions():
        workloads.apply(kube, crd)
    workloads.poll("Eip API served", lambda: list(kube.list(Eip)) is not None, 30)
    workloads.ensure_namespace(kube, NS)
    workloads.apply(kube, webhook_configuration("openelb-admission", url=f"https://{lab_plan.api_v4}:9443"))
    yield


@pytest.fixture(scope="session")
def controller(openelb_api: None, lab_plan: LabPlan, kube: Client) -> Iterator[dict[str, Any]]:
    """One running controller for the session; tests that kill it must leave one running."""
    kc = Paths(lab.state_dir()).kubeconfig("admin")
    state: dict[str, Any] = {"procs": []}

    def start(name: str = "ctl-a", webhook_port: int = 9443) -> ControllerProcess:
        """In the lab all replicas share the root netns: a standby needs its own webhook port."""
        p = ControllerProcess(name, kc, lab_plan.api_v4, webhook_port)
        state["procs"].append(p)
        return p

    state["start"] = start
    try:
        first = start()
        workloads.poll("controller leads", lambda: lease_holder(kube) is not None and first.alive(), 30)
        wait_webhook(kube)
        yield state
    finally:
        for p in state["procs"]:
            p.stop()


@pytest.fixture
def ns(kube: Client) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    workloads.ensure_namespace(kube, name)
    yield name
    for svc in kube.list(Service, namespace=name):
        kube.delete(Service, svc.metadata.name, namespace=name)  # type: ignore[union-attr]
    workloads.delete_namespace(kube, name)
