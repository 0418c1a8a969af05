"""Allocator benchmark: lowest-free allocation in big pools, against a linear-scan baseline.

    .venv/bin/python bench/allocator.py [--v6 1000000] [--v4 65536] [--baseline 20000]

The baseline is the allocation strategy of Go OpenELB and MetalLB: walk the pool from its first
address and take the first one not in the used map (O(used) per allocation). It runs in the same
process on the same pool, on fewer allocations since it is quadratic, and both are printed.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import time
from pathlib import Path

from openelb.api.ranges import parse_range
from openelb.ipam.allocator import Allocator, Pool, Request


def ours(cidr: str, count: int, family: int) -> tuple[float, float]:
    """(seconds per allocation, RSS growth per allocation) for `count` Services in one pool."""
    alloc = Allocator()
    alloc.set_pools([Pool("bench", parse_range(cidr), default=True)])
    reqs = [Request(key=f"bench/s{i}", namespace="bench", families=(family,)) for i in range(count)]
    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    step = max(count // 10, 1)
    for i, r in enumerate(reqs):
        alloc.assign(r)
        if (i + 1) % step == 0:
            print(f"  {cidr}: {i + 1:>9,}/{count:,} allocated ({time.perf_counter() - t0:6.1f}s)", flush=True)
    elapsed = time.perf_counter() - t0
    grown = rss_bytes() - rss0
    assert alloc.usage("bench") == count
    return elapsed / count, grown / count


def rss_bytes() -> int:
    """Resident set size from /proc (the whole process: what a pod's memory limit sees)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def baseline(cidr: str, count: int) -> float:
    """Seconds per allocation of a linear scan from the first address (Go OpenELB / MetalLB)."""
    net = ipaddress.ip_network(cidr)
    first = int(net.network_address)
    used: dict[str, str] = {}
    t0 = time.perf_counter()
    for i in range(count):
        offset = 0
        while str(ipaddress.ip_address(first + offset)) in used:
            offset += 1
        used[str(ipaddress.ip_address(first + offset))] = f"bench/s{i}"
    return (time.perf_counter() - t0) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--v6", type=int, default=1_000_000, help="allocations in a /64")
    parser.add_argument("--v4", type=int, default=65_536, help="allocations in a /16 (fills it)")
    parser.add_argument("--baseline", type=int, default=20_000, help="allocations for the linear-scan baseline")
    args = parser.parse_args()

    print(f"[1/3] {args.v6:,} allocations in 2001:db8:b::/64")
    v6_time, v6_mem = ours("2001:db8:b::/64", args.v6, 6)
    print(f"[2/3] {args.v4:,} allocations in 198.18.0.0/16")
    v4_time, v4_mem = ours("198.18.0.0/16", args.v4, 4)
    print(f"[3/3] baseline: linear scan, {args.baseline:,} allocations in 198.18.0.0/16")
    base = baseline("198.18.0.0/16", args.baseline)
    ours_same, _ = ours("198.18.0.0/16", args.baseline, 4)

    print()
    print(f"{'case':46} {'per allocation':>16} {'memory per IP':>14}")
    print(f"{'openelb /64, ' + format(args.v6, ',') + ' allocations':46} {v6_time * 1e6:13.1f} us {v6_mem:11.0f} B")
    print(f"{'openelb /16, ' + format(args.v4, ',') + ' allocations':46} {v4_time * 1e6:13.1f} us {v4_mem:11.0f} B")
    print(f"{'openelb /16, ' + format(args.baseline, ',') + ' allocations':46} {ours_same * 1e6:13.1f} us")
    print(f"{'baseline linear scan, ' + format(args.baseline, ',') + ' allocations':46} {base * 1e6:13.1f} us")
    print(
        f"speed-up at {args.baseline:,} allocations: {base / ours_same:.0f}x "
        "(the baseline grows linearly with the number of used IPs; ours does not)"
    )


if __name__ == "__main__":
    main()
