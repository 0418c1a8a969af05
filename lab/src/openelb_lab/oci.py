"""The OpenELB image as the lab's kubelet runs it: an OCI runtime spec per container, run by runc.

`lab up` builds the image (`tools/image/build.sh`, cached) and unpacks it once into the lab's
state (`umoci unpack`: a root filesystem and the image's own runtime spec). Each container of a
Pod then gets a bundle whose `config.json` says what containerd's CRI plugin would from the Pod
spec: the image's entrypoint/cmd replaced by `command`/`args`, the image's env under the Pod's,
`runAsUser`/`runAsGroup`, exactly the capabilities the Pod grants (containerd's default set for a
root container that names none), the service-account token and secret volumes bound read-only at
their paths, the Pod's network namespace (the node's with `hostNetwork`), its own PID, IPC, UTS
and mount namespaces and cgroup. The root filesystem is shared by every container and mounted
read-only; containers that do not ask for `readOnlyRootFilesystem` get a tmpfs on /tmp (in a
cluster their whole root would be writable: the lab is stricter there, never laxer).

Building the spec is pure; the agent writes it and calls runc (`runc_argv`).
"""

from __future__ import annotations

import json
import resource
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from openelb_lab.containers import SA_DIR, ContainerRun

REPO = Path(__file__).resolve().parents[3]
BUILD = REPO / "tools" / "image" / "build.sh"
DEFAULT_CAPS = (
    "audit_write", "chown", "dac_override", "fowner", "fsetid", "kill", "mknod", "net_bind_service",
    "net_raw", "setfcap", "setgid", "setpcap", "setuid", "sys_chroot",
)  # fmt: skip
"""containerd's default capabilities for a container whose securityContext names none."""
RT_RUNTIME_US = 20_000
"""Real-time budget per container, per second, where cgroup v1 schedules RT tasks per group
(CONFIG_RT_GROUP_SCHED, as on this machine): a new cgroup has none, so the speaker's heartbeat
process could not run at real-time priority at all. 2 % of a CPU is ~100x what it uses."""


class ImageError(RuntimeError):
    """The image cannot be built or unpacked; the message says what to do."""


def prepare(target: Path) -> Path:
    """Build (or find cached) the image and unpack it into `target` (a bundle: `rootfs/` and the
    image's `config.json`); returns `target`. An existing unpack of the same image is kept."""
    try:
        out = subprocess.run([str(BUILD)], stdout=subprocess.PIPE, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ImageError(f"building the OpenELB image failed ({exc}); its log is above; scripts/setup "
                         "installs what it needs (mmdebstrap, umoci, uv)") from exc  # fmt: skip
    layout = Path(out.stdout.strip().splitlines()[-1])
    index = json.loads((layout / "index.json").read_text())
    manifest = index["manifests"][0]
    tag = manifest["annotations"]["org.opencontainers.image.ref.name"]
    stamp = target / "image-digest"
    if stamp.exists() and stamp.read_text() == manifest["digest"]:
        return target
    if target.exists():
        subprocess.run(["rm", "-rf", str(target)], check=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(target)], check=True,
                       capture_output=True, text=True)  # fmt: skip
    except subprocess.CalledProcessError as exc:
        raise ImageError(f"umoci unpack of {layout}:{tag} failed: {exc.stderr.strip()[-500:]}") from exc
    stamp.write_text(manifest["digest"])
    return target


def base_spec(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "config.json").read_text())  # type: ignore[no-any-return]


def _passwd(rootfs: Path, uid: int) -> tuple[int, str]:
    """(primary group, home) of `uid` in the image's /etc/passwd: containerd's choice without
    runAsGroup, and the HOME it sets."""
    try:
        for line in (rootfs / "etc" / "passwd").read_text().splitlines():
            parts = line.split(":")
            if len(parts) > 5 and parts[2] == str(uid):
                return int(parts[3]), parts[5]
    except (OSError, ValueError):
        pass
    return (0 if uid == 0 else uid), "/"


def _bind(source: str, destination: str) -> dict[str, Any]:
    return {"destination": destination, "type": "bind", "source": source, "options": ["rbind", "ro", "nosuid", "nodev"]}


def runtime_spec(
    base: Mapping[str, Any],
    run: ContainerRun,
    *,
    rootfs: Path,
    netns_path: str,
    hostname: str,
    sa_dir: str,
    volumes: Sequence[tuple[str, str]] = (),
    cgroup: str,
    rt_budget: bool = False,
    nofile: int | None = None,
) -> dict[str, Any]:
    """The OCI runtime spec of one container: `base` (the image's, from umoci) with what the Pod
    says. `nofile`: RLIMIT_NOFILE, by default the caller's own hard limit (containerd hands its
    containers its own, `LimitNOFILE=infinity` in its unit)."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    spec: dict[str, Any] = json.loads(json.dumps(base))
    uid = run.user or 0
    group, home = _passwd(rootfs, uid)
    gid = run.group if run.group is not None else group
    env = dict(e.split("=", 1) for e in base["process"].get("env", []) if "=" in e)
    env.pop("TERM", None)  # no terminal
    env["HOME"] = home
    env.update(run.env)
    caps = sorted(f"CAP_{c.upper()}" for c in (DEFAULT_CAPS if run.caps is None else run.caps))
    spec["process"] = {
        "terminal": False,
        "user": {"uid": uid, "gid": gid},
        "args": list(run.argv),
        "env": [f"{k}={v}" for k, v in env.items()],
        "cwd": base["process"].get("cwd") or "/",
        "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
        "noNewPrivileges": run.no_new_privs,
    }
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["hostname"] = hostname
    mounts = [m for m in base.get("mounts", []) if m["destination"] != "/sys/fs/cgroup"]
    if not run.read_only_root:
        mounts.append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]})  # fmt: skip
    extra = [_bind(sa_dir, SA_DIR), *(_bind(src, dst) for src, dst in volumes)]
    mounts += sorted(extra, key=lambda m: m["destination"].count("/"))  # a parent before what it holds
    spec["mounts"] = mounts
    linux = spec.setdefault("linux", {})
    linux["namespaces"] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")] + [
        {"type": "network", "path": netns_path}
    ]
    linux["cgroupsPath"] = cgroup
    resources = linux.setdefault("resources", {})
    if rt_budget:
        resources["cpu"] = {"realtimeRuntime": RT_RUNTIME_US, "realtimePeriod": 1_000_000}
    return spec


def rt_group_scheduling() -> bool:
    """Whether cgroup v1's cpu controller schedules real-time tasks per group here."""
    return Path("/sys/fs/cgroup/cpu/cpu.rt_runtime_us").exists()


def runc_argv(root: Path, *args: str) -> list[str]:
    """runc with the lab's own state root: `lab down` finds (and deletes) exactly its containers."""
    return ["runc", "--root", str(root), *args]


def delete(root: Path, container_id: str) -> None:
    """Kill and remove a container (what `runc run` leaves when runc itself is killed)."""
    subprocess.run(runc_argv(root, "delete", "--force", container_id), capture_output=True, check=False, timeout=30)


def containers(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    out = subprocess.run(runc_argv(root, "list", "-q"), capture_output=True, text=True, check=False, timeout=30)
    return out.stdout.split()
