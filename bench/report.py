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


def print_comparison(title: str, pairs: dict[str, tuple[list[float], list[float]]], names: tuple[str, str]) -> None:
    """Side by side: p50/p99 of two implementations per failure kind and the ratio of the second's
    p50 to the first's (how many times longer the peer's outage is)."""
    a, b = names
    width = max(len(title), *(len(k) for k in pairs))
    print(f"{title:{width}} {a + ' p50':>12} {a + ' p99':>12} {b + ' p50':>12} {b + ' p99':>12} {'ratio p50':>10}")
    for kind, (va, vb) in pairs.items():
        if not va or not vb:
            continue
        sa, sb = sorted(va), sorted(vb)
        pa, pb = statistics.median(sa), statistics.median(sb)
        qa, qb = sa[min(len(sa) - 1, int(len(sa) * 0.99))], sb[min(len(sb) - 1, int(len(sb) * 0.99))]
        ratio = f"{pb / pa:.1f}x" if pa > 0 else "-"
        print(f"{kind:{width}} {pa:>12.0f} {qa:>12.0f} {pb:>12.0f} {qb:>12.0f} {ratio:>10}")
