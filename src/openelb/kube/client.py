"""Kubernetes client construction: one place that knows where credentials come from."""

from __future__ import annotations

import os
from pathlib import Path

import httpx2 as httpx  # the HTTP client lightkube uses
from lightkube import AsyncClient, Client, KubeConfig

TIMEOUT = httpx.Timeout(10.0, read=60.0)
"""lightkube's default is 10 s for everything: on a loaded apiserver one 500-object page of a
relist can take longer, and a relist that times out starts over, so it could never finish (seen
with 50 speakers listing 10,000 Services at once). Connecting still fails fast."""


def load_config(kubeconfig: str | Path | None = None) -> KubeConfig:
    """An explicit kubeconfig wins, then $KUBECONFIG, then the in-cluster service account."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        return KubeConfig.from_file(path)
    return KubeConfig.from_env()


def async_client(kubeconfig: str | Path | None = None, *, field_manager: str = "openelb") -> AsyncClient:
    return AsyncClient(load_config(kubeconfig), field_manager=field_manager, trust_env=False, timeout=TIMEOUT)


def sync_client(kubeconfig: str | Path | None = None, *, field_manager: str = "openelb") -> Client:
    return Client(load_config(kubeconfig), field_manager=field_manager, trust_env=False, timeout=TIMEOUT)
