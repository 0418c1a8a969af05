"""The speakers' heartbeat key in a Secret: made at install, read and rotated live.

A key shipped in a manifest is known to everyone who can read the manifest, and with it anyone
on the node network can remove nodes or invent them. So no manifest of ours carries one: the
controller creates the Secret with a random key when it is missing (as it makes the webhook
certificate), and the speakers wait for it. The data key `key` holds one key per line: the first
signs, every line verifies — what makes rotation live (`docs/security.md`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
from collections.abc import Callable

from lightkube import ApiError, AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

log = logging.getLogger("openelb.memberlist")
DATA_KEY = "key"


def parse_keys(text: str) -> tuple[bytes, ...]:
    """One key per line, blanks ignored; the first is the one heartbeats are signed with."""
    return tuple(line.strip().encode() for line in text.splitlines() if line.strip())


def fingerprint(key: bytes) -> str:
    """What metrics and logs show of a key: enough to compare speakers, nothing to forge with."""
    return hashlib.sha256(key).hexdigest()[:12]


def _keys_of(secret: Secret) -> tuple[bytes, ...]:
    raw = (secret.data or {}).get(DATA_KEY)
    return parse_keys(base64.b64decode(raw).decode(errors="replace")) if raw else ()


async def ensure(client: AsyncClient, namespace: str, name: str, retry: float = 5.0) -> None:
    """Create the Secret with a random key when it is missing; an existing one is never touched.
    Retried until done (the speakers wait for it), except where RBAC forbids it."""
    while True:
        try:
            await client.get(Secret, name, namespace=namespace)
            return
        except ApiError as exc:
            if exc.status.code == 403:
                log.warning("may not read Secret %s/%s: speakers use whatever key they are given", namespace, name)
                return
            if exc.status.code == 404:
                key = secrets.token_urlsafe(32)
                body = Secret(
                    metadata=ObjectMeta(name=name, namespace=namespace, labels={"app.kubernetes.io/name": "openelb"}),
                    type="Opaque",
                    stringData={DATA_KEY: key + "\n"},
                )
                try:
                    await client.create(body)
                    log.info("created the speakers' heartbeat key in Secret %s/%s (random, %s)", namespace, name,
                             fingerprint(key.encode()))  # fmt: skip
                    return
                except ApiError as exc2:
                    if exc2.status.code == 409:  # another replica was first
                        return
                    log.warning("cannot create Secret %s/%s (%s); retrying", namespace, name, exc2.status.message)
            else:
                log.warning("cannot read Secret %s/%s (%s); retrying", namespace, name, exc.status.message)
        except Exception as exc:  # transport errors (httpx), timeouts: retried
            log.warning("cannot reach the API for Secret %s/%s (%s); retrying", namespace, name, exc)
        await asyncio.sleep(retry)


class KeyWatch:
    """The speaker's side: wait for the Secret at start, then poll it and hand rotations over."""

    def __init__(self, client: AsyncClient, namespace: str, name: str, every: float = 10.0) -> None:
        self.client, self.namespace, self.name, self.every = client, namespace, name, every
        self.keys: tuple[bytes, ...] = ()

    async def _read(self) -> tuple[bytes, ...] | str:
        try:
            return _keys_of(await self.client.get(Secret, self.name, namespace=self.namespace)) or "has no `key`"
        except ApiError as exc:
            return "is missing (the controller creates it)" if exc.status.code == 404 else exc.status.message or "?"
        except Exception as exc:  # transport errors (httpx), timeouts: asked again later
            return f"cannot be read ({exc})"

    async def first(self, patience: float = 300.0) -> tuple[bytes, ...]:
        loop = asyncio.get_running_loop()
        end, said = loop.time() + patience, ""
        while True:
            got = await self._read()
            if not isinstance(got, str):
                self.keys = got
                return got
            if got != said:
                log.warning("waiting for the heartbeat key: Secret %s/%s %s", self.namespace, self.name, got)
                said = got
            if loop.time() > end:
                raise RuntimeError(
                    f"no heartbeat key after {patience:.0f} s: Secret {self.namespace}/{self.name} {got}; "
                    "is the controller running? Or give the key with MEMBER_LIST_SECRET / --secret"
                )
            await asyncio.sleep(1.0)

    async def run(self, apply: Callable[[tuple[bytes, ...]], None]) -> None:
        while True:
            await asyncio.sleep(self.every)
            got = await self._read()
            if isinstance(got, str):
                continue  # keep the keys we have: a deleted Secret must not stop heartbeats
            if got != self.keys:
                log.info("heartbeat keys changed: signing with %s, accepting %s", fingerprint(got[0]),
                         ", ".join(map(fingerprint, got)))  # fmt: skip
                self.keys = got
                apply(got)
