"""Kubernetes Events (core/v1), aggregated like client-go's recorder: a repeat of the same
(object, type, reason, message) bumps `count` instead of creating a new Event.

Asynchronous like client-go's recorder too: `emit` queues and returns, and one sender writes the
queue in order. An Event then never holds up a reconcile, and in a burst it does not compete with
the writes that matter (a Service's IP) for the apiserver: with one Event in flight at a time, the
Events trail the burst and catch up after it."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from collections import deque
from dataclasses import dataclass

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Service
from lightkube.types import PatchType

log = logging.getLogger(__name__)

MAX_PENDING = 10_000
"""Events waiting to be written; beyond this the oldest are dropped (client-go drops new ones)."""


@dataclass(frozen=True)
class Target:
    kind: str
    name: str
    namespace: str | None
    uid: str | None
    api_version: str = "v1"


def service_target(svc: Service) -> Target:
    """The Target of a Service's Events (the controller's reconcilers all write them)."""
    md = svc.metadata
    assert md is not None
    return Target("Service", md.name or "", md.namespace, md.uid)


class EventRecorder:
    def __init__(self, client: AsyncClient, component: str, events_namespace: str = "default") -> None:
        self.client = client
        self.component = component
        self.events_namespace = events_namespace
        """Where Events of cluster-scoped objects (Eips) go, as kubectl describe expects: `default`."""
        self._seen: dict[tuple[str, str, str, str], tuple[str, str, int]] = {}
        self._pending: deque[tuple[Target, str, str, str, dt.datetime]] = deque()
        self._sender: asyncio.Task[None] | None = None
        self.dropped = 0

    def emit(self, target: Target, type_: str, reason: str, message: str) -> None:
        """Queue an Event (stamped now); never blocks and never raises. Needs a running loop."""
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("event queue full: %d events dropped so far", self.dropped)
        self._pending.append((target, type_, reason, message, dt.datetime.now(dt.UTC)))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_pending())

    async def flush(self) -> None:
        """Wait until every queued Event was sent (a graceful stop bounds this with a timeout)."""
        if self._sender is not None and not self._sender.done():
            await self._sender

    async def _send_pending(self) -> None:
        while self._pending:
            await self._send(*self._pending.popleft())

    async def _send(self, target: Target, type_: str, reason: str, message: str, now: dt.datetime) -> None:
        """Never raises: an Event that cannot be written is logged and skipped."""
        ns = target.namespace or self.events_namespace
        key = (target.uid or f"{target.kind}/{target.namespace}/{target.name}", type_, reason, message)
        try:
            prev = self._seen.get(key)
            if prev is not None:
                name, ev_ns, count = prev
                try:
                    await self.client.patch(
                        Event,
                        name,
                        {"count": count + 1, "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ")},
                        namespace=ev_ns,
                        patch_type=PatchType.MERGE,
                    )
                    self._seen[key] = (name, ev_ns, count + 1)
                    return
                except ApiError as exc:
                    if exc.status.code != 404:
                        raise
            name = f"{target.name}.{secrets.token_hex(8)}"
            await self.client.create(
                Event(
                    metadata=ObjectMeta(name=name, namespace=ns),
                    involvedObject=ObjectReference(
                        kind=target.kind,
                        name=target.name,
                        namespace=target.namespace,
                        uid=target.uid,
                        apiVersion=target.api_version,
                    ),
                    reason=reason,
                    message=message,
                    type=type_,
                    source=EventSource(component=self.component),
                    firstTimestamp=now,
                    lastTimestamp=now,
                    count=1,
                    reportingComponent=self.component,
                )
            )
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[key] = (name, ns, 1)
        except Exception as exc:
            log.warning("could not record event %s %s on %s/%s: %s", type_, reason, ns, target.name, exc)
