"""A stand-in for ingress-nginx's `kube-webhook-certgen` image, which Go OpenELB's manifest runs
as two Jobs: `create` makes the webhook certificate (Secret keys `ca`, `cert`, `key`) unless the
Secret exists, `patch` writes that CA into the ValidatingWebhookConfiguration's caBundle (and its
failurePolicy). The lab runs no foreign images, so the agent does what those Jobs do, from their
args, with the Pod's own ServiceAccount token (its RBAC is what Go's manifest grants), and then
reports the Pod Succeeded, so the Jobs complete as in a cluster.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.admissionregistration_v1 import ValidatingWebhookConfiguration
from lightkube.resources.core_v1 import Secret

from openelb import pki

IMAGE = "kube-webhook-certgen"


def is_certgen(image: str | None) -> bool:
    return bool(image) and IMAGE in (image or "").rsplit("/", 1)[-1]


def expand(arg: str, env: Mapping[str, str]) -> str:
    """`$(VAR)` as the kubelet expands it in args (unknown references stay as written)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def _flags(args: Sequence[str]) -> dict[str, str]:
    out = {}
    for a in args[1:]:
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            out[k] = v
    return out


async def run(client: AsyncClient, args: Sequence[str]) -> str:
    """Do what `kube-webhook-certgen ARGS` does; returns what was done (for the log)."""
    if not args:
        raise ValueError("certgen: no subcommand")
    flags = _flags(args)
    ns, name = flags.get("namespace", "default"), flags.get("secret-name", "")
    if args[0] == "create":
        try:
            await client.get(Secret, name, namespace=ns)
            return f"Secret {ns}/{name} exists: kept"
        except ApiError as exc:
            if exc.status.code != 404:
                raise
        hosts = tuple(h for h in flags.get("host", "").split(",") if h)
        ca = pki.make_ca("openelb-admission-ca")
        leaf = pki.issue(ca, hosts[0] if hosts else name, server=True, dns=hosts)
        data = {"ca": ca.cert_pem, "cert": leaf.cert_pem, "key": leaf.key_pem}
        body = Secret(
            metadata=ObjectMeta(name=name, namespace=ns),
            data={k: base64.b64encode(v).decode() for k, v in data.items()},
        )
        await client.create(body)
        return f"created Secret {ns}/{name} for {', '.join(hosts)}"
    if args[0] == "patch":
        sec = await client.get(Secret, name, namespace=ns)
        ca = (sec.data or {}).get("ca", "")
        hook = flags.get("webhook-name", "")
        vwc = await client.get(ValidatingWebhookConfiguration, hook)
        policy = flags.get("patch-failure-policy")
        for w in vwc.webhooks or []:  # get + update, as certgen does (Go's RBAC grants exactly those)
            w.clientConfig.caBundle = ca
            if policy:
                w.failurePolicy = policy
        await client.replace(vwc)
        return f"patched caBundle of {hook}"
    raise ValueError(f"certgen: unknown subcommand {args[0]!r}")
