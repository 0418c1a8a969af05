"""Containers of the OpenELB image, planned by the lab's kubelet from the Pod spec alone.

A Pod whose container uses the OpenELB image runs as the Pod spec says: `command`/`args` (the
image's entrypoint is `openelb`), `env` with `fieldRef`, `secretKeyRef` and `configMapKeyRef`, the
service-account token projected at the standard path, secret volumes, `hostNetwork` (the node's
namespace, else the pod's), `runAsUser`/`runAsGroup`, capabilities, `readOnlyRootFilesystem`,
`allowPrivilegeEscalation`, readiness probes. A wrong flag, env var, port or RBAC rule in the
manifests therefore fails in the lab as it would in a cluster. `plan` is pure and runtime-neutral;
the image itself runs under runc (`oci.py`, the default), or, with `openelb-lab up --runtime
checkout` for quick iterations on the code, this checkout's Python with the same identity,
capabilities and namespaces (`wrap`).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lightkube.models.core_v1 import Container
from lightkube.resources.core_v1 import Pod

IMAGE_REPOSITORY = "openelb/openelb-python"
"""The chart's image; any registry and tag."""
ENTRYPOINT = ("openelb",)
GO_COMMANDS = {"openelb-controller": "controller", "openelb-speaker": "speaker"}
"""Go OpenELB's executables (its manifest's `command:`), also in our image."""
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

Lookup = Callable[[str, str, str, str], str | None]
"""(kind "Secret"|"ConfigMap", namespace, name, key) -> value."""


class ContainerError(ValueError):
    """The Pod cannot start as written (a kubelet would report CreateContainerConfigError)."""


def is_openelb_image(image: str | None) -> bool:
    if not image:
        return False
    ref = image.split("@", 1)[0]
    repo = ref.rsplit(":", 1)[0] if ":" in ref.rsplit("/", 1)[-1] else ref
    return repo == IMAGE_REPOSITORY or repo.endswith("/" + IMAGE_REPOSITORY)


@dataclass(frozen=True)
class Probe:
    port: int = 0
    path: str = "/"
    exec: tuple[str, ...] = ()
    """An exec probe's command (run in the container's network namespace) instead of httpGet."""
    tcp: bool = False
    """A tcpSocket probe of `port` instead of httpGet."""
    timeout: float = 1.0


@dataclass(frozen=True)
class SecretMount:
    """A `secret` volume mounted into the container: files from the Secret's keys."""

    path: str
    secret: str
    items: tuple[tuple[str, str], ...]
    """(key, file name); empty: every key under its own name."""


@dataclass(frozen=True)
class ContainerRun:
    name: str
    argv: list[str]
    env: dict[str, str]
    user: int | None = None
    group: int | None = None
    caps: tuple[str, ...] | None = None
    """None: a root container's default set; else exactly these (lower case, no CAP_ prefix)."""
    readiness: Probe | None = None
    mounts: tuple[SecretMount, ...] = ()
    read_only_root: bool = False
    no_new_privs: bool = False
    """`allowPrivilegeEscalation: false` (Kubernetes' default is to allow it)."""


CHECKOUT_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
"""What the image's environment gives its programs, for the checkout runtime."""


ROLES = ("controller", "speaker", "forward")


def openelb_role(argv: Sequence[str]) -> str | None:
    """Which OpenELB daemon a command line runs, however it was started: the image's `openelb
    speaker` (a console script under its Python), Go OpenELB's `openelb-speaker`, or this
    checkout's `python -m openelb speaker`. Tests and benchmarks find the Pods' processes by it."""
    head = list(argv[:4])
    for i, arg in enumerate(head):
        base = arg.rsplit("/", 1)[-1]
        if base == "openelb" and i + 1 < len(argv) and (i == 0 or head[i - 1] == "-m" or "/" in arg):
            role = argv[i + 1]
            return role if role in ROLES else None
        if base in GO_COMMANDS:
            return GO_COMMANDS[base]
    return None


def checkout_argv(argv: Sequence[str]) -> list[str]:
    """The image's `openelb` (and Go OpenELB's `openelb-controller`/`openelb-speaker`, which the
    image has too) as this checkout's Python runs it."""
    argv = list(argv)
    if argv[:1] and argv[0] in GO_COMMANDS:
        argv = [*ENTRYPOINT, GO_COMMANDS[argv[0]], *argv[1:]]
    if argv[:1] == list(ENTRYPOINT):
        argv = [sys.executable, "-m", "openelb", *argv[1:]]
    return argv


def _field(pod: Pod, path: str, pod_ip: str, host_ip: str) -> str:
    md, spec = pod.metadata, pod.spec
    assert md is not None and spec is not None
    values = {
        "metadata.name": md.name,
        "metadata.namespace": md.namespace,
        "metadata.uid": md.uid,
        "spec.nodeName": spec.nodeName,
        "spec.serviceAccountName": spec.serviceAccountName,
        "status.podIP": pod_ip,
        "status.hostIP": host_ip,
    }
    if path not in values:
        raise ContainerError(f"unsupported fieldRef {path}")
    return str(values[path] or "")


def _probe(c: Container, kind: str, ports: dict[str, int]) -> Probe | None:
    probe = getattr(c, kind)
    if probe is not None and probe.exec is not None and probe.exec.command:
        return Probe(exec=tuple(probe.exec.command), timeout=float(probe.timeoutSeconds or 1))
    if probe is not None and probe.tcpSocket is not None:
        port = probe.tcpSocket.port
        if isinstance(port, str) and not port.isdigit():
            if port not in ports:
                raise ContainerError(f"container {c.name}: {kind} names port {port!r}, which is not declared")
            port = ports[port]
        return Probe(port=int(port), tcp=True, timeout=float(probe.timeoutSeconds or 1))
    if probe is None or probe.httpGet is None:
        return None
    port = probe.httpGet.port
    if isinstance(port, str) and not port.isdigit():
        if port not in ports:
            raise ContainerError(f"container {c.name}: {kind} names port {port!r}, which is not declared")
        port = ports[port]
    return Probe(int(port), probe.httpGet.path or "/")


def plan(pod: Pod, c: Container, lookup: Lookup, api: tuple[str, int], *, pod_ip: str, host_ip: str) -> ContainerRun:
    md, spec = pod.metadata, pod.spec
    assert md is not None and spec is not None
    argv = list(c.command or ENTRYPOINT) + list(c.args or [])
    env = {
        "KUBERNETES_SERVICE_HOST": api[0],
        "KUBERNETES_SERVICE_PORT": str(api[1]),
    }
    for e in c.env or []:
        if e.valueFrom is None:
            env[e.name] = e.value or ""
            continue
        vf = e.valueFrom
        if vf.fieldRef is not None:
            env[e.name] = _field(pod, vf.fieldRef.fieldPath, pod_ip, host_ip)
            continue
        ref, kind = (vf.secretKeyRef, "Secret") if vf.secretKeyRef is not None else (vf.configMapKeyRef, "ConfigMap")
        if ref is None:
            raise ContainerError(f"container {c.name}: env {e.name}: unsupported valueFrom")
        value = lookup(kind, md.namespace or "default", ref.name or "", ref.key)
        if value is None:
            if ref.optional:
                continue
            raise ContainerError(f"container {c.name}: env {e.name}: {kind} {ref.name} has no key {ref.key}")
        env[e.name] = value
    ports = {p.name: p.containerPort for p in c.ports or [] if p.name}
    pod_sc, sc = spec.securityContext, c.securityContext
    user = (sc.runAsUser if sc and sc.runAsUser is not None else None) or (pod_sc.runAsUser if pod_sc else None)
    group = (sc.runAsGroup if sc and sc.runAsGroup is not None else None) or (pod_sc.runAsGroup if pod_sc else None)
    non_root = (sc.runAsNonRoot if sc and sc.runAsNonRoot is not None else None) or (
        pod_sc.runAsNonRoot if pod_sc else None
    )
    if non_root and not user:
        raise ContainerError(f"container {c.name}: runAsNonRoot without a non-zero runAsUser")
    caps: tuple[str, ...] | None = None
    if sc and sc.capabilities:
        drop = {x.upper() for x in sc.capabilities.drop or []}
        add = tuple(sorted(x.lower().removeprefix("cap_") for x in sc.capabilities.add or []))
        if "ALL" in drop or add:
            caps = add
    _probe(c, "livenessProbe", ports)  # not run by the lab, but a wrong port name fails here too
    volumes = {v.name: v for v in spec.volumes or []}
    mounts = []
    for vm in c.volumeMounts or []:
        vol = volumes.get(vm.name)
        if vm.mountPath.rstrip("/") == SA_DIR and vol is not None and vol.projected is not None:
            continue  # the service-account token the apiserver adds: projected by the agent (below)
        if vol is None:
            raise ContainerError(f"container {c.name}: volumeMount {vm.name} names no volume of the Pod")
        if vol.secret is None:
            raise ContainerError(f"container {c.name}: volume {vm.name}: only secret volumes run in the lab")
        items = tuple((i.key, i.path) for i in vol.secret.items or [])
        mounts.append(SecretMount(vm.mountPath, vol.secret.secretName or "", items))
    return ContainerRun(
        name=c.name,
        argv=argv,
        env=env,
        user=user,
        group=group,
        caps=caps,
        readiness=_probe(c, "readinessProbe", ports),
        mounts=tuple(mounts),
        read_only_root=bool(sc and sc.readOnlyRootFilesystem),
        no_new_privs=bool(sc and sc.allowPrivilegeEscalation is False),
    )


def wrap(run: ContainerRun, netns_name: str, sa_dir: str, volumes: tuple[tuple[str, str], ...] = ()) -> list[str]:
    """The host command line: a private mount namespace with the token at the standard path (and
    each secret volume, materialized in a host directory, bind-mounted at its mountPath), the
    network namespace, then the identity and capabilities."""
    inner = ["ip", "netns", "exec", netns_name]
    priv = ["setpriv", "--no-new-privs"]
    if run.user:
        priv += [f"--reuid={run.user}", f"--regid={run.group or run.user}", "--clear-groups"]
    if run.caps is not None:
        keep = ",".join(["-all", *(f"+{c}" for c in run.caps)])
        priv += [f"--bounding-set={keep}", f"--inh-caps={keep}"]
        # No ambient set, as Kubernetes sets none: a non-root user's capabilities end at the exec.
    inner += [*priv, "--", *checkout_argv(run.argv)]
    binds = "".join(f" && mkdir -p {shlex.quote(dst)} && mount --bind {shlex.quote(src)} {shlex.quote(dst)}"
                    for src, dst in volumes)  # fmt: skip
    script = f'mount --bind "$0" {SA_DIR}{binds} && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, sa_dir, *inner]
