"""The lab kubelet's OCI runtime spec for a container of the OpenELB image: what containerd's CRI
plugin would write from the Pod spec (pure; the lab tests run it under runc)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from openelb_lab import containers, oci

BASE: dict[str, Any] = {
    "ociVersion": "1.0.2",
    "process": {"args": ["openelb", "--help"], "cwd": "/", "env": ["PATH=/app/.venv/bin:/usr/bin", "TERM=xterm",
                                                                  "HOME=/root"]},
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
               {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}],
    "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}], "resources": {"devices": []}},
}  # fmt: skip


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nopenelb:x:65532:65532::/nonexistent:/x\n")
    return tmp_path


def spec(run: containers.ContainerRun, rootfs: Path, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"rootfs": rootfs, "netns_path": "/run/netns/n1", "hostname": "node-1",
                            "sa_dir": "/lab/sa", "cgroup": "openelb-lab-pod-x-c", **kw}  # fmt: skip
    return oci.runtime_spec(BASE, run, **args)


def test_a_non_root_container_with_no_capabilities_and_a_read_only_root(rootfs: Path) -> None:
    run = containers.ContainerRun("controller", ["openelb", "controller", "--x"], {"A": "1"}, user=65532, caps=(),
                                  read_only_root=True, no_new_privs=True)  # fmt: skip
    s = spec(run, rootfs)
    p = s["process"]
    assert p["args"] == ["openelb", "controller", "--x"]  # the Pod's command, not the image's cmd
    assert p["user"] == {"uid": 65532, "gid": 65532}  # the group from the image's passwd
    assert "PATH=/app/.venv/bin:/usr/bin" in p["env"] and "A=1" in p["env"] and "HOME=/nonexistent" in p["env"]
    assert not any(e.startswith("TERM=") for e in p["env"])
    assert p["capabilities"] == {"bounding": [], "effective": [], "permitted": []}
    assert p["noNewPrivileges"] is True and p["terminal"] is False
    assert s["root"] == {"path": str(rootfs), "readonly": True}
    destinations = [m["destination"] for m in s["mounts"]]
    assert "/tmp" not in destinations and "/sys/fs/cgroup" not in destinations  # as readOnlyRootFilesystem says
    assert destinations[-1] == containers.SA_DIR
    assert {"type": "network", "path": "/run/netns/n1"} in s["linux"]["namespaces"]
    assert {n["type"] for n in s["linux"]["namespaces"]} == {"pid", "ipc", "uts", "mount", "network"}
    assert s["linux"]["cgroupsPath"] == "openelb-lab-pod-x-c"
    assert "cpu" not in s["linux"]["resources"]


def test_a_root_speaker_with_exactly_its_capabilities_volumes_under_tmp_and_an_rt_budget(rootfs: Path) -> None:
    run = containers.ContainerRun("speaker", ["openelb-speaker"], {}, caps=("net_admin", "net_raw", "sys_nice"))
    s = spec(run, rootfs, volumes=[("/lab/v0", "/tmp/certs")], rt_budget=True)
    assert s["process"]["user"] == {"uid": 0, "gid": 0}
    assert s["process"]["capabilities"]["effective"] == ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_NICE"]
    assert "ambient" not in s["process"]["capabilities"]  # none in Kubernetes: non-root loses them at exec
    assert s["process"]["noNewPrivileges"] is False
    destinations = [m["destination"] for m in s["mounts"]]
    assert destinations.index("/tmp") < destinations.index("/tmp/certs")  # the tmpfs first, then what it holds
    certs = next(m for m in s["mounts"] if m["destination"] == "/tmp/certs")
    assert certs["source"] == "/lab/v0" and "ro" in certs["options"]
    assert s["linux"]["resources"]["cpu"]["realtimeRuntime"] > 0
    assert BASE["process"]["args"] == ["openelb", "--help"]  # the image's spec is not modified


def test_a_container_that_names_no_capabilities_gets_containerds_default_set(rootfs: Path) -> None:
    caps = spec(containers.ContainerRun("c", ["openelb"], {}), rootfs)["process"]["capabilities"]["bounding"]
    assert "CAP_NET_RAW" in caps and "CAP_CHOWN" in caps and "CAP_NET_ADMIN" not in caps and "CAP_SYS_ADMIN" not in caps


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["/app/.venv/bin/python", "/app/.venv/bin/openelb", "speaker", "--bind-port=7946"], "speaker"),
        (["/app/.venv/bin/python", "/app/.venv/bin/openelb-controller", "--leader-elect"], "controller"),
        (["/usr/bin/python3", "-m", "openelb", "forward", "--port", "tcp/80"], "forward"),
        (["openelb", "controller"], "controller"),
        (["/usr/bin/python3", "-m", "openelb", "status"], None),
        (["/usr/bin/python3", "-m", "openelb_lab", "agent", "--node", "node-1"], None),
        (["grep", "openelb speaker"], None),
    ],
)
def test_the_daemon_a_command_line_runs(argv: list[str], role: str | None) -> None:
    assert containers.openelb_role(argv) == role


def test_the_checkout_runtime_runs_the_images_commands_with_this_python() -> None:
    import sys

    assert containers.checkout_argv(["openelb-speaker", "--x"]) == [sys.executable, "-m", "openelb", "speaker", "--x"]
    assert containers.checkout_argv(["sh", "-c", "gobgp"]) == ["sh", "-c", "gobgp"]
