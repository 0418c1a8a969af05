"""`openelb controller`: IPAM reconcilers (leader only), the admission webhook and metrics (all replicas)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from openelb.api import names
from openelb.controller import takeover
from openelb.controller.ipam import IpamController
from openelb.controller.metrics import Metrics
from openelb.controller.nodeproxy import NodeProxyController
from openelb.controller.servicepolicy import Policy
from openelb.controller.webhook import CONTROLLER_RUNTIME_CERT_DIR, CertManager, FileCerts, dns_names, serve
from openelb.kube import memberlist
from openelb.kube.client import async_client
from openelb.kube.events import EventRecorder
from openelb.kube.leader import LeaseElector
from openelb.nodeproxy.workload import DEFAULT_IMAGE
from openelb.runtime import ProbeServer, run_daemon, serve_metrics, split_addr, stop_on_signals

log = logging.getLogger("openelb.controller")
GRACE_SECONDS = 8.0


@dataclass
class ControllerOptions:
    kubeconfig: str | None = None
    namespace: str = field(default_factory=lambda: os.environ.get("OPENELB_NAMESPACE", names.DEFAULT_NAMESPACE))
    lb_class: str = names.DEFAULT_LB_CLASS
    serve_unannotated: bool = False
    leader_elect: bool = True
    identity: str = field(
        default_factory=lambda: f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    )
    metrics_addr: str = "0.0.0.0:50052"
    webhook_addr: str = "0.0.0.0:9443"
    webhook_service: str = "openelb-controller"
    webhook_secret: str = "openelb-admission"  # noqa: S105 - a Secret's name, not a password
    webhook_config: str = "openelb-admission"
    webhook_ips: tuple[str, ...] = ()
    webhook_cert_dir: str = CONTROLLER_RUNTIME_CERT_DIR
    """A certificate mounted here (tls.crt, tls.key) is used as is; else we make and keep one."""
    workers: int = 16
    node_proxy_image: str = DEFAULT_IMAGE
    """The image of NodeProxy's proxy Pods (`openelb forward`): this controller's own."""
    field_manager: str = "openelb-controller"
    """Server-side field manager of its writes (tests give each replica its own, to tell writers apart)."""
    memberlist_secret: str = names.MEMBERLIST_SECRET
    """The speakers' heartbeat key Secret, created with a random key if missing ("" = never)."""


async def run(opts: ControllerOptions) -> None:
    client = async_client(opts.kubeconfig, field_manager=opts.field_manager)
    metrics = Metrics()
    recorder = EventRecorder(client, names.CONTROLLER_COMPONENT)
    policy = Policy(opts.lb_class, opts.serve_unannotated)
    ctrl = IpamController(client, policy, recorder, metrics, workers=opts.workers)
    proxies = NodeProxyController(client, ctrl.services, policy, recorder, opts.namespace, opts.node_proxy_image)
    ctrl.service_hooks.append(proxies.on_service)

    async def active() -> None:
        """What the leader runs: IP assignment and NodeProxy, on one Service cache (and, once,
        the removal of Go OpenELB's finalizers from BGP objects)."""
        await asyncio.gather(ctrl.run(), proxies.run(), takeover.strip_go_finalizers(client))

    runners: list[ProbeServer | web.AppRunner] = []
    # Made before anything is served: /readyz reads it, also during the certificate setup below.
    elector = LeaseElector(client, names.LEADER_LEASE, opts.namespace, opts.identity) if opts.leader_elect else None

    setting_up = bool(opts.webhook_addr)

    def not_ready() -> str | None:
        # A standby replica is ready once it serves the webhook; the leader (or the only
        # replica, without leader election) once its caches synced too.
        if setting_up:
            return "setting up the webhook certificate"
        active = elector is None or elector.leading
        return "syncing caches" if active and not ctrl.ready.is_set() else None

    runners.append(await serve_metrics(metrics.registry, opts.metrics_addr, not_ready))
    keymaker = (
        asyncio.create_task(memberlist.ensure(client, opts.namespace, opts.memberlist_secret))
        if opts.memberlist_secret
        else None
    )

    if opts.webhook_addr:
        certs: CertManager | FileCerts
        if opts.webhook_cert_dir and FileCerts.present(opts.webhook_cert_dir):
            log.info("webhook certificate from %s (made by someone else: not managed here)", opts.webhook_cert_dir)
            certs = FileCerts(opts.webhook_cert_dir)
        else:
            certs = CertManager(
                client,
                opts.namespace,
                opts.webhook_secret,
                opts.webhook_config,
                dns_names(opts.webhook_service, opts.namespace),
                opts.webhook_ips,
            )
        await certs.ensure()
        host, port = split_addr(opts.webhook_addr)
        runners.append(await serve(client, certs, host, port))
        setting_up = False
        refresher = asyncio.create_task(certs.keep_fresh())
    else:
        refresher = None

    stop = stop_on_signals(GRACE_SECONDS)

    def on_change(leading: bool) -> None:
        metrics.is_leader.set(1 if leading else 0)

    work = asyncio.create_task(elector.run(active, on_change) if elector else active())
    stopper = asyncio.create_task(stop.wait())
    log.info("controller %s started (class %s, namespace %s)", opts.identity, opts.lb_class, opts.namespace)
    try:
        done, _ = await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            work.result()  # raises LostLeadership: exit non-zero so the pod restarts as a standby
    finally:
        work.cancel()
        for t in (refresher, keymaker):
            if t:
                t.cancel()
        if elector:
            await elector.release()
        for r in runners:
            await r.cleanup()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await recorder.flush()  # the last AssignIP/ReleaseIP Events, if the apiserver takes them
        await client.close()


def main(opts: ControllerOptions) -> None:
    run_daemon(run(opts), log)
