"""VIP mode with 10,000 IPs in the lab: what the VRRP routers cost on the wire and in the speaker,
and how long a master holding thousands of IPs takes to be replaced.

    sudo .venv/bin/python bench/vip.py [--services 10000] [--window 10]

Brings up a 3-node lab of its own, the controller and a speaker per node, one `vip` Eip
(198.18.128.0/18 on eth0, 16 VRIDs: 8 routers for Cluster IPs), and `--services` LoadBalancer
Services in it. Measured:

1. create → every IP held by exactly one node (`ip addr` on every node's eth0), and the VRRP
   transitions on the way: beyond each router's first mastership, each pair of them is a backup
   that took over for a moment because its master's adverts came late;
2. a quiet window: VRRP adverts per second over all speakers (baseline printed beside it: one
   router per IP, as keepalived instances per Service would be, sends IPs / interval), speaker
   CPU and RSS;
3. power-off (speaker SIGKILLed, link down) of the master holding the most IPs: time until a
   sampled IP of it answers ARP from another node, and until the survivors hold all its IPs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import subprocess
import time

from lightkube.resources.core_v1 import Service

from openelb.kube.client import sync_client
from openelb_lab import lab, workloads
from openelb_lab.components import Paths
from speaker_scale import NS, Speaker, _Client, arp_macs, in_netns, say, scrape, service_body, start_controller

POOL = "198.18.128.0/18"
PREFIX = "198.18."


def held(netns: str) -> set[str]:
    shown = json.loads(in_netns(netns, "ip", "-j", "addr", "show", "dev", "eth0") or "[]")
    out = set()
    for link in shown:
        for a in link["addr_info"]:
            parts = a["local"].split(".")
            if a["local"].startswith(PREFIX) and len(parts) == 4 and 128 <= int(parts[2]) < 192:
                out.add(a["local"])
    return out


async def create(kubeconfig: str, count: int) -> None:
    async with contextlib.aclosing(_Client(kubeconfig)) as c:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                await c.client.create(Service.from_dict(service_body(i, "vip", False)), namespace=NS)
                if (i + 1) % 1000 == 0:
                    say(f"created {i + 1:,}/{count:,} Services")

        await asyncio.gather(*(one(i) for i in range(count)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--window", type=float, default=10.0, help="seconds of the quiet window")
    args = ap.parse_args()
    lab_plan = lab.up(3)
    kc = Paths(lab.state_dir()).kubeconfig("admin")
    kube = sync_client(kc)
    speakers: dict[str, Speaker] = {}
    ctl: subprocess.Popen[bytes] | None = None
    try:
        ctl = start_controller(kube, kc, {"vip": (POOL, "vip")}, "vip")
        speakers = {n.name: Speaker(n.name, n.netns, kc) for n in lab_plan.nodes}
        workloads.poll("every speaker ready", lambda: all(s.ready() for s in speakers.values()), 120, interval=1)
        t0 = time.monotonic()
        key_t = "openelb_vip_transitions_total"
        base = scrape(lab_plan)
        asyncio.run(create(str(kc), args.services))
        created = time.monotonic()

        def holdings() -> dict[str, set[str]]:
            return {n.name: held(n.netns) for n in lab_plan.nodes}

        def all_held_once() -> bool:
            h = holdings()
            total = sum(len(v) for v in h.values())
            return total == args.services and len(set().union(*h.values())) == args.services

        workloads.poll("every IP held by exactly one node", all_held_once, 900, interval=2)
        converged = time.monotonic()
        say(f"{args.services:,} IPs held, {converged - created:.0f}s after the last Service was created")
        before = scrape(lab_plan)
        transitions = sum(before[n].get(key_t, 0) - base[n].get(key_t, 0) for n in before)
        started = len({k for n in before for k in before[n] if k.startswith("openelb_vip_master{")})
        cpu0 = {n: s.cpu() for n, s in speakers.items()}
        time.sleep(args.window)
        after = scrape(lab_plan)
        cpu = {n: (s.cpu() - cpu0[n]) / args.window for n, s in speakers.items()}
        rss = {n: s.memory_mb("Rss") for n, s in speakers.items()}
        key = "openelb_vip_adverts_sent_total"
        sent = sum(after[n].get(key, 0) - before[n].get(key, 0) for n in after) / args.window
        routers = {n: int(sum(1 for k in after[n] if k.startswith("openelb_vip_master{"))) for n in after}
        h = holdings()
        victim = max(h, key=lambda n: len(h[n]))
        lost = h[victim]
        sample = sorted(lost)[len(lost) // 2]
        node = lab_plan.node(victim)
        macs = {n.name: in_netns(n.netns, "cat", "/sys/class/net/eth0/address").strip().lower() for n in lab_plan.nodes}
        speakers[victim].stop(signal.SIGKILL)
        in_netns(node.netns, "ip", "link", "set", "eth0", "down")
        t_off = time.monotonic()
        first = every = float("inf")
        while time.monotonic() - t_off < 60 and every == float("inf"):
            if first == float("inf"):
                got = arp_macs(lab_plan.client.netns, sample)
                if got and macs[victim] not in got:
                    first = time.monotonic() - t_off
            else:
                survivors = set().union(*(held(n.netns) for n in lab_plan.nodes if n.name != victim))
                if lost <= survivors:
                    every = time.monotonic() - t_off
            time.sleep(0.01)
        in_netns(node.netns, "ip", "link", "set", "eth0", "up")
        print()
        print(f"VIP mode, {args.services:,} Services in one vip Eip (16 VRIDs), 3 nodes")
        print(
            f"  create -> all held once: {converged - t0:.0f}s from the first create, "
            f"{converged - created:.0f}s after the last; per node {', '.join(f'{n} {len(v):,}' for n, v in h.items())}"
        )
        print(f"  routers per node (master or backup): {routers}")
        print(
            f"  VRRP transitions while the Services were created: {transitions:.0f} "
            f"(each router's first mastership: {started}; above that, 2 per momentary double master: "
            f"{max(0.0, transitions - started) / 2:.0f})"
        )
        print(
            f"  VRRP adverts sent, all speakers: {sent:.0f}/s   (one router per IP at 100 ms would be "
            f"{args.services * 10:,}/s)"
        )
        print(
            f"  speaker CPU (quiet) p50 {statistics.median(cpu.values()) * 100:.1f}% max "
            f"{max(cpu.values()) * 100:.1f}% of a core; RSS max {max(rss.values()):.0f} MB"
        )
        print(f"  power-off of {victim} (master of {len(lost):,} IPs): first sampled IP answered by another "
              f"node after {first * 1e3:.0f} ms, all held by the survivors after {every * 1e3:.0f} ms")  # fmt: skip
    finally:
        for s in speakers.values():
            s.stop()
        if ctl is not None:
            ctl.terminate()
            ctl.wait(15)
        lab.down()


if __name__ == "__main__":
    main()
