"""Kubernetes client construction: one place that knows where credentials come from."""

from __future__ import annotations

import os
from pathlib import Path

from lightkube import AsyncClient, Client, KubeConfig


def load_config(kubeconfig: str | Path | None = None) -> KubeConfig:
    """An explicit kubeconfig wins, then $KUBECONFIG, then the in-cluster service account."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        return KubeConfig.from_file(path)
    return KubeConfig.from_env()


def async_client(kubeconfig: str | Path | None = None, *, field_manager: str = "openelb") -> AsyncClient:
    return AsyncClient(load_config(kubeconfig), field_manager=field_manager, trust_env=False)


def sync_client(kubeconfig: str | Path | None = None, *, field_manager: str = "openelb") -> Client:
    return Client(load_config(kubeconfig), field_manager=field_manager, trust_env=False)
