"""Percentile tables the failover benchmarks print."""

import statistics


def print_outages(title: str, results: dict[str, list[float]]) -> None:
    """One row per failure kind: runs, p50, p99 and max of the outages (ms)."""
    width = max(len(title), *(len(k) for k in results))
    print(f"{title:{width}} {'runs':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for kind, vals in results.items():
        if not vals:
            continue
        v = sorted(vals)
        p99 = v[min(len(v) - 1, int(len(v) * 0.99))]
        print(f"{kind:{width}} {len(v):>5} {statistics.median(v):>8.0f} {p99:>8.0f} {v[-1]:>8.0f}")
