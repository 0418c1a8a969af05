"""Go OpenELB's finalizers on BgpConf and BgpPeer, removed once when the controller starts leading.

Go's speakers put `finalizer.lb.kubesphere.io/v1alpha1` on every BgpConf and BgpPeer and took it
off on deletion. Ours never add it (see `names.GO_FINALIZERS`), so after a takeover nothing would
ever take Go's off again: deleting such an object, or our CRDs at uninstall, would hang. Only Go's
speakers add it, and they are gone once ours run, so one pass per leadership is enough; the
controller is the one writer of metadata (the speakers patch only their own status entries).
Services and Eips lose theirs in the IPAM reconcilers, which see every one anyway.
"""

from __future__ import annotations

import logging
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.types import PatchType

from openelb.api import names
from openelb.kube.resources import BgpConf, BgpPeer

log = logging.getLogger("openelb.controller.takeover")


async def strip_go_finalizers(client: AsyncClient) -> int:
    """Removes Go's finalizer from every BgpConf and BgpPeer; returns how many were changed.
    Never raises (it runs beside the leader's reconcilers): for RBAC or a missing CRD — Go's own
    manifest may not grant us the rights — the objects keep their finalizer as they had it under
    Go, and the log says so."""
    try:
        return await _strip(client)
    except Exception:
        log.exception("removing Go OpenELB's finalizers failed; the next leadership tries again")
        return 0


async def _strip(client: AsyncClient) -> int:
    changed = 0
    for kind, res in (("BgpConf", BgpConf), ("BgpPeer", BgpPeer)):
        try:
            objs: list[Any] = [o async for o in client.list(res)]
        except ApiError as exc:
            log.warning("cannot list %s to remove Go OpenELB's finalizers (%s); deleting them may hang", kind, exc)
            continue
        for obj in objs:
            md = obj.metadata
            finalizers = list(md.finalizers or [])
            if names.FINALIZER_SERVICE not in finalizers:
                continue
            rest = [f for f in finalizers if f != names.FINALIZER_SERVICE]
            patch = {"metadata": {"finalizers": rest, "resourceVersion": md.resourceVersion}}
            try:
                await client.patch(res, md.name, patch, patch_type=PatchType.MERGE)
            except ApiError as exc:
                if exc.status.code not in (404, 409):  # gone, or changed: the next leadership looks again
                    log.warning("cannot remove Go OpenELB's finalizer from %s %s: %s", kind, md.name, exc)
                continue
            changed += 1
            log.info("removed Go OpenELB's finalizer from %s %s", kind, md.name)
    return changed
