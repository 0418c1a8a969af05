"""The validating admission webhook: HTTPS server, self-managed serving certificate, caBundle.

Without cert-manager the controller keeps a CA and serving certificate in a Secret (every replica
serves the webhook with the same certificate), patches the CA into the
ValidatingWebhookConfiguration, and renews the certificate before it expires; the running
SSLContext loads the new chain in place, so no restart is needed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.admissionregistration_v1 import ValidatingWebhookConfiguration
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from openelb import pki
from openelb.controller import admission
from openelb.kube.resources import Eip
from openelb.runtime import CannotListen

log = logging.getLogger("openelb.webhook")

EIP_PATH = "/validate-network-kubesphere-io-v1alpha2-eip"
BGPCONF_PATH = "/validate-network-kubesphere-io-v1alpha2-bgpconf"
BGPPEER_PATH = "/validate-network-kubesphere-io-v1alpha2-bgppeer"
RENEW_BEFORE = dt.timedelta(days=7)


def dns_names(service: str, namespace: str) -> tuple[str, ...]:
    return (service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def needs_renewal(cert_pem: bytes, names: tuple[str, ...], ips: tuple[str, ...]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return True
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    expiring = cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < RENEW_BEFORE
    return expiring or not set(names) <= have_dns or not set(ips) <= have_ips


class CertManager:
    """Keeps Secret `<secret>` (ca.crt, tls.crt, tls.key) valid and the webhook's caBundle in sync."""

    def __init__(  # noqa: PLR0917 - all identify the one Secret/config pair
        self,
        client: AsyncClient,
        namespace: str,
        secret: str,
        webhook_config: str,
        names: tuple[str, ...],
        ips: tuple[str, ...] = (),
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.secret = secret
        self.webhook_config = webhook_config
        self.names = names
        self.ips = ips
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ca_pem = b""

    async def ensure(self) -> None:
        exists, data = await self._read()
        if exists and data is None:
            # Same name, another layout (Go OpenELB's cert-gen Jobs left `ca`, `cert`, `key`, type
            # Opaque, which a replace may not change): removed and made anew, not a crash on the
            # create's conflict.
            log.info("Secret %s/%s holds another certificate layout (Go OpenELB's?): replacing it", self.namespace,
                     self.secret)  # fmt: skip
            with contextlib.suppress(ApiError):
                await self.client.delete(Secret, self.secret, namespace=self.namespace)
            exists = False
        if data is None or needs_renewal(data["tls.crt"], self.names, self.ips):
            data = await self._write(exists)
        self.ca_pem = data["ca.crt"]
        self._load(data["tls.crt"], data["tls.key"])
        await self.patch_ca_bundle()

    async def _read(self) -> tuple[bool, dict[str, bytes] | None]:
        """(the Secret exists, its certificate if it holds ours)."""
        try:
            sec = await self.client.get(Secret, self.secret, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return False, None
            raise
        raw = sec.data or {}
        if not {"ca.crt", "tls.crt", "tls.key"} <= raw.keys():
            return True, None
        return True, {k: base64.b64decode(v) for k, v in raw.items()}

    async def _write(self, exists: bool) -> dict[str, bytes]:
        ca = pki.make_ca("openelb-webhook-ca")
        leaf = pki.issue(ca, self.names[0], server=True, dns=self.names, ips=self.ips)
        data = {"ca.crt": ca.cert_pem, "tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem}
        body = Secret(
            metadata=ObjectMeta(name=self.secret, namespace=self.namespace),
            type="kubernetes.io/tls",
            data={k: _b64(v) for k, v in data.items()},
        )
        try:
            if exists:
                await self.client.replace(body)
            else:
                await self.client.create(body)
        except ApiError as exc:
            if exc.status.code != 409:  # another replica won the race: use its certificate
                raise
            _exists, theirs = await self._read()
            if theirs is None:
                raise
            return theirs
        log.info("wrote webhook certificate to secret %s/%s", self.namespace, self.secret)
        return data

    def _load(self, cert: bytes, key: bytes) -> None:
        """ssl reads a certificate only from files: anonymous in-memory ones (memfd), since the
        controller runs with a read-only root filesystem and no writable /tmp (the chart's
        securityContext; found when the lab first ran the image), and the key never touches a disk."""
        fds = []
        try:
            for data in (cert, key):
                fd = os.memfd_create("openelb-webhook-tls", os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, data)
            self.ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)

    async def patch_ca_bundle(self) -> None:
        try:
            cfg = await self.client.get(ValidatingWebhookConfiguration, self.webhook_config)
        except ApiError as exc:
            if exc.status.code == 404:
                return
            raise
        bundle = _b64(self.ca_pem)
        hooks = cfg.webhooks or []
        if all(h.clientConfig.caBundle == bundle for h in hooks):
            return
        patch = [
            {
                "op": "replace" if h.clientConfig.caBundle else "add",
                "path": f"/webhooks/{i}/clientConfig/caBundle",
                "value": bundle,
            }
            for i, h in enumerate(hooks)
        ]
        await self.client.patch(ValidatingWebhookConfiguration, self.webhook_config, patch, patch_type=PatchType.JSON)
        log.info("patched caBundle of %s", self.webhook_config)

    async def keep_fresh(self, check_every: float = 5, renew_every: float = 600) -> None:
        """Re-patch the caBundle whenever the configuration lacks it (it may be (re)applied after
        we start); re-check the certificate's validity less often."""
        loop = asyncio.get_running_loop()
        next_renew = loop.time() + renew_every
        while True:
            await asyncio.sleep(check_every)
            try:
                if loop.time() >= next_renew:
                    next_renew = loop.time() + renew_every
                    await self.ensure()
                else:
                    await self.patch_ca_bundle()
            except Exception:
                log.exception("webhook certificate refresh failed")


MAX_REVIEW_BYTES = 8 << 20
CONTROLLER_RUNTIME_CERT_DIR = "/tmp/k8s-webhook-server/serving-certs"
"""Where controller-runtime (Go OpenELB) reads its webhook certificate; its manifest mounts the
cert-gen Jobs' Secret there as tls.crt/tls.key."""


class FileCerts:
    """A certificate someone else manages, mounted as files (Go OpenELB's cert-gen Jobs made it
    and patched the caBundle): served as is, reloaded when the files change. Nothing is written,
    so this works under Go OpenELB's RBAC (no Secret or webhook-configuration rights)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._seen: tuple[float, float] | None = None

    @staticmethod
    def present(directory: str | Path) -> bool:
        d = Path(directory)
        return (d / "tls.crt").is_file() and (d / "tls.key").is_file()

    def _stamp(self) -> tuple[float, float]:
        return ((self.dir / "tls.crt").stat().st_mtime, (self.dir / "tls.key").stat().st_mtime)

    async def ensure(self) -> None:
        stamp = self._stamp()
        if stamp != self._seen:
            self.ctx.load_cert_chain(self.dir / "tls.crt", self.dir / "tls.key")
            if self._seen is not None:
                log.info("webhook certificate in %s changed: reloaded", self.dir)
            self._seen = stamp

    async def keep_fresh(self, check_every: float = 10) -> None:
        while True:
            await asyncio.sleep(check_every)
            try:
                await self.ensure()
            except (OSError, ssl.SSLError) as exc:  # a Secret update in flight: keep the old one
                log.warning("webhook certificate in %s unreadable (%s): still serving the previous one", self.dir, exc)


def make_app(client: AsyncClient) -> web.Application:
    async def answer(request: web.Request, review_fn: Callable[[Mapping[str, Any]], Awaitable[Any]]) -> web.Response:
        """Bad input gets a clear denial (400 for what is not JSON), never a 500 from our code."""
        try:
            review = await request.json()
        except ValueError:
            return web.Response(status=400, text="the body is not JSON (an AdmissionReview)")
        if not isinstance(review, dict):
            return web.Response(status=400, text="the body is not an AdmissionReview object")
        req = review.get("request")
        try:
            verdict = await review_fn(req if isinstance(req, dict) else {})
        except ApiError:
            raise
        except Exception as exc:  # malformed objects inside a well-formed review
            log.warning("admission: malformed %s request: %s", request.path, type(exc).__name__)
            verdict = admission.Verdict(False, f"malformed object ({type(exc).__name__}); see the CRD schema")
        return web.json_response(admission.response(review, verdict))

    async def review_eip(req: Mapping[str, Any]) -> Any:
        existing = [dict(o) for o in [x async for x in client.list(Eip)]]
        return admission.review_eip(req, existing)

    async def review_bgpconf(req: Mapping[str, Any]) -> Any:
        return admission.review_bgpconf(req)

    async def review_bgppeer(req: Mapping[str, Any]) -> Any:
        return admission.review_bgppeer(req)

    async def eip(request: web.Request) -> web.Response:
        return await answer(request, review_eip)

    async def bgpconf(request: web.Request) -> web.Response:
        return await answer(request, review_bgpconf)

    async def bgppeer(request: web.Request) -> web.Response:
        return await answer(request, review_bgppeer)

    # An AdmissionReview carries the object and the old one: an Eip whose status lists 10,000 IPs is
    # ~1 MiB twice. Bounded, so a hostile body is refused (413) before it is parsed.
    app = web.Application(client_max_size=MAX_REVIEW_BYTES)
    app.router.add_post(EIP_PATH, eip)
    app.router.add_post(BGPCONF_PATH, bgpconf)
    app.router.add_post(BGPPEER_PATH, bgppeer)
    return app


async def serve(client: AsyncClient, certs: CertManager | FileCerts, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(client), access_log=None)
    await runner.setup()
    await start_site(runner, "admission webhook, --webhook-addr", host, port, certs.ctx)
    log.info("webhook listening on https://%s:%d", host, port)
    return runner


async def start_site(runner: web.AppRunner, what: str, host: str, port: int, ssl_context: Any = None) -> web.AppRunner:
    """Listen on host:port with an AppRunner already set up (cleaned up if that fails)."""
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except OSError as exc:
        await runner.cleanup()
        shown = f"[{host}]" if ":" in host else host
        raise CannotListen(what, f"TCP {shown}:{port}", exc) from exc
    return runner


def webhook_configuration(
    name: str, *, service: tuple[str, str] | None = None, url: str | None = None, ca_bundle: bytes | None = None
) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration for our CRDs (a Service reference, or a URL outside the cluster)."""

    def client_config(path: str) -> dict[str, Any]:
        cc: dict[str, Any] = (
            {"url": f"{url}{path}"}
            if url
            else {"service": {"name": service[0], "namespace": service[1], "path": path, "port": 443}}  # type: ignore[index]
        )
        if ca_bundle:
            cc["caBundle"] = _b64(ca_bundle)
        return cc

    def hook(kind: str, plural: str, path: str, ops: list[str]) -> dict[str, Any]:
        return {
            "name": f"validate.{kind}.network.kubesphere.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "matchPolicy": "Equivalent",
            "timeoutSeconds": 5,
            "clientConfig": client_config(path),
            "rules": [
                {
                    "apiGroups": ["network.kubesphere.io"],
                    "apiVersions": ["v1alpha2"],
                    "resources": [plural],
                    "operations": ops,
                    "scope": "Cluster",
                }
            ],
        }

    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            hook("eip", "eips", EIP_PATH, ["CREATE", "UPDATE", "DELETE"]),
            hook("bgpconf", "bgpconfs", BGPCONF_PATH, ["CREATE", "UPDATE"]),
            hook("bgppeer", "bgppeers", BGPPEER_PATH, ["CREATE", "UPDATE"]),
        ],
    }
