"""Leader election on a coordination.k8s.io Lease, with client-go's semantics.

Expiry is judged on the local clock from when this replica last saw the Lease record change (not
from the renewTime written by another machine), so clock skew cannot make two leaders. A leader
that cannot renew within `renew_deadline` stops leading (its work is cancelled) before the Lease
can expire for the others; a leader that stops gracefully releases the Lease for an instant handover.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

log = logging.getLogger(__name__)


class LostLeadership(RuntimeError):
    pass


class LeaseElector:
    def __init__(
        self,
        client: AsyncClient,
        name: str,
        namespace: str,
        identity: str,
        *,
        lease_seconds: float = 15,
        renew_deadline: float = 10,
        retry_period: float = 2,
    ) -> None:
        self.client = client
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._observed: tuple[str | None, str | None] | None = None
        self._observed_at = 0.0
        self.leading = False
        self._renewed_at = float("-inf")
        """Monotonic time of the last successful acquire/renew."""
        self.fenced = 0
        """Writes refused because the lease may have passed to another replica (see `valid`)."""

    def valid(self) -> bool:
        """May this replica write now? Only while leading and within `renew_deadline` of its last
        successful renewal, on the local monotonic clock. A replica that was stopped (SIGSTOP, a
        VM pause, a long GC) past its lease wakes up with this False, before its renew loop has
        noticed: its queued work then cannot write over the new leader's (fencing)."""
        return self.leading and time.monotonic() - self._renewed_at < self.renew_deadline

    async def run(
        self, lead: Callable[[], Coroutine[Any, Any, None]], on_change: Callable[[bool], None] | None = None
    ) -> None:
        """Wait to lead, then run `lead()` while renewing; raises LostLeadership if renewal fails."""
        while not await self._try():  # noqa: ASYNC110 - polling the Lease is the protocol
            await asyncio.sleep(self.retry_period * (1 + random.random() * 0.2))  # noqa: S311 - jitter
        log.info("%s became leader of %s/%s", self.identity, self.namespace, self.name)
        self._renewed_at = time.monotonic()
        self.leading = True
        if on_change:
            on_change(True)
        work = asyncio.create_task(lead())
        renew = asyncio.create_task(self._renew_loop())
        try:
            done, _ = await asyncio.wait({work, renew}, return_when=asyncio.FIRST_COMPLETED)
            if renew in done:
                renew.result()
            work.result()
        finally:
            self.leading = False
            if on_change:
                on_change(False)
            for t in (work, renew):
                t.cancel()

    async def _renew_loop(self) -> None:
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.retry_period)
            try:
                ok = await asyncio.wait_for(self._try(), self.renew_deadline)
            except (TimeoutError, ApiError, OSError) as exc:
                log.warning("lease renewal failed: %s", exc)
                ok = False
            if ok:
                last_ok = time.monotonic()
                self._renewed_at = last_ok
            elif time.monotonic() - last_ok > self.renew_deadline:
                raise LostLeadership(f"could not renew lease {self.namespace}/{self.name} for {self.renew_deadline}s")

    async def _try(self) -> bool:
        now = dt.datetime.now(dt.UTC)
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            try:
                await self.client.create(
                    Lease(
                        metadata=ObjectMeta(name=self.name, namespace=self.namespace),
                        spec=LeaseSpec(
                            holderIdentity=self.identity,
                            leaseDurationSeconds=int(self.lease_seconds),
                            acquireTime=now,
                            renewTime=now,
                            leaseTransitions=0,
                        ),
                    )
                )
            except ApiError as exc2:
                if exc2.status.code == 409:
                    return False
                raise
            return True
        spec = lease.spec or LeaseSpec()
        record = (spec.holderIdentity, spec.renewTime.isoformat() if spec.renewTime else None)
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        holder = spec.holderIdentity
        duration = spec.leaseDurationSeconds or self.lease_seconds
        if holder and holder != self.identity and time.monotonic() < self._observed_at + duration:
            return False
        if holder != self.identity:
            spec.acquireTime = now
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
        spec.holderIdentity = self.identity
        spec.leaseDurationSeconds = int(self.lease_seconds)
        spec.renewTime = now
        lease.spec = spec
        try:
            await self.client.replace(lease)
        except ApiError as exc:
            if exc.status.code == 409:
                return False
            raise
        self._observed = (self.identity, now.isoformat())
        self._observed_at = time.monotonic()
        return True

    async def release(self) -> None:
        """Give the Lease up (graceful stop) so another replica takes over at once."""
        if not self.leading and self._observed and self._observed[0] != self.identity:
            return
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
            if lease.spec is None or lease.spec.holderIdentity != self.identity:
                return
            lease.spec.holderIdentity = None
            lease.spec.leaseDurationSeconds = 1
            await self.client.replace(lease)
            log.info("released lease %s/%s", self.namespace, self.name)
        except (ApiError, OSError) as exc:
            log.warning("could not release lease: %s", exc)


WRITES = frozenset({"create", "replace", "patch", "delete", "deletecollection", "apply"})


class FencedClient:
    """The client the leader's reconcilers write with: every write first asks the elector whether
    this replica still holds the lease (`LeaseElector.valid`), and a stale leader's write is
    refused with LostLeadership (the process then exits and restarts as a standby). Reads pass."""

    def __init__(self, client: AsyncClient, elector: LeaseElector) -> None:
        self._client = client
        self._elector = elector

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in WRITES:
            return attr

        async def fenced(*args: Any, **kwargs: Any) -> Any:
            if not self._elector.valid():
                self._elector.fenced += 1
                raise LostLeadership(f"refused a {name}: the lease {self._elector.name} may be another replica's")
            return await attr(*args, **kwargs)

        return fenced
