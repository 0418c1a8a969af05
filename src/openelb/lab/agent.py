"""The lab's kubelet for one emulated node: node heartbeat, node Lease, and pod emulation.

For every Pod bound to its node it creates a sandbox (network namespace + veth + pod IPs), starts
the kubia-like server on the container ports, and reports the Pod Running and Ready with its IPs;
for a deleted Pod it removes the sandbox and completes the deletion (grace period 0), which is the
kubelet's part of the protocol. Reconciles are level-triggered on `ns/name` keys from an informer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Node, Pod
from lightkube.types import PatchType

from openelb.kube.client import async_client
from openelb.kube.informer import Informer
from openelb.kube.workqueue import WorkQueue
from openelb.lab import podnet
from openelb.lab.components import Paths
from openelb.lab.plan import LabPlan, NodePlan

log = logging.getLogger("openelb.lab.agent")

HEARTBEAT_SECONDS = 10.0
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


def running_status(pod: Pod, node: NodePlan, box: podnet.Sandbox, started: str) -> dict[str, Any]:
    """The status a kubelet reports for a started, ready pod."""
    assert pod.spec is not None
    conditions = [
        {"type": t, "status": "True", "lastTransitionTime": started}
        for t in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled")
    ]
    containers = [
        {
            "name": c.name,
            "image": c.image or "",
            "imageID": "",
            "containerID": f"olab://{box.uid}/{c.name}",
            "ready": True,
            "started": True,
            "restartCount": 0,
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


def is_reported_running(pod: Pod, box: podnet.Sandbox) -> bool:
    st = pod.status
    if st is None or st.phase != "Running" or st.podIP != box.ipv4:
        return False
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
        await asyncio.gather(self.informer.run(), self._heartbeat_loop(), self._worker())

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
        if box is None:
            box = await asyncio.to_thread(self._start, pod)
            self.boxes[key] = box
            log.info("started pod %s on %s: %s %s", key, self.node.name, box.ipv4, box.ipv6)
        if not is_reported_running(pod, box):
            started = pod.status.startTime if pod.status and pod.status.startTime else None
            body = running_status(pod, self.node, box, started.strftime("%Y-%m-%dT%H:%M:%SZ") if started else now())
            await self.client.patch(Pod.Status, name, body, namespace=ns, patch_type=PatchType.MERGE)

    def _start(self, pod: Pod) -> podnet.Sandbox:
        assert pod.metadata is not None and pod.spec is not None
        uid, ns, name = pod.metadata.uid or "", pod.metadata.namespace or "default", pod.metadata.name or ""
        if pod.spec.hostNetwork:
            box = podnet.host_network(self.node, uid, ns, name)
        else:
            box = podnet.create(self.node, uid, ns, name, self._free_slot())
        try:
            box = podnet.start_server(self.state, self.node, box, container_ports(pod))
        except Exception:
            podnet.remove(self.state, self.node, box)
            raise
        podnet.save(self.state, box)
        return box

    async def _remove(self, key: str, box: podnet.Sandbox) -> None:
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
            "message": "openelb lab node agent is posting ready status",
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


def main(state: Path, node_name: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    paths = Paths(state)
    plan = LabPlan.from_json(json.loads(paths.plan_file.read_text()))
    asyncio.run(NodeAgent(plan, paths, node_name).run())
