"""`openelb status` (also `kubectl openelb status`): what OpenELB is doing, from the API alone.

Pools with their usage, Services with their IPs, mode and announcing node, and for pending
Services the reason from their latest `AssignIPFailed` Event. Collecting reads the API; rendering
is pure, so the table and the JSON/YAML forms always say the same thing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml
from lightkube import Client
from lightkube.resources.core_v1 import Event, Service

from openelb.api import names
from openelb.api.eip import EipView
from openelb.controller.servicepolicy import Policy, is_ours, status_ips
from openelb.ipam.ranges import AddressError, parse_range
from openelb.kube.resources import Eip


@dataclass
class PoolRow:
    name: str
    address: str
    family: str
    protocol: str
    usage: int
    size: int
    default: bool
    disabled: bool
    ready: bool


@dataclass
class ServiceRow:
    namespace: str
    name: str
    ips: list[str]
    pool: str
    mode: str
    announcer: str
    pending: str = ""


@dataclass
class Snapshot:
    pools: list[PoolRow] = field(default_factory=list)
    services: list[ServiceRow] = field(default_factory=list)


def collect(client: Client, policy: Policy | None = None) -> Snapshot:
    policy = policy or Policy()
    snap = Snapshot()
    protocol_of: dict[str, str] = {}
    for obj in client.list(Eip):
        view = EipView.from_object(obj)
        status = obj.get("status") or {}
        try:
            rng = parse_range(view.address)
            family, size = f"IPv{rng.version}", rng.size
        except AddressError:
            family, size = "?", 0
        protocol_of[view.name] = view.protocol
        snap.pools.append(
            PoolRow(
                view.name,
                view.address,
                family,
                view.protocol,
                int(status.get("usage") or 0),
                size,
                view.default,
                view.disable,
                bool(status.get("ready", False)),
            )
        )
    reasons = _pending_reasons(client)
    for svc in client.list(Service, namespace="*"):
        md = svc.metadata
        if md is None or not (is_ours(svc, policy) or names.LABEL_POOL in (md.labels or {})):
            continue
        ips = [str(ip) for ip in status_ips(svc)]
        pool = (md.labels or {}).get(names.LABEL_POOL, "")
        key = f"{md.namespace}/{md.name}"
        snap.services.append(
            ServiceRow(
                md.namespace or "",
                md.name or "",
                ips,
                pool,
                protocol_of.get(pool, ""),
                (md.annotations or {}).get(names.ANNOTATION_LAYER2_ANNOUNCER, ""),
                "" if ips else reasons.get(key, "waiting for the controller"),
            )
        )
    snap.pools.sort(key=lambda p: p.name)
    snap.services.sort(key=lambda s: (s.namespace, s.name))
    return snap


def _pending_reasons(client: Client) -> dict[str, str]:
    """Latest AssignIPFailed message per Service."""
    latest: dict[str, tuple[str, str]] = {}
    for ev in client.list(Event, namespace="*", fields={"reason": "AssignIPFailed"}):
        obj = ev.involvedObject
        when = str(ev.lastTimestamp or ev.eventTime or "")
        key = f"{obj.namespace}/{obj.name}"
        if key not in latest or when >= latest[key][0]:
            latest[key] = (when, ev.message or "")
    return {k: msg for k, (_when, msg) in latest.items()}


def as_dict(snap: Snapshot) -> dict[str, Any]:
    return asdict(snap)


def render(snap: Snapshot, output: str = "table") -> str:
    if output == "json":
        return json.dumps(as_dict(snap), indent=2)
    if output == "yaml":
        return yaml.safe_dump(as_dict(snap), sort_keys=False)
    return render_table(snap)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]


def render_table(snap: Snapshot) -> str:
    pools = [
        [
            p.name + (" (default)" if p.default else ""),
            p.address,
            p.family,
            p.protocol,
            f"{p.usage}/{p.size}",
            "disabled" if p.disabled else ("ready" if p.ready else "NOT READY"),
        ]
        for p in snap.pools
    ]
    services = [
        [
            f"{s.namespace}/{s.name}",
            ",".join(s.ips) or "<pending>",
            s.pool or "-",
            s.mode or "-",
            s.announcer or "-",
            s.pending,
        ]
        for s in snap.services
    ]
    out = ["POOLS", *_table(["NAME", "ADDRESS", "FAMILY", "MODE", "USED", "STATE"], pools), ""]
    out += ["SERVICES", *_table(["SERVICE", "IPS", "POOL", "MODE", "ANNOUNCER", "PENDING REASON"], services)]
    return "\n".join(out)
