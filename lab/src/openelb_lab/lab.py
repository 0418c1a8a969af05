"""`openelb-lab up|down|status`: a real Kubernetes control plane with emulated nodes on one machine.

`up` is idempotent (a healthy lab is left alone, a broken one is removed and rebuilt) and `down`
removes everything `up` may have created, found by recorded PIDs and by the lab's name prefix, so
it also cleans up after a crashed or interrupted `up`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.core_v1 import NodeSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node, ServiceAccount
from lightkube.types import PatchType

from openelb import pki
from openelb.kube.client import sync_client
from openelb_lab import binaries, components, containers, netns, oci, processes, topology
from openelb_lab.components import Paths
from openelb_lab.plan import FULL_NODES, LabPlan, NodePlan, make_plan

DEFAULT_STATE = Path("/run/openelb-lab")
START_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


class LabError(RuntimeError):
    """A lab operation cannot proceed; the message says what to do."""


def state_dir() -> Path:
    return Path(os.environ.get("OPENELB_LAB_DIR", str(DEFAULT_STATE)))


class Progress:
    """Timestamped progress lines on stderr, so long steps show what happens and for how long."""

    def __init__(self, quiet: bool = False) -> None:
        self.t0 = time.monotonic()
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[lab +{time.monotonic() - self.t0:5.1f}s] {msg}", file=sys.stderr, flush=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def wait_for(what: str, check: Callable[[], bool], timeout: float, log_hint: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: S110 - not ready yet is any failure
            pass
        time.sleep(0.2)
    hint = f"; see {log_hint}" if log_hint else ""
    raise LabError(f"timed out after {timeout:.0f}s waiting for {what}{hint}")


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab creates network namespaces and must run as root (try: sudo openelb-lab ...)")
    missing = [t for t in ("ip", "nft", "sysctl") if shutil.which(t) is None]
    if missing:
        raise LabError(f"missing system tools: {', '.join(missing)}; run scripts/setup (installs iproute2 nftables)")


def load_plan(paths: Paths) -> LabPlan | None:
    try:
        return LabPlan.from_json(json.loads(paths.plan_file.read_text()))
    except (OSError, ValueError, KeyError):
        return None


def _https_ok(url: str, ca: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:  # noqa: S310 - lab URL
        return resp.status == 200  # type: ignore[no-any-return]


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - lab URL
        return resp.status == 200  # type: ignore[no-any-return]


def is_healthy(paths: Paths) -> bool:
    plan = load_plan(paths)
    if plan is None:
        return False
    running = {d.name for d in processes.recorded(paths.state) if processes.is_running(d)}
    needed = (
        set(START_ORDER)
        | {f"kube-proxy-{n.name}" for n in plan.nodes if not n.light}
        | {f"agent-{n.name}" for n in plan.nodes}
    )
    if not needed <= running:
        return False
    try:
        return _https_ok(f"{plan.api_url}/readyz", paths.pki / "ca.crt")
    except (OSError, urllib.error.URLError):
        return False


def up(
    node_count: int = 3,
    proxy_mode: str = "nftables",
    quiet: bool = False,
    full_nodes: int = FULL_NODES,
    runtime: str | None = None,
) -> LabPlan:
    """Start the lab (idempotent). `runtime`: how OpenELB's Pods run, "image" (default) or
    "checkout"; unset, from OPENELB_LAB_RUNTIME."""
    runtime = runtime or os.environ.get("OPENELB_LAB_RUNTIME") or "image"
    require_root()
    say = Progress(quiet)
    paths = Paths(state_dir())
    existing = load_plan(paths)
    if existing and is_healthy(paths):
        full = sum(1 for n in existing.nodes if not n.light)
        if (
            len(existing.nodes) == node_count
            and existing.proxy_mode == proxy_mode
            and existing.runtime == runtime
            and full == min(full_nodes, node_count)
        ):
            say(f"lab already up ({len(existing.nodes)} nodes); nothing to do")
            return existing
        say("lab is up with a different shape; tearing it down first")
        down(quiet=quiet)
    elif existing or netns.lab_netns():
        say("found leftovers of an earlier lab; removing them first")
        down(quiet=quiet)

    say("locating Kubernetes binaries (building them when missing: ~15-30 min cold)")
    bins = binaries.ensure()
    say(f"binaries: {bins} ({binaries.version(bins)})")
    plan = make_plan(node_count, proxy_mode, full_nodes, runtime)
    paths.state.mkdir(parents=True, exist_ok=True)
    if runtime == "image":
        say("the OpenELB image: building it when its inputs changed (~70 s), unpacking it for runc")
        try:
            oci.prepare(paths.image)
        except oci.ImageError as exc:
            raise LabError(str(exc)) from None
    paths.plan_file.write_text(json.dumps(plan.to_json(), indent=2))
    try:
        _up(plan, paths, bins, say)
    except BaseException:
        say("lab up failed; removing what was started (logs kept in " + str(paths.state / "logs") + ")")
        down(quiet=True, keep_logs=True)
        raise
    say(f"lab up in {say.elapsed:.1f}s: {len(plan.nodes)} nodes, API {plan.api_url}")
    say(f"kubeconfig: {paths.kubeconfig('admin')}")
    return plan


def _up(plan: LabPlan, paths: Paths, bins: Path, say: Progress) -> None:
    say("writing PKI and kubeconfigs")
    write_pki(plan, paths)
    say("building network: switch, LAN/WAN bridges, nodes, client, router, remote")
    topology.build(plan)
    state = paths.state
    # Mount point of the projected service-account token of OpenELB containers (each container
    # binds its own token there in a private mount namespace); removed by `down` when empty.
    Path(containers.SA_DIR).mkdir(parents=True, exist_ok=True)

    say("starting etcd")
    processes.start(state, "etcd", components.etcd(bins, plan, paths))
    wait_for("etcd", lambda: _http_ok(f"http://127.0.0.1:{plan.ports.etcd_client}/health"), 30, state / "logs/etcd.log")
    say("starting kube-apiserver")
    processes.start(state, "kube-apiserver", components.apiserver(bins, plan, paths))
    wait_for(
        "kube-apiserver /readyz",
        lambda: _https_ok(f"{plan.api_url}/readyz", paths.pki / "ca.crt"),
        90,
        state / "logs/kube-apiserver.log",
    )
    say("starting kube-controller-manager and kube-scheduler")
    processes.start(state, "kube-controller-manager", components.controller_manager(bins, plan, paths))
    processes.start(state, "kube-scheduler", components.scheduler(bins, plan, paths))

    client = sync_client(paths.kubeconfig("admin"), field_manager="openelb-lab")
    say(f"registering {len(plan.nodes)} nodes")
    for node in plan.nodes:
        register_node(client, node, binaries.version(bins))
    light = sum(1 for n in plan.nodes if n.light)
    say(
        "starting kube-proxy and the node agent (pod emulator) on every node"
        + (f" ({light} light: agent only)" if light else "")
    )
    for node in plan.nodes:
        if not node.light:
            argv = netns.exec_argv(node.netns, components.kube_proxy(bins, plan, paths, node))
            processes.start(state, f"kube-proxy-{node.name}", argv)
        agent = [sys.executable, "-m", "openelb_lab", "agent", "--node", node.name]
        processes.start(state, f"agent-{node.name}", agent, env={"OPENELB_LAB_DIR": str(state)})
    for node in (n for n in plan.nodes if not n.light):
        wait_for(
            f"kube-proxy on {node.name}",
            lambda n=node: _http_ok(f"http://{n.lan_v4}:10256/healthz"),  # type: ignore[misc]
            60,
            state / f"logs/kube-proxy-{node.name}.log",
        )
    wait_for("the default ServiceAccount", lambda: _exists(client, ServiceAccount, "default", "default"), 60)
    wait_for("nodes Ready", lambda: all(_node_ready(client, n.name) for n in plan.nodes), 60)


def write_pki(plan: LabPlan, paths: Paths) -> None:
    d = paths.pki
    d.mkdir(parents=True, exist_ok=True)
    ca = pki.make_ca()
    (d / "ca.crt").write_bytes(ca.cert_pem)
    pki.write_secret(d / "ca.key", ca.key_pem)
    server = pki.issue(
        ca,
        "kube-apiserver",
        server=True,
        dns=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ips=(plan.api_v4, "127.0.0.1", "198.19.0.1", "2001:db8:ff::1"),
    )
    (d / "apiserver.crt").write_bytes(server.cert_pem)
    pki.write_secret(d / "apiserver.key", server.key_pem)
    sa_key, sa_pub = pki.make_signing_key()
    pki.write_secret(d / "sa.key", sa_key)
    (d / "sa.pub").write_bytes(sa_pub)
    for user, cn, orgs in (
        ("admin", "lab-admin", ("system:masters",)),
        ("kube-proxy", "system:kube-proxy", ()),
    ):
        pair = pki.issue(ca, cn, orgs=orgs)
        pki.write_secret(paths.kubeconfig(user), pki.render_kubeconfig(plan.api_url, ca.cert_pem, cn, pair))


def node_status(node: NodePlan, version: str) -> dict[str, object]:
    """What a kubelet would post for an emulated node (both address families, some capacity)."""
    capacity = {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "20Gi"}
    return {
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.lan_v4},
                {"type": "InternalIP", "address": node.lan_v6},
                {"type": "Hostname", "address": node.name},
            ],
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "openelb-lab node agent",
                    "lastHeartbeatTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            ],
            "nodeInfo": {
                "machineID": node.name,
                "systemUUID": node.name,
                "bootID": node.name,
                "kernelVersion": os.uname().release,
                "osImage": "openelb-lab",
                "containerRuntimeVersion": "olab://1",
                "kubeletVersion": version,
                "kubeProxyVersion": version,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
    }


LIGHT_TAINT = "openelb.lab/light-node"


def register_node(client: Client, node: NodePlan, version: str) -> None:
    labels = {
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
    }
    obj = Node(
        metadata=ObjectMeta(name=node.name, labels=labels),
        spec=NodeSpec(podCIDR=node.pod_cidr_v4, podCIDRs=[node.pod_cidr_v4, node.pod_cidr_v6]),
    )
    try:
        client.create(obj)
    except ApiError as exc:
        if exc.status.code != 409:
            raise
    client.patch(Node.Status, node.name, node_status(node, version), patch_type=PatchType.MERGE)
    # Admission taints new Nodes not-ready; the node-lifecycle controller (not run here) would lift it.
    # A light node keeps one taint of its own: it runs no Pods.
    taints = [{"key": LIGHT_TAINT, "effect": "NoSchedule"}] if node.light else None
    client.patch(Node, node.name, {"spec": {"taints": taints}}, patch_type=PatchType.MERGE)


def _exists(client: Client, res: type[ServiceAccount], name: str, namespace: str) -> bool:
    client.get(res, name, namespace=namespace)
    return True


def _node_ready(client: Client, name: str) -> bool:
    node = client.get(Node, name)
    conds = node.status.conditions if node.status else None
    return any(c.type == "Ready" and c.status == "True" for c in conds or [])


def restart(component: str, pause: float = 0.0) -> float:
    """Stop a control-plane daemon (`kube-apiserver`, `etcd`, ...), wait `pause` seconds, start it
    with the same command line and wait until it is healthy again; returns the seconds it was out
    (chaos tests: an apiserver or etcd restart)."""
    paths = Paths(state_dir())
    plan = load_plan(paths)
    if plan is None:
        raise RuntimeError("no lab is up: run `openelb-lab up` first")
    (daemon,) = [d for d in processes.recorded(paths.state) if d.name == component]
    t0 = time.monotonic()
    processes.stop(paths.state, daemon)
    time.sleep(pause)
    processes.start(paths.state, component, daemon.argv)
    if component == "kube-apiserver":
        wait_for("kube-apiserver /readyz", lambda: _https_ok(f"{plan.api_url}/readyz", paths.pki / "ca.crt"), 90,
                 paths.state / "logs/kube-apiserver.log")  # fmt: skip
    elif component == "etcd":
        wait_for("etcd", lambda: _http_ok(f"http://127.0.0.1:{plan.ports.etcd_client}/health"), 30,
                 paths.state / "logs/etcd.log")  # fmt: skip
    heal()
    return time.monotonic() - t0


def heal() -> list[str]:
    """Start again every lab daemon that has exited (kube-controller-manager gives up when the
    apiserver is gone long enough; in a cluster the kubelet restarts it): what a supervisor does."""
    paths = Paths(state_dir())
    started = []
    for d in processes.recorded(paths.state):
        if d.name.startswith("pod-") or processes.is_running(d):
            continue  # containers are the node agents' to restart
        processes.start(paths.state, d.name, d.argv, program=d.program)
        started.append(d.name)
    return started


def down(quiet: bool = False, keep_logs: bool = False) -> list[str]:
    """Stop every lab process and remove every namespace, link and file; safe to run any time."""
    require_root()
    say = Progress(quiet)
    paths = Paths(state_dir())
    plan = load_plan(paths)
    removed: list[str] = []
    daemons = processes.recorded(paths.state)
    order = {
        "agent": 0,
        "pod": 1,
        "kube-proxy": 2,
        "kube-scheduler": 3,
        "kube-controller-manager": 4,
        "kube-apiserver": 5,
        "etcd": 6,
    }
    daemons.sort(key=lambda d: next((v for k, v in order.items() if d.name.startswith(k)), 1))
    for d in daemons:
        if processes.stop(paths.state, d):
            removed.append(f"process {d.name} ({d.pid})")
    for cid in oci.containers(paths.runc):  # left by a runc killed before its container ended
        oci.delete(paths.runc, cid)
        removed.append(f"container {cid}")
    removed += topology.teardown(plan)
    sa = Path(containers.SA_DIR)
    for folder in (sa, sa.parent, sa.parent.parent):  # /run/secrets/kubernetes.io/serviceaccount
        with contextlib.suppress(OSError):
            folder.rmdir()
    if paths.state.exists():
        _save_logs(paths.state / "logs")
        if keep_logs:
            for child in paths.state.iterdir():
                if child.name != "logs":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            shutil.rmtree(paths.state)
            removed.append(f"dir {paths.state}")
    say(f"lab down: removed {len(removed)} items")
    return removed


def _save_logs(logs: Path) -> None:
    """With OPENELB_LAB_KEEP_LOGS=DIR, `down` first copies every daemon's log (apiserver, node
    agents, pods) to a new folder there: what a failed test run needs, after its lab is gone."""
    dest = os.environ.get("OPENELB_LAB_KEEP_LOGS")
    if dest and logs.is_dir():
        target = Path(dest) / time.strftime("lab-%Y%m%dT%H%M%S")
        shutil.copytree(logs, target, dirs_exist_ok=True)
        print(f"lab logs kept in {target}", file=sys.stderr)


def status() -> dict[str, object]:
    paths = Paths(state_dir())
    plan = load_plan(paths)
    if plan is None:
        return {"up": False, "state": str(paths.state)}
    comps = {
        d.name: {"pid": d.pid, "running": processes.is_running(d), "log": str(d.log)}
        for d in processes.recorded(paths.state)
        if not d.name.startswith("pod-")
    }
    out: dict[str, object] = {
        "up": is_healthy(paths),
        "state": str(paths.state),
        "api": plan.api_url,
        "kubeconfig": str(paths.kubeconfig("admin")),
        "components": comps,
        "hosts": {
            h.name: {"netns": h.netns, "lan": [h.lan_v4, h.lan_v6], "wan": [h.wan_v4, h.wan_v6]} for h in plan.hosts
        },
    }
    try:
        client = sync_client(paths.kubeconfig("admin"))
        out["nodes"] = {n.name: _node_ready(client, n.name) for n in plan.nodes}
        out["pods"] = len([p for p in processes.recorded(paths.state) if p.name.startswith("pod-")])
    except Exception as exc:
        out["nodes"] = f"unavailable: {exc}"
    return out


def exec_in(host: str, argv: list[str]) -> None:
    """Replace this process with `argv` run inside a lab host's namespace."""
    paths = Paths(state_dir())
    plan = load_plan(paths)
    if plan is None:
        raise LabError("the lab is not up (run: openelb-lab up)")
    target = plan.host(host)
    if not argv:
        argv = [os.environ.get("SHELL", "/bin/sh")]
    os.execvp("ip", netns.exec_argv(target.netns, argv))


def format_status(st: dict[str, object]) -> str:
    if not st.get("state") or st.get("api") is None:
        return f"lab: down (state {st.get('state')})"
    lines = [f"lab: {'up' if st.get('up') else 'DEGRADED'}   api {st['api']}   kubeconfig {st['kubeconfig']}"]
    comps = st.get("components")
    if isinstance(comps, dict):
        lines.append("components:")
        for name, c in sorted(comps.items()):
            lines.append(f"  {name:32} {'running' if c['running'] else 'STOPPED':8} pid {c['pid']}")
    nodes = st.get("nodes")
    if isinstance(nodes, dict):
        lines.append("nodes: " + ", ".join(f"{n} {'Ready' if r else 'NotReady'}" for n, r in nodes.items()))
    else:
        lines.append(f"nodes: {nodes}")
    hosts = st.get("hosts")
    if isinstance(hosts, dict):
        lines.append("hosts:")
        for name, h in hosts.items():
            addrs = [a for a in [*h["lan"], *h["wan"]] if a]
            lines.append(f"  {name:10} netns {h['netns']:16} {' '.join(addrs)}")
    lines.append(f"pods emulated: {st.get('pods', 0)}")
    return "\n".join(lines)
