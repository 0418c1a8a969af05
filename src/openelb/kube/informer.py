"""An asyncio informer on lightkube: list, then watch from the list's resourceVersion.

lightkube has no informer and its watch has no read timeout, so this adds what client-go's
reflector does: a full relist on 410 Gone or any watch error (with the diff emitted as changes, so
deletions in the gap are not missed), a watchdog per event, and a periodic resync. Consumers get
only *keys* through `on_change` and read objects from `store`: level-triggered by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.core.resource import NamespacedResource
from lightkube.types import PatchType

log = logging.getLogger(__name__)

T = TypeVar("T")


def object_key(obj: Any) -> str:
    """`namespace/name`, or `name` for cluster-scoped objects."""
    md = obj.metadata
    return f"{md.namespace}/{md.name}" if md.namespace else str(md.name)


class Informer(Generic[T]):
    def __init__(
        self,
        client: AsyncClient,
        resource: type[T],
        on_change: Callable[[str], None],
        *,
        namespace: str | None = "*",
        fields: dict[str, str] | None = None,
        labels: dict[str, Any] | None = None,
        watch_timeout: int = 50,
        resync_period: float | None = None,
        name: str | None = None,
        transform: Callable[[T], T] | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.on_change = on_change
        self.namespace = namespace
        self.fields = fields
        self.labels = labels
        self.watch_timeout = watch_timeout
        self.resync_period = resync_period
        self.name = name or getattr(resource, "__name__", "resource")
        self.transform = transform
        """Applied to every object before it is stored (client-go's SetTransform): a consumer
        that reads a few fields keeps only those, not every object's managedFields."""
        self.store: dict[str, T] = {}
        self.synced = asyncio.Event()

    def _scope(self) -> dict[str, Any]:
        scope: dict[str, Any] = {"fields": self.fields, "labels": self.labels}
        if issubclass(self.resource, NamespacedResource):
            scope["namespace"] = self.namespace
        return scope

    async def _relist(self) -> str:
        res: Any = self.resource  # lightkube's overloads want a concrete resource class
        listing = self.client.list(res, chunk_size=500, **self._scope())
        fresh: dict[str, T] = {}
        async for obj in listing:
            fresh[object_key(obj)] = self._slim(obj)
        rv: str = listing.resourceVersion
        old = self.store
        self.store = fresh
        for key in old.keys() - fresh.keys():
            self.on_change(key)
        for key, obj in fresh.items():
            prev = old.get(key)
            if prev is None or _rv(prev) != _rv(obj):
                self.on_change(key)
        self.synced.set()
        return rv

    async def _events(self, rv: str) -> AsyncIterator[tuple[str, T]]:
        timeout = self.watch_timeout + random.randint(0, 10)  # noqa: S311 - jitter, not crypto
        res: Any = self.resource
        stream = self.client.watch(res, resource_version=rv, server_timeout=timeout, **self._scope())
        iterator: Any = stream.__aiter__()
        deadline = asyncio.get_running_loop().time() + timeout + 10
        try:
            while True:
                # lightkube sets no read timeout on watches, and a connection whose NAT state
                # vanished (a node's link flapped) stays silent forever: every watch is ended
                # after the server's own timeout and resumed from the last version seen, so a
                # dead one costs at most `timeout` + 10 s of missed events.
                left = deadline - asyncio.get_running_loop().time()
                try:
                    event, obj = await asyncio.wait_for(iterator.__anext__(), max(left, 0.1))
                except StopAsyncIteration:
                    return
                yield event, obj
        finally:
            # Closing a stream whose client is gone may raise: never instead of a cancellation.
            with contextlib.suppress(Exception):
                await iterator.aclose()

    async def run(self) -> None:
        """Run until cancelled; never raises on API errors (they are logged and retried)."""
        backoff = 0.2
        resync = asyncio.create_task(self._resync_loop()) if self.resync_period else None
        rv: str | None = None
        try:
            while True:
                try:
                    if rv is None:
                        rv = await self._relist()
                        backoff = 0.2
                    # A watch the server ended resumes from the last version seen: no relist.
                    async for event, raw in self._events(rv):
                        rv = _rv(raw) or rv
                        if event == "BOOKMARK":
                            continue
                        obj = self._slim(raw)
                        key = object_key(obj)
                        held = self.store.get(key)
                        if event == "DELETED":
                            self.store.pop(key, None)
                        elif held is not None and _rv(held) == _rv(obj):
                            continue  # the echo of our own write, already stored by `remember`
                        elif held is None or _newer(obj, held):
                            self.store[key] = obj
                        # else: an older version than the one our write returned. The store keeps
                        # the newer one (it includes this change), but the change is still reported:
                        # the write that returned it may have been decided without seeing it.
                        self.on_change(key)
                except asyncio.CancelledError:
                    raise
                except TimeoutError:
                    log.debug("%s informer: watch renewed", self.name)
                except Exception as exc:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        # Cancelled while the stream failed (its client closed under it): the
                        # error must not swallow the cancellation, or the process never exits
                        # (found by the chaos soak: a fenced leader hung instead of stepping down).
                        raise asyncio.CancelledError from exc
                    rv = None  # relist: 410 Gone (too old) or a failure that may have lost events
                    gone = isinstance(exc, ApiError) and exc.status.code == 410
                    if not gone:
                        log.warning("%s informer: %s; relisting in %.1fs", self.name, exc or type(exc), backoff)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 10.0)
        finally:
            if resync:
                resync.cancel()

    def remember(self, obj: T) -> None:
        """Store what one of our own writes returned (client-go's MutationCache): the reconciles
        that follow see it at once instead of re-sending a write whose watch event is still on
        its way, and that event is then not reported again."""
        key = object_key(obj)
        held = self.store.get(key)
        if held is not None and _newer(obj, held):
            self.store[key] = self._slim(obj)

    async def patch(self, name: str, body: dict[str, Any], *, namespace: str | None = None) -> None:
        """A strategic merge patch of one object of this kind (lists such as finalizers are merged,
        never replaced), its result remembered; an object already gone (404) is no error: its
        DELETED event is on its way."""
        try:
            res: Any = self.resource  # lightkube types `patch` per resource kind; ours is generic
            out = await self.client.patch(res, name, body, namespace=namespace, patch_type=PatchType.STRATEGIC)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            return
        self.remember(out)

    def _slim(self, obj: T) -> T:
        return self.transform(obj) if self.transform is not None else obj

    async def _resync_loop(self) -> None:
        assert self.resync_period
        while True:
            await asyncio.sleep(self.resync_period)
            for key in list(self.store):
                self.on_change(key)


def _rv(obj: Any) -> str | None:
    return obj.metadata.resourceVersion  # type: ignore[no-any-return]


def _newer(obj: Any, than: Any) -> bool:
    """Whether `obj` is a later version than `than`. resourceVersions are opaque, but every
    apiserver backed by etcd issues integers; anything else counts as newer, as before."""
    a, b = _rv(obj), _rv(than)
    if a is not None and b is not None and a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return True
