"""Find the Kubernetes and etcd binaries, envtest style, building them when missing.

Order: `KUBEBUILDER_ASSETS`, then the build cache (`tools/k8s/build.sh`'s output), then PATH.
A directory only counts when it holds every binary, so versions are never mixed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REQUIRED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl")
DEFAULT_VERSION = "v1.35.4"


class MissingBinaries(RuntimeError):
    pass


def cache_root() -> Path:
    env = os.environ.get("OPENELB_BIN_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "openelb-lab"


def _complete(d: Path) -> bool:
    return all(os.access(d / b, os.X_OK) for b in REQUIRED)


def find() -> Path | None:
    """The directory holding every binary, or None."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and _complete(Path(assets)):
        return Path(assets)
    version = os.environ.get("K8S_VERSION", DEFAULT_VERSION)
    candidates = [cache_root() / version]
    if cache_root().is_dir():
        candidates += sorted((p for p in cache_root().iterdir() if p.name.startswith("v")), reverse=True)
    for c in candidates:
        if _complete(c):
            return c
    found = [shutil.which(b) for b in REQUIRED]
    if all(found):
        dirs = {Path(f).parent for f in found if f}
        if len(dirs) == 1:
            return dirs.pop()
    return None


def build_script() -> Path:
    return Path(__file__).resolve().parents[3] / "tools" / "k8s" / "build.sh"


def ensure(build: bool = True) -> Path:
    """Return the binary directory, running the build script (minutes, cold) when allowed."""
    found = find()
    if found:
        return found
    script = build_script()
    if not build or not script.exists():
        raise MissingBinaries(
            "the Kubernetes binaries (" + ", ".join(REQUIRED) + ") were not found in KUBEBUILDER_ASSETS, "
            f"{cache_root()} or PATH; build them with tools/k8s/build.sh (needs Go and the Go module proxy)"
        )
    proc = subprocess.run([str(script)], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise MissingBinaries(f"{script} failed (exit {proc.returncode}); see its output above")
    out = Path(proc.stdout.strip().splitlines()[-1])
    if not _complete(out):
        raise MissingBinaries(f"{script} reported {out}, which lacks some of {', '.join(REQUIRED)}")
    return out


def version(bin_dir: Path) -> str:
    marker = bin_dir / "VERSION"
    if marker.exists():
        return marker.read_text().strip()
    out = subprocess.run([str(bin_dir / "kube-apiserver"), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().split()[-1] if out.stdout.strip() else "unknown"
