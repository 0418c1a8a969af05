"""The announcer annotation on Services: Layer2's `layer2.openelb.kubesphere.io/v1alpha1: <node>`,
and VIP mode's `vip.openelb.kubesphere.io/v1alpha1: <node>` (the VRRP master).

Written by the owner only, and only for an ownership that has lasted `settle` seconds (an IP
that moves and comes back writes nothing), at most `rate` writes per second per speaker, never a
value the Service already has. These writes come back to every speaker as Service events; the
plan sees equal inputs and decides nothing again, so they cannot feed a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from lightkube import AsyncClient
from lightkube.resources.core_v1 import Service
from lightkube.types import PatchType

from openelb.api import names
from openelb.kube.events import EventRecorder, Target
from openelb.speaker.desired import Announcement

log = logging.getLogger("openelb.speaker.marks")


class AnnouncerMarks:
    def __init__(
        self,
        client: AsyncClient,
        node: str,
        recorder: EventRecorder,
        service: Callable[[str], Service | None],
        owned: Callable[[str], Announcement | None],
        *,
        settle: float = 2.0,
        rate: float = 20.0,
        annotation: str = names.ANNOTATION_LAYER2_ANNOUNCER,
        reason: str = "Layer2Announcer",
        doing: str = "answers ARP/NDP for",
    ) -> None:
        self.client = client
        self.node = node
        self.recorder = recorder
        self._service = service
        self._owned = owned
        """ip → its announcement while this node owns it."""
        self.settle = settle
        self.rate = rate
        self.annotation, self.reason, self.doing = annotation, reason, doing
        self._due: dict[str, tuple[float, str]] = {}
        """Service key → (when, ip): insertion order is due order (same settle for all)."""
        self._wake = asyncio.Event()
        self.writes = 0

    def gained(self, ann: Announcement) -> None:
        when = asyncio.get_running_loop().time() + self.settle
        for key in ann.services:
            self._due.pop(key, None)
            self._due[key] = (when, ann.ip)
        self._wake.set()

    def _annotated(self, svc: Service | None) -> str | None:
        md = svc.metadata if svc else None
        return ((md.annotations if md else None) or {}).get(self.annotation)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._due:
                self._wake.clear()
                await self._wake.wait()
                continue
            key, (when, ip) = next(iter(self._due.items()))
            if when > loop.time():
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), when - loop.time())
                continue
            del self._due[key]
            ann = self._owned(ip)
            svc = self._service(key)
            if ann is None or key not in ann.services or svc is None or self._annotated(svc) == self.node:
                continue  # lost it meanwhile, Service gone, or already says so
            if not await self._write(key, svc, ann):  # e.g. 429 from API fairness: later, once settled again
                self._due.setdefault(key, (loop.time() + self.settle, ip))
            await asyncio.sleep(1.0 / self.rate)

    async def _write(self, key: str, svc: Service, ann: Announcement) -> bool:
        ns, name = key.split("/", 1)
        try:
            await self.client.patch(
                Service,
                name,
                {"metadata": {"annotations": {self.annotation: self.node}}},
                namespace=ns,
                patch_type=PatchType.MERGE,
            )
        except Exception as exc:
            log.warning("cannot annotate %s: %s", key, exc)
            return False
        self.writes += 1
        uid = svc.metadata.uid if svc.metadata else None
        self.recorder.emit(
            Target("Service", name, ns, uid),
            "Normal",
            self.reason,
            f"{self.node} {self.doing} {ann.ip} on {ann.interface}",
        )
        return True
