"""Controller metrics, `openelb_` prefixed (Go OpenELB registered pool gauges but never set them)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.pool_size = Gauge("openelb_pool_addresses_total", "Addresses in an Eip", ["eip", "family"], registry=r)
        self.pool_used = Gauge(
            "openelb_pool_addresses_in_use", "Addresses in use in an Eip", ["eip", "family"], registry=r
        )
        self.allocations = Counter("openelb_allocations", "Services given new IPs", registry=r)
        self.releases = Counter("openelb_releases", "Services whose IPs were released", registry=r)
        self.failures = Counter("openelb_allocation_failures", "Allocation attempts that failed", registry=r)
        self.reconcile_errors = Counter(
            "openelb_reconcile_errors", "Reconciles that raised and were retried", registry=r
        )
        self.reconcile_seconds = Histogram(
            "openelb_reconcile_duration_seconds",
            "Time to reconcile one key",
            ["kind"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.is_leader = Gauge("openelb_controller_leader", "1 while this replica leads", registry=r)

    def observe_pool(self, eip: str, version: int, size: int, used: int) -> None:
        fam = f"IPv{version}"
        self.pool_size.labels(eip=eip, family=fam).set(float(size))
        self.pool_used.labels(eip=eip, family=fam).set(used)

    def forget_pool(self, eip: str) -> None:
        for fam in ("IPv4", "IPv6"):
            for g in (self.pool_size, self.pool_used):
                with contextlib.suppress(KeyError):
                    g.remove(eip, fam)
