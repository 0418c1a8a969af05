"""The lab's kubelet for one emulated node: node heartbeat, node Lease, and pod emulation.

For every Pod bound to its node it creates a sandbox (network namespace + veth + pod IPs), starts
the kubia-like server on the container ports — or, for OpenELB's image, the container itself as
the Pod spec says (`lab/containers.py`), restarted when it exits and Ready by its readiness
probe — and reports the Pod Running and Ready with its IPs;
for a deleted Pod it removes the sandbox and completes the deletion (grace period 0), which is the
kubelet's part of the protocol. Reconciles are level-triggered on `ns/name` keys from an informer.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import subprocess
import threading
from pathlib import Path
from typing import Any

from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.config.models import User
from lightkube.core.exceptions import ApiError
from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.core_v1 import Container
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap, Node, Pod, Secret, ServiceAccount
from lightkube.types import PatchType

from openelb.kube.client import async_client
from openelb.kube.informer import Informer
from openelb.kube.workqueue import WorkQueue
from openelb_lab import certgen, containers, oci, podnet, processes
from openelb_lab.components import Paths
from openelb_lab.plan import SERVICE_CIDR_V4, LabPlan, NodePlan

log = logging.getLogger("openelb_lab.agent")

HEARTBEAT_SECONDS = 10.0
PROBE_SECONDS = 2.0
LEASE_SECONDS = 40


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def container_ports(pod: Pod) -> list[int]:
    """TCP ports the pod declares; the kubia stand-in listens on each."""
    ports: set[int] = set()
    for c in (pod.spec.containers if pod.spec else None) or []:
        for p in c.ports or []:
            if (p.protocol or "TCP") == "TCP":
                ports.add(p.containerPort)
    return sorted(ports)


def running_status(  # noqa: PLR0917 - the kubelet's view of one pod
    pod: Pod,
    node: NodePlan,
    box: podnet.Sandbox,
    started: str,
    ready: dict[str, bool] | None = None,
    restarts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The status a kubelet reports for a started pod; `ready` per container (default: all)."""
    assert pod.spec is not None
    ready = ready if ready is not None else {c.name: True for c in pod.spec.containers}
    all_ready = all(ready.get(c.name, False) for c in pod.spec.containers)
    conditions = [
        {"type": t, "status": "True" if t not in ("ContainersReady", "Ready") or all_ready else "False",
         "lastTransitionTime": started}
        for t in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled")
    ]  # fmt: skip
    containers = [
        {
            "name": c.name,
            "image": c.image or "",
            "imageID": "",
            "containerID": f"olab://{box.uid}/{c.name}",
            "ready": ready.get(c.name, False),
            "started": True,
            "restartCount": (restarts or {}).get(c.name, 0),
            "state": {"running": {"startedAt": started}},
        }
        for c in pod.spec.containers
    ]
    return {
        "status": {
            "phase": "Running",
            "hostIP": node.lan_v4,
            "hostIPs": [{"ip": node.lan_v4}, {"ip": node.lan_v6}],
            "podIP": box.ipv4,
            "podIPs": [{"ip": box.ipv4}, {"ip": box.ipv6}],
            "startTime": started,
            "conditions": conditions,
            "containerStatuses": containers,
        }
    }


def is_reported_running(pod: Pod, box: podnet.Sandbox, ready: dict[str, bool] | None = None) -> bool:
    st = pod.status
    if st is None or st.phase != "Running" or st.podIP != box.ipv4:
        return False
    if ready is not None:
        reported = {c.name: bool(c.ready) for c in st.containerStatuses or []}
        return reported == ready
    return any(c.type == "Ready" and c.status == "True" for c in st.conditions or [])


class NodeAgent:
    def __init__(self, plan: LabPlan, paths: Paths, node_name: str) -> None:
        self.plan = plan
        self.paths = paths
        self.node = plan.node(node_name)
        self.state: Path = paths.state
        self.boxes: dict[str, podnet.Sandbox] = {
            f"{b.namespace}/{b.name}": b for b in podnet.load_all(self.state, self.node.name)
        }
        self.queue = WorkQueue()
        self.client: AsyncClient | None = None
        self.informer: Informer[Pod] | None = None
        self.runs: dict[str, list[containers.ContainerRun]] = {}
        """Pods running OpenELB containers: what was started, to restart and probe."""
        self.ready: dict[str, dict[str, bool]] = {}
        self.restarts: dict[str, dict[str, int]] = {}
        self.image = plan.runtime == "image"
        """OpenELB's containers run the image under runc (else this checkout's Python)."""
        self._base_spec: dict[str, Any] | None = None
        self._containers_lock = threading.Lock()
        """Held (in worker threads) while containers are probed and restarted or stopped: a probe
        running beside a removal would see the container just stopped as exited and start it again,
        an orphan that nobody stops and that holds the node's ports."""

    def _free_slot(self) -> int:
        used = {b.slot for b in self.boxes.values()}
        for slot in range(2, 254):
            if slot not in used:
                return slot
        raise RuntimeError(f"node {self.node.name} has no free pod address left")

    async def run(self) -> None:
        self.client = async_client(self.paths.kubeconfig("admin"), field_manager="openelb-lab-kubelet")
        self.informer = Informer(
            self.client,
            Pod,
            self.queue.add,
            fields={"spec.nodeName": self.node.name},
            resync_period=30,
            name=f"pods@{self.node.name}",
        )
        for key in self.boxes:  # sandboxes left from before a restart get reconciled too
            self.queue.add(key)
        await asyncio.gather(self.informer.run(), self._heartbeat_loop(), self._worker(), self._probe_loop())

    async def _worker(self) -> None:
        assert self.informer is not None
        await self.informer.synced.wait()
        while True:
            key = await self.queue.get()
            try:
                await self.reconcile(key)
            except Exception:
                log.exception("reconcile %s failed; retrying", key)
                self.queue.add_after(key, 1.0)
            finally:
                self.queue.done(key)

    async def reconcile(self, key: str) -> None:
        assert self.informer is not None and self.client is not None
        pod = self.informer.store.get(key)
        box = self.boxes.get(key)
        if box and (pod is None or pod.metadata is None or pod.metadata.uid != box.uid):
            await self._remove(key, box)
            box = None
        if pod is None or pod.metadata is None or pod.spec is None:
            return
        ns, name = pod.metadata.namespace or "default", pod.metadata.name or ""
        if pod.metadata.deletionTimestamp is not None:
            if box:
                await self._remove(key, box)
            try:
                await self.client.delete(Pod, name, namespace=ns, grace_period=0)
            except ApiError as exc:
                if exc.status.code != 404:
                    raise
            return
        if pod.status and pod.status.phase in ("Succeeded", "Failed"):
            return
        openelb = [c for c in pod.spec.containers if containers.is_openelb_image(c.image)]
        if not openelb and len(pod.spec.containers) == 1 and certgen.is_certgen(pod.spec.containers[0].image):
            await self._certgen(pod)
            return
        if box is None:
            box = await asyncio.to_thread(self._start, pod, not openelb)
            self.boxes[key] = box
            log.info("started pod %s on %s: %s %s", key, self.node.name, box.ipv4, box.ipv6)
        if openelb and key not in self.runs:
            try:
                runs = [await self._plan(pod, c, box) for c in pod.spec.containers]
            except containers.ContainerError as exc:
                log.warning("pod %s cannot start: %s", key, exc)
                await self._fail(pod, str(exc))
                return
            self.runs[key] = runs
            self.ready[key] = {r.name: False for r in runs}
            self.restarts.setdefault(key, {})
            await asyncio.to_thread(self._start_containers, key, box, runs)
        ready = self.ready.get(key)
        if not is_reported_running(pod, box, ready):
            await self._report(pod, box)

    async def _report(self, pod: Pod, box: podnet.Sandbox) -> None:
        assert self.client is not None and pod.metadata is not None
        key = f"{pod.metadata.namespace}/{pod.metadata.name}"
        started = pod.status.startTime if pod.status and pod.status.startTime else None
        body = running_status(
            pod,
            self.node,
            box,
            started.strftime("%Y-%m-%dT%H:%M:%SZ") if started else now(),
            self.ready.get(key),
            self.restarts.get(key),
        )
        ns, name = pod.metadata.namespace or "default", pod.metadata.name or ""
        await self.client.patch(Pod.Status, name, body, namespace=ns, patch_type=PatchType.MERGE)

    async def _fail(self, pod: Pod, message: str) -> None:
        assert self.client is not None and pod.metadata is not None and pod.spec is not None
        waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": message}}
        statuses = [{"name": c.name, "image": c.image or "", "imageID": "", "ready": False, "restartCount": 0,
                     "state": waiting} for c in pod.spec.containers]  # fmt: skip
        body = {"status": {"phase": "Pending", "containerStatuses": statuses}}
        ns, name = pod.metadata.namespace or "default", pod.metadata.name or ""
        await self.client.patch(Pod.Status, name, body, namespace=ns, patch_type=PatchType.MERGE)

    async def _lookup(self, kind: str, namespace: str, name: str, key: str) -> str | None:
        assert self.client is not None
        try:
            if kind == "Secret":
                sec = await self.client.get(Secret, name, namespace=namespace)
                raw = (sec.data or {}).get(key)
                return base64.b64decode(raw).decode() if raw is not None else None
            cm = await self.client.get(ConfigMap, name, namespace=namespace)
            return (cm.data or {}).get(key)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise

    async def _plan(self, pod: Pod, c: Container, box: podnet.Sandbox) -> containers.ContainerRun:
        """Everything a container needs from the API: referenced Secret/ConfigMap keys, and a
        token bound to the Pod for its service account (TokenRequest, as the kubelet projects)."""
        assert self.client is not None and pod.metadata is not None and pod.spec is not None
        values: dict[tuple[str, str, str, str], str | None] = {}
        for e in c.env or []:
            vf = e.valueFrom
            ref = vf and (vf.secretKeyRef or vf.configMapKeyRef)
            if vf and ref:
                k = (
                    "Secret" if vf.secretKeyRef else "ConfigMap",
                    pod.metadata.namespace or "default",
                    ref.name or "",
                    ref.key,
                )
                values[k] = await self._lookup(*k)
        run = containers.plan(
            pod,
            c,
            lambda *k: values.get(k),
            (SERVICE_CIDR_V4[1].compressed, 443),
            pod_ip=box.ipv4,
            host_ip=str(self.node.lan_v4),
        )
        ns = pod.metadata.namespace or "default"
        token = await self._token(pod)
        d = self.state / "pods" / (pod.metadata.uid or "") / c.name / "serviceaccount"
        d.mkdir(parents=True, exist_ok=True)
        for p in (d.parent.parent.parent, d.parent.parent, d.parent, d):
            p.chmod(0o755)
        (d / "token").write_text(token)
        (d / "namespace").write_text(ns)
        (d / "ca.crt").write_bytes((self.paths.pki / "ca.crt").read_bytes())
        for f in d.iterdir():
            f.chmod(0o644)
        for i, m in enumerate(run.mounts):
            await self._materialize(ns, m, d.parent / "volumes" / str(i))
        return run

    async def _token(self, pod: Pod) -> str:
        """A token bound to the Pod for its service account (TokenRequest, as the kubelet projects)."""
        assert self.client is not None and pod.metadata is not None and pod.spec is not None
        ns, sa = pod.metadata.namespace or "default", pod.spec.serviceAccountName or "default"
        request = ServiceAccount.Token(
            metadata=ObjectMeta(name=sa, namespace=ns),
            spec=TokenRequestSpec(
                audiences=[],
                expirationSeconds=86400,
                boundObjectRef=BoundObjectReference(
                    kind="Pod", apiVersion="v1", name=pod.metadata.name, uid=pod.metadata.uid
                ),
            ),
        )
        token = await self.client.create(request, name=sa, namespace=ns)
        assert token.status is not None
        return token.status.token or ""

    async def _certgen(self, pod: Pod) -> None:
        """Go OpenELB's cert-gen Jobs: done here under the Pod's own ServiceAccount, then Succeeded."""
        assert self.client is not None and pod.metadata is not None and pod.spec is not None
        (c,) = pod.spec.containers
        env = {e.name: (pod.metadata.namespace or "") for e in c.env or [] if e.valueFrom and e.valueFrom.fieldRef
               and e.valueFrom.fieldRef.fieldPath == "metadata.namespace"}  # fmt: skip
        args = [certgen.expand(a, env) for a in c.args or []]
        admin = KubeConfig.from_file(self.paths.kubeconfig("admin")).get()
        assert admin is not None
        cfg = KubeConfig.from_one(cluster=admin.cluster, user=User(token=await self._token(pod)))
        as_pod = AsyncClient(cfg, field_manager="kube-webhook-certgen", trust_env=False)
        try:
            done = await certgen.run(as_pod, args)
            code, message = 0, done
        except (ApiError, ValueError) as exc:
            code, message = 1, str(exc)
        finally:
            await as_pod.close()
        log.info("certgen pod %s/%s: %s", pod.metadata.namespace, pod.metadata.name, message)
        state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": message}}
        body = {"status": {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": [
            {"name": c.name, "image": c.image or "", "imageID": "", "ready": False, "restartCount": 0, "state": state}
        ]}}  # fmt: skip
        await self.client.patch(Pod.Status, pod.metadata.name or "", body, namespace=pod.metadata.namespace,
                                patch_type=PatchType.MERGE)  # fmt: skip

    async def _materialize(self, namespace: str, m: containers.SecretMount, target: Path) -> None:
        """A secret volume's files, as the kubelet writes them (a missing Secret or key: the Pod
        waits, as FailedMount does)."""
        assert self.client is not None
        try:
            sec = await self.client.get(Secret, m.secret, namespace=namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                raise containers.ContainerError(f"secret volume: Secret {namespace}/{m.secret} not found") from None
            raise
        data = {k: base64.b64decode(v) for k, v in (sec.data or {}).items()}
        files = m.items or tuple((k, k) for k in data)
        for key, _name in files:
            if key not in data:
                raise containers.ContainerError(f"secret volume: Secret {namespace}/{m.secret} has no key {key}")
        await asyncio.to_thread(_write_files, target, {name: data[key] for key, name in files})

    def _daemon(self, uid: str, container: str) -> str:
        return f"pod-{uid}-{container}"

    def _start_containers(self, key: str, box: podnet.Sandbox, runs: list[containers.ContainerRun]) -> None:
        with self._containers_lock:
            running = {d.name for d in processes.recorded(self.state) if processes.is_running(d)}
            for run in runs:
                name = self._daemon(box.uid, run.name)
                if name in running:
                    continue  # adopted after an agent restart, or started by a probe just now
                self._exec(box, run)

    def _stop_containers(self, box: podnet.Sandbox) -> None:
        prefix = f"pod-{box.uid}-"
        with self._containers_lock:
            for d in processes.recorded(self.state):
                if d.name.startswith(prefix):
                    processes.stop(self.state, d, timeout=10)
                    if self.image:
                        oci.delete(self.paths.runc, d.name)  # what a killed runc left running

    def _exec(self, box: podnet.Sandbox, run: containers.ContainerRun) -> None:
        name = self._daemon(box.uid, run.name)
        sa = self.state / "pods" / box.uid / run.name / "serviceaccount"
        volumes = tuple((str(sa.parent / "volumes" / str(i)), m.path) for i, m in enumerate(run.mounts))
        netns_name = box.netns or self.node.netns
        if self.image:
            spec = oci.runtime_spec(
                self._image_spec(), run, rootfs=self.paths.image / "rootfs", netns_path=f"/run/netns/{netns_name}",
                hostname=self.node.name if not box.netns else box.name[:63], sa_dir=str(sa), volumes=volumes,
                cgroup=f"openelb-lab-{name}", rt_budget=oci.rt_group_scheduling(),
            )  # fmt: skip
            bundle = sa.parent / "bundle"
            bundle.mkdir(parents=True, exist_ok=True)
            (bundle / "config.json").write_text(json.dumps(spec))
            oci.delete(self.paths.runc, name)  # the previous run of a restarted container
            argv = oci.runc_argv(self.paths.runc, "run", "--bundle", str(bundle), name)
            processes.start(self.state, name, argv, program="runc")
        else:
            argv = containers.wrap(run, netns_name, str(sa), volumes)
            env = {**containers.CHECKOUT_ENV, **run.env}
            processes.start(self.state, name, argv, env=env, inherit_env=False, program=run.argv[0])
        log.info("started container %s of %s/%s", run.name, box.namespace, box.name)

    def _image_spec(self) -> dict[str, Any]:
        if self._base_spec is None:
            self._base_spec = oci.base_spec(self.paths.image)
        return self._base_spec

    async def _probe_loop(self) -> None:
        """Restart exited containers (restartPolicy Always) and run readiness probes."""
        while True:
            await asyncio.sleep(PROBE_SECONDS)
            for key, runs in list(self.runs.items()):
                box = self.boxes.get(key)
                if box is None:
                    continue
                try:
                    changed = await asyncio.to_thread(self._probe_pod, key, box, runs)
                    pod = self.informer.store.get(key) if self.informer else None
                    if changed and pod is not None:
                        await self._report(pod, box)
                except Exception:
                    log.exception("probing %s failed", key)

    def _probe_pod(self, key: str, box: podnet.Sandbox, runs: list[containers.ContainerRun]) -> bool:
        with self._containers_lock:
            if self.runs.get(key) is not runs:
                return False  # removed (or replaced) while this probe waited for the lock
            return self._probe_pod_locked(key, box, runs)

    def _probe_pod_locked(self, key: str, box: podnet.Sandbox, runs: list[containers.ContainerRun]) -> bool:
        recorded = {d.name: d for d in processes.recorded(self.state)}
        before = dict(self.ready.get(key, {}))
        now_ready = {}
        for run in runs:
            d = recorded.get(self._daemon(box.uid, run.name))
            if d is None or not processes.is_running(d):
                counts = self.restarts.setdefault(key, {})
                counts[run.name] = counts.get(run.name, 0) + 1
                log.warning("container %s of %s exited; restarting (%d)", run.name, key, counts[run.name])
                self._exec(box, run)
                now_ready[run.name] = False
                continue
            probe = run.readiness
            if probe is None:
                now_ready[run.name] = True
            elif probe.exec:
                argv = (
                    oci.runc_argv(self.paths.runc, "exec", self._daemon(box.uid, run.name), *probe.exec)
                    if self.image
                    else ["ip", "netns", "exec", box.netns or self.node.netns, *containers.checkout_argv(probe.exec)]
                )
                now_ready[run.name] = _exec_ok(argv, probe.timeout)
            elif probe.tcp:
                now_ready[run.name] = _tcp_ok(self.node.netns, box.ipv4 or box.ipv6 or "", probe)
            else:
                now_ready[run.name] = _http_ok(box, self.node.netns, probe)
        self.ready[key] = now_ready
        return now_ready != before

    def _start(self, pod: Pod, server: bool = True) -> podnet.Sandbox:
        assert pod.metadata is not None and pod.spec is not None
        uid, ns, name = pod.metadata.uid or "", pod.metadata.namespace or "default", pod.metadata.name or ""
        if pod.spec.hostNetwork:
            box = podnet.host_network(self.node, uid, ns, name)
        else:
            box = podnet.create(self.node, uid, ns, name, self._free_slot())
        try:
            if server:
                box = podnet.start_server(self.state, self.node, box, container_ports(pod))
        except Exception:
            podnet.remove(self.state, self.node, box)
            raise
        podnet.save(self.state, box)
        return box

    async def _remove(self, key: str, box: podnet.Sandbox) -> None:
        # Withdrawn from the probe loop first; `_stop_containers` then waits for a probe in progress.
        for d in (self.runs, self.ready, self.restarts):
            d.pop(key, None)
        await asyncio.to_thread(self._stop_containers, box)
        await asyncio.to_thread(podnet.remove, self.state, self.node, box)
        self.boxes.pop(key, None)
        log.info("removed pod %s from %s", key, self.node.name)

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self.heartbeat()
            except Exception:
                log.exception("node heartbeat failed")
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def heartbeat(self) -> None:
        """Keep the Ready condition and the node Lease fresh, as a kubelet does."""
        assert self.client is not None
        stamp = now()
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "openelb-lab node agent is posting ready status",
            "lastHeartbeatTime": stamp,
        }
        await self.client.patch(
            Node.Status, self.node.name, {"status": {"conditions": [ready]}}, patch_type=PatchType.STRATEGIC
        )
        renew = dt.datetime.now(dt.UTC)
        try:
            lease = await self.client.get(Lease, self.node.name, namespace="kube-node-lease")
            assert lease.spec is not None
            lease.spec.renewTime = renew
            await self.client.replace(lease)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            await self.client.create(
                Lease(
                    metadata=ObjectMeta(name=self.node.name, namespace="kube-node-lease"),
                    spec=LeaseSpec(holderIdentity=self.node.name, leaseDurationSeconds=LEASE_SECONDS, renewTime=renew),
                )
            )


def _write_files(target: Path, files: dict[str, bytes]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (target / name).write_bytes(content)
        (target / name).chmod(0o644)


def _tcp_ok(node_netns: str, address: str, probe: containers.Probe) -> bool:
    """A tcpSocket probe from the node's namespace: the port accepts a connection."""
    host = f"[{address}]" if ":" in address else address
    script = f"exec 3<>/dev/tcp/{host.strip('[]')}/{probe.port}"
    try:
        out = subprocess.run(["ip", "netns", "exec", node_netns, "bash", "-c", script],
                             capture_output=True, timeout=max(probe.timeout, 1.0) + 1.0, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0


def _exec_ok(argv: list[str], timeout: float) -> bool:
    """An exec probe: the command in the container (Go OpenELB's speaker: `sh -c "gobgp -p 50051
    global"`), exit status 0 within its timeout."""
    try:
        out = subprocess.run(argv, capture_output=True, timeout=max(timeout, 1.0) + 1.0, check=False)
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0


def _http_ok(box: podnet.Sandbox, node_netns: str, probe: containers.Probe) -> bool:
    """An httpGet probe from the node's namespace, as the kubelet probes from the node."""
    url = (
        f"http://[{box.ipv6}]:{probe.port}{probe.path}"
        if not box.ipv4
        else f"http://{box.ipv4}:{probe.port}{probe.path}"
    )
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            node_netns,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "1",
            url,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip().isdigit() and 200 <= int(out.stdout.strip()) < 400


def main(state: Path, node_name: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    paths = Paths(state)
    plan = LabPlan.from_json(json.loads(paths.plan_file.read_text()))
    asyncio.run(NodeAgent(plan, paths, node_name).run())
