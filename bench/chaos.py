"""Chaos soak of IP assignment: two controller replicas under kills, a paused leader, apiserver
and etcd restarts, while Services churn — and an independent checker that counts violations.

    sudo .venv/bin/python bench/chaos.py [--services 10000] [--seconds 600] [--rate 30]

On a lab of its own: CRDs, two Eips (`bgp`, no speaker needed: the invariants are the
allocator's), two controller replicas with leader election (each its own field manager, so the
checker can tell their writes apart). Then for `--seconds`: Service operations at `--rate`/s
(create, delete, change the pool annotation, opt out and back in, type LoadBalancer ⇄ ClusterIP,
ports, sharing key); the leader SIGKILLed every `--kill-every` s (and restarted, as its
Deployment would); once, the leader SIGSTOPped for 20 s (past its 15 s lease) and then resumed;
the apiserver restarted at a third of the run (`--outage S`: kept down S seconds first), etcd at
two thirds; a speaker (one per node, announcing a fixed set of Layer2 Services in namespace
`chaos-l2`) SIGKILLed every `--speaker-kill-every` s and restarted. The checker watches Services
and the Lease from its own connection throughout and counts:

- `duplicates`: an IP held by two Services at one instant that may not share it (no common
  sharing key, or overlapping ports);
- `moved`: a Service whose IP changed, or went away, without its request changing;
- `stale_writes`: a write by the paused replica after another took the lease (fencing);
then, `--settle` s after the chaos stops:
- `missing`: Services that ask for an IP and have none;
- `status_mismatch`: IPs in `Eip.status.used` without that Service holding them, or the reverse;
- `unannounced`, `split`, `wrong_announcer`: a Layer2 Service's IP that no node answers ARP for,
  that two nodes answer for, or whose announcer annotation names another node than the one
  answering (the speakers' part: killed ones must leave no IP behind and no stale claim).

Every count must be 0. `tests/lab/test_chaos.py` runs a short version in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random  # workload choices, not crypto
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Service

from failover import arp_owners  # the failover bench's probe: one definition of "who answers ARP"
from openelb.api import crds, names
from openelb.kube.client import sync_client
from openelb.kube.resources import Eip
from openelb_lab import lab, netns, workloads
from openelb_lab.components import Paths
from openelb_lab.plan import LabPlan, NodePlan

NS = "chaos"
CTL_NS = "chaos-system"
POOLS = {"chaos-a": "198.18.32.0/19", "chaos-b": "198.18.128.0/18"}
L2_NS, L2_POOL, L2_RANGE, L2_SERVICES = "chaos-l2", "chaos-l2", "198.18.0.150-198.18.0.179", 10
"""The speakers' share of the soak: a fixed set of Layer2 Services on the lab LAN (the client ARPs)."""
T0 = time.monotonic()
REQUEST_GRACE = 30.0
"""Seconds after a Service's request changed during which its IP may change or go (the answer)."""


def say(msg: str) -> None:
    print(f"[chaos +{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


# ---- the checker ---------------------------------------------------------------------------------


def signature(svc: Service) -> tuple[Any, ...]:
    """Everything a Service's IP may depend on: if none of it changed, its IP may not either."""
    md, spec = svc.metadata, svc.spec
    ann = (md.annotations if md else None) or {}
    ports = tuple(sorted((p.protocol or "TCP", p.port) for p in (spec.ports if spec else None) or []))
    return (
        spec.type if spec else None,
        spec.loadBalancerClass if spec else None,
        ann.get(names.ANNOTATION_LB),
        ann.get(names.ANNOTATION_POOL),
        ann.get(names.ANNOTATION_IP),
        ann.get(names.ANNOTATION_SHARE_KEY),
        ports,
    )


def _key(svc: Service) -> str:
    """namespace/name/uid: a Service deleted and created again under its name is another one."""
    md = svc.metadata
    assert md is not None
    return f"{md.namespace}/{md.name}/{md.uid}"


def ingress(svc: Service) -> tuple[str, ...]:
    lb = svc.status.loadBalancer if svc.status else None
    return tuple(sorted(i.ip for i in (lb.ingress if lb else None) or [] if i.ip))


def may_share(a: Service, b: Service) -> bool:
    ka = ((a.metadata.annotations if a.metadata else None) or {}).get(names.ANNOTATION_SHARE_KEY)
    kb = ((b.metadata.annotations if b.metadata else None) or {}).get(names.ANNOTATION_SHARE_KEY)
    if not ka or ka != kb:
        return False
    pa = {(p.protocol or "TCP", p.port) for p in (a.spec.ports if a.spec else None) or []}
    pb = {(p.protocol or "TCP", p.port) for p in (b.spec.ports if b.spec else None) or []}
    return not pa & pb


@dataclass
class Counts:
    operations: int = 0
    kills: int = 0
    pauses: int = 0
    apiserver_restarts: int = 0
    etcd_restarts: int = 0
    duplicates: int = 0
    moved: int = 0
    stale_writes: int = 0
    missing: int = 0
    status_mismatch: int = 0
    takeovers: int = 0
    """Times another replica took the lease while the leader was paused (the fencing case)."""
    fenced: int = 0
    """Writes the resumed stale replica attempted and its fence refused (from its log)."""
    stale_exited: bool = False
    speaker_kills: int = 0
    unannounced: int = 0
    split: int = 0
    wrong_announcer: int = 0
    examples: list[str] = field(default_factory=list)

    def violations(self) -> int:
        return (self.duplicates + self.moved + self.stale_writes + self.missing + self.status_mismatch
                + self.unannounced + self.split + self.wrong_announcer)  # fmt: skip

    def note(self, what: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(what)


class Checker:
    """Watches Services (and the Lease) on its own connection; checks every event."""

    def __init__(self, kube: Client, counts: Counts) -> None:
        self.kube, self.counts = kube, counts
        self.services: dict[str, Service] = {}
        self.by_ip: dict[str, set[str]] = {}
        self.held: dict[str, tuple[tuple[str, ...], tuple[Any, ...]]] = {}
        """key → (its IPs, its request) as last seen."""
        self.changed_at: dict[str, float] = {}
        """key → when its request last changed (monotonic)."""
        self.managed: dict[str, dict[str, str]] = {}
        self.watch_stale: str | None = None
        """The paused replica's field manager, once another holds the lease."""
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, daemon=True)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _loop(self) -> None:
        rv: str | None = None
        while not self.stop.is_set():
            try:
                if rv is None:
                    listing = self.kube.list(Service, namespace=NS)
                    fresh = {_key(s): s for s in listing}
                    with self.lock:
                        self._snapshot(fresh)
                    rv = listing.resourceVersion  # type: ignore[attr-defined]
                for op, svc in self.kube.watch(Service, namespace=NS, resource_version=rv, timeout=30):
                    if self.stop.is_set():
                        return
                    rv = svc.metadata.resourceVersion if svc.metadata else rv
                    key = _key(svc)
                    with self.lock:
                        if op == "DELETED":
                            self._gone(key)
                        else:
                            self._see(key, svc)
            except ApiError as exc:
                if exc.status.code == 410:
                    rv = None  # history compacted: a fresh snapshot
                time.sleep(0.5)
            except Exception:  # the apiserver restarting: resume from the last event seen
                time.sleep(0.5)

    def _snapshot(self, fresh: dict[str, Service]) -> None:
        """A whole listing at once: every Service's IPs are updated before any duplicate is
        judged (a listing is one instant; checked one by one it would compare old with new)."""
        for key in set(self.services) - set(fresh):
            self._gone(key)
        for key, svc in fresh.items():
            self._see(key, svc, judge_duplicates=False)
        for ip, holders in self.by_ip.items():
            keys = sorted(holders)
            for i, a in enumerate(keys):
                for b in keys[i + 1 :]:
                    if not may_share(self.services[a], self.services[b]):
                        self.counts.duplicates += 1
                        self.counts.note(f"duplicate: {ip} held by {a} and {b} (in a listing)")

    def _gone(self, key: str) -> None:
        old = self.services.pop(key, None)
        for ip in ingress(old) if old is not None else ():
            self.by_ip.get(ip, set()).discard(key)
        self.held.pop(key, None)
        self.changed_at.pop(key, None)
        self.managed.pop(key, None)

    def _see(self, key: str, svc: Service, judge_duplicates: bool = True) -> None:
        self._fencing(key, svc)
        old = self.services.get(key)
        old_ips = ingress(old) if old is not None else ()
        for ip in old_ips:
            self.by_ip.get(ip, set()).discard(key)
        self.services[key] = svc
        ips, sig = ingress(svc), signature(svc)
        now = time.monotonic()
        last = self.held.get(key)
        if last is None or last[1] != sig:
            self.changed_at[key] = now  # a new request: its IP may change (or go) from now on
        deleting = bool(svc.metadata and svc.metadata.deletionTimestamp)
        answering = now - self.changed_at.get(key, float("-inf")) < REQUEST_GRACE
        if last is not None and last[0] and ips != last[0] and not deleting and not answering:
            self.counts.moved += 1
            self.counts.note(f"moved: {key} {last[0]} -> {ips or 'none'} with its request unchanged")
        self.held[key] = (ips, sig)
        for ip in ips:
            holders = self.by_ip.setdefault(ip, set())
            if judge_duplicates and ip not in old_ips:  # just assigned: its holders must be allowed to share
                for other_key in holders:
                    if not may_share(svc, self.services[other_key]):
                        self.counts.duplicates += 1
                        self.counts.note(f"duplicate: {ip} given to {key} while {other_key} holds it")
            holders.add(key)

    def _fencing(self, key: str, svc: Service) -> None:
        """A write refreshes its manager's managedFields time; another manager taking fields over
        only shrinks the entry. So a later time on the paused replica's entry is its write."""
        entries = {}
        for mf in (svc.metadata.managedFields if svc.metadata else None) or []:
            entries[f"{mf.manager}/{mf.subresource or ''}"] = str(mf.time)
        before = self.managed.get(key, {})
        stale = self.watch_stale
        if stale:
            for entry, stamp in entries.items():
                if entry.startswith(stale + "/") and before.get(entry) is not None and stamp > before[entry]:
                    self.counts.stale_writes += 1
                    self.counts.note(f"stale write by {stale} to {key} at {stamp}, after losing the lease")
        self.managed[key] = entries

    def settled(self, kube: Client) -> None:
        """The checks after the chaos: every Service that asks for an IP has one; Eip.status agrees."""
        services = {_key(s): s for s in kube.list(Service, namespace=NS)}
        held: dict[str, set[str]] = {}
        for key, svc in services.items():
            sig = signature(svc)
            wants = sig[0] == "LoadBalancer" and sig[2] == names.LB_VALUE and sig[3] in POOLS
            if wants and not ingress(svc):
                self.counts.missing += 1
                self.counts.note(f"missing: {key} asks {sig[3]} and has no IP")
            for ip in ingress(svc):
                held.setdefault(ip, set()).add(key.rsplit("/", 1)[0])
        recorded: dict[str, set[str]] = {}
        for eip in kube.list(Eip):
            if eip.metadata.name not in POOLS:
                continue  # the speakers' Layer2 pool: checked by `announcements`
            for ip, keys in ((eip.get("status") or {}).get("used") or {}).items():
                recorded.setdefault(ip, set()).update(k for k in str(keys).split(";") if k)
        for ip in set(held) | set(recorded):
            if held.get(ip, set()) != recorded.get(ip, set()):
                self.counts.status_mismatch += 1
                self.counts.note(
                    f"status: {ip} held by {sorted(held.get(ip, ()))}, recorded {sorted(recorded.get(ip, ()))}"
                )


# ---- the actors ----------------------------------------------------------------------------------


class Replica:
    def __init__(self, name: str, kc: Path) -> None:
        self.name, self.kc = name, kc
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(f"/tmp/openelb-chaos-{name}.log")

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "openelb", "controller", "--leader-elect", "--webhook-addr=",
                 "--metrics-addr=127.0.0.1:0", f"--namespace={CTL_NS}", f"--kubeconfig={self.kc}",
                 f"--field-manager=chaos-{self.name}", "--memberlist-secret="],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "POD_NAME": self.name},
            )  # fmt: skip

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)


class SpeakerActor:
    """`openelb speaker` in a node's namespace, as its DaemonSet Pod runs it (hostNetwork)."""

    def __init__(self, node: NodePlan, kc: Path) -> None:
        self.node, self.kc = node, kc
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(f"/tmp/openelb-chaos-speaker-{node.name}.log")

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                netns.exec_argv(self.node.netns, [sys.executable, "-m", "openelb", "speaker", f"--kubeconfig={self.kc}"]),  # noqa: E501
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "NODE_NAME": self.node.name},
            )  # fmt: skip

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)


def _mac(node: NodePlan) -> str:
    out = subprocess.run(netns.exec_argv(node.netns, ["cat", "/sys/class/net/eth0/address"]),
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.strip().lower()


def announcements(plan: LabPlan, kube: Client, counts: Counts) -> None:
    """After settling: each Layer2 Service's IP answered by exactly one node, the one its
    announcer annotation names (three ARP requests from the client, as the failover bench asks)."""
    macs = {_mac(n): n.name for n in plan.nodes}
    for svc in kube.list(Service, namespace=L2_NS):
        key, ips = _key(svc), ingress(svc)
        if not ips:
            counts.unannounced += 1
            counts.note(f"unannounced: {key} has no IP")
            continue
        owners = arp_owners(plan.client.netns, ips[0], macs)
        claimed = ((svc.metadata.annotations if svc.metadata else None) or {}).get(names.ANNOTATION_LAYER2_ANNOUNCER)
        if not owners:
            counts.unannounced += 1
            counts.note(f"unannounced: no node answers ARP for {ips[0]} ({key})")
        elif len(owners) > 1:
            counts.split += 1
            counts.note(f"split: {sorted(owners)} all answer ARP for {ips[0]} ({key})")
        elif claimed != next(iter(owners)):
            counts.wrong_announcer += 1
            counts.note(f"wrong announcer: {key} names {claimed}, {next(iter(owners))} answers for {ips[0]}")


def leader(kube: Client) -> str | None:
    try:
        lease = kube.get(Lease, names.LEADER_LEASE, namespace=CTL_NS)
    except ApiError:
        return None
    holder = lease.spec.holderIdentity if lease.spec else None
    return holder.split("_", 1)[0] if holder else None


def _port(i: int, rnd: random.Random) -> int:
    """Ports unique per Service (two choices each): sharing groups never conflict by the workload's
    own doing, so a Service without an IP after settling is the controller's fault."""
    return 1000 + i + 20000 * rnd.randrange(2)


def service_body(i: int, rnd: random.Random) -> dict[str, Any]:
    ann = {names.ANNOTATION_LB: names.LB_VALUE, names.ANNOTATION_POOL: rnd.choice(list(POOLS))}
    if rnd.random() < 0.2:
        ann[names.ANNOTATION_SHARE_KEY] = f"k{rnd.randrange(10)}"
    port = _port(i, rnd)
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": f"svc-{i}", "namespace": NS, "annotations": ann},
        "spec": {"type": "LoadBalancer", "selector": {"app": "none"}, "ports": [{"name": "p", "port": port}]},
    }  # fmt: skip


def operate(kube: Client, rnd: random.Random, services: int, present: set[int]) -> str:
    """One random operation on the Services; returns what it did."""
    i = rnd.randrange(services)
    name = f"svc-{i}"
    try:
        if i not in present:
            kube.create(Service.from_dict(service_body(i, rnd)))
            present.add(i)
            return "create"
        op = rnd.choice(("delete", "pool", "optout", "type", "ports", "share", "pool", "ports"))
        if op == "delete":
            kube.delete(Service, name, namespace=NS)
            present.discard(i)
        elif op == "pool":
            kube.patch(Service, name, {"metadata": {"annotations": {names.ANNOTATION_POOL: rnd.choice(list(POOLS))}}},
                       namespace=NS)  # fmt: skip
        elif op == "optout":
            svc = kube.get(Service, name, namespace=NS)
            on = ((svc.metadata.annotations if svc.metadata else None) or {}).get(names.ANNOTATION_LB)
            flip = {"metadata": {"annotations": {names.ANNOTATION_LB: None if on else names.LB_VALUE}}}
            kube.patch(Service, name, flip, namespace=NS)
        elif op == "type":
            svc = kube.get(Service, name, namespace=NS)
            to = "ClusterIP" if svc.spec and svc.spec.type == "LoadBalancer" else "LoadBalancer"
            kube.patch(Service, name, {"spec": {"type": to}}, namespace=NS)
        elif op == "ports":
            kube.patch(
                Service, name, {"spec": {"ports": [{"name": "p", "port": 80 + rnd.randrange(20)}]}}, namespace=NS
            )
        else:
            key = rnd.choice((None, f"k{rnd.randrange(10)}"))
            kube.patch(Service, name, {"metadata": {"annotations": {names.ANNOTATION_SHARE_KEY: key}}}, namespace=NS)
        return op
    except ApiError as exc:
        if exc.status.code == 404:
            present.discard(i)
        elif exc.status.code == 409:
            present.add(i)
        return "refused"
    except Exception:  # the apiserver restarting: the operation did not happen
        return "unavailable"


def run(
    services: int,
    seconds: float,
    rate: float,
    kill_every: float,
    settle: float,
    *,
    seed: int = 1,
    outage: float = 0,
    speaker_kill_every: float = 10,
) -> Counts:
    """The soak on a lab of its own (brought up here and always taken down)."""
    plan = lab.up(3)
    kc = Paths(lab.state_dir()).kubeconfig("admin")
    kube = sync_client(kc, field_manager="chaos-workload")
    counts = Counts()
    rnd = random.Random(seed)  # noqa: S311 - workload, not crypto
    replicas = {n: Replica(n, kc) for n in ("ctl-a", "ctl-b")}
    speakers = [SpeakerActor(n, kc) for n in plan.nodes]
    checker = Checker(sync_client(kc, field_manager="chaos-checker"), counts)
    try:
        for crd in crds.definitions():
            workloads.apply(kube, crd)
        workloads.poll("Eip API", lambda: list(kube.list(Eip)) is not None, 30)
        for ns in (NS, CTL_NS, L2_NS):
            workloads.ensure_namespace(kube, ns)
        pools = {**{name: {"address": cidr, "protocol": "bgp"} for name, cidr in POOLS.items()},
                 L2_POOL: {"address": L2_RANGE, "protocol": "layer2", "interface": "eth0"}}  # fmt: skip
        for name, spec in pools.items():
            eip = {"apiVersion": f"{names.GROUP}/{names.VERSION}", "kind": "Eip", "metadata": {"name": name},
                   "spec": spec}  # fmt: skip
            workloads.apply(kube, eip)
        for r in replicas.values():
            r.start()
        for sp in speakers:
            sp.start()
        workloads.poll("a leader", lambda: leader(kube) in replicas, 60)
        for i in range(L2_SERVICES):
            ann = {names.ANNOTATION_LB: names.LB_VALUE, names.ANNOTATION_POOL: L2_POOL}
            workloads.apply(kube, {"apiVersion": "v1", "kind": "Service",
                                   "metadata": {"name": f"l2-{i}", "namespace": L2_NS, "annotations": ann},
                                   "spec": {"type": "LoadBalancer", "selector": {"app": "none"},
                                            "ports": [{"name": "p", "port": 80}]}})  # fmt: skip
        checker.start()
        present: set[int] = set()
        say(f"creating {services // 2} Services")
        while len(present) < services // 2:
            i = rnd.randrange(services)
            if i not in present:
                with contextlib.suppress(ApiError):
                    kube.create(Service.from_dict(service_body(i, rnd)))
                present.add(i)
        say(
            f"chaos for {seconds:.0f} s at {rate:.0f} operations/s, leader killed every {kill_every:.0f} s, "
            f"a speaker every {speaker_kill_every:.0f} s"
        )
        start = time.monotonic()
        next_kill = start + kill_every
        next_speaker_kill = start + speaker_kill_every
        pause_at, pause_len = start + seconds * 0.1, 20.0
        api_at, etcd_at = start + seconds * 0.55, start + seconds * 0.8
        paused: Replica | None = None
        resumed_at: float | None = None
        pause_until = 0.0
        stale_replica: Replica | None = None
        stale_log_from = 0
        done_api = done_etcd = False
        while (now := time.monotonic()) < start + seconds:
            op = operate(kube, rnd, services, present)
            counts.operations += op not in ("refused", "unavailable")
            for r in replicas.values():  # a killed (or fenced and exited) replica comes back, as its Pod would
                if not r.alive() and r is not paused:
                    if checker.watch_stale == f"chaos-{r.name}":
                        checker.watch_stale = None  # the stale process is gone; a new one may lead later
                    r.start()
            for sp in speakers:  # ... and a killed speaker, as the DaemonSet's would
                if not sp.alive():
                    sp.start()
            if now >= next_speaker_kill:
                rnd.choice(speakers).stop()
                counts.speaker_kills += 1
                next_speaker_kill = now + speaker_kill_every
            current = leader(kube)
            if paused is None and resumed_at is None and now >= pause_at and current in replicas:
                paused = replicas[current]
                paused.signal(signal.SIGSTOP)
                counts.pauses += 1
                say(f"SIGSTOP the leader {current} for {pause_len:.0f} s (its lease is 15 s)")
                pause_until = now + pause_len
            elif paused is not None and now >= pause_until and (leader(kube) != paused.name or now > pause_until + 20):
                holder = leader(kube)
                if holder != paused.name:
                    checker.watch_stale = f"chaos-{paused.name}"
                    counts.takeovers += 1
                paused.signal(signal.SIGCONT)
                say(f"SIGCONT {paused.name}; the lease is {holder}'s: any write of {paused.name} now is stale")
                stale_log_from = paused.log.stat().st_size
                stale_replica = paused
                paused, resumed_at = None, now
            elif now >= next_kill and paused is None and current in replicas and now > (resumed_at or 0) + 10:
                replicas[current].stop()
                counts.kills += 1
                next_kill = now + kill_every
            elif not done_api and now >= api_at:
                done_api = True
                out = lab.restart("kube-apiserver", pause=outage)
                counts.apiserver_restarts += 1
                say(f"apiserver restarted ({out:.1f} s out)")
            elif not done_etcd and now >= etcd_at:
                done_etcd = True
                out = lab.restart("etcd")
                counts.etcd_restarts += 1
                say(f"etcd restarted ({out:.1f} s out)")
            time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - now)))
        if paused is not None:
            paused.signal(signal.SIGCONT)
        if stale_replica is not None:
            text = stale_replica.log.read_bytes()[stale_log_from:].decode(errors="replace")
            counts.fenced = text.count("refused a ")
            counts.stale_exited = "LostLeadership" in text or "could not renew lease" in text
        say(f"chaos over: {counts.operations} operations, {counts.kills} leader kills; settling {settle:.0f} s")
        for r in replicas.values():
            if not r.alive():
                r.start()
        for sp in speakers:
            if not sp.alive():
                sp.start()
        time.sleep(settle)
        checker.settled(kube)
        announcements(plan, kube, counts)
    finally:
        checker.stop.set()
        for r in replicas.values():
            r.signal(signal.SIGCONT)
            r.stop()
        for sp in speakers:
            sp.stop()
        lab.down(quiet=True)
    return counts


def report(c: Counts) -> str:
    lines = [
        f"operations {c.operations}, leader kills {c.kills}, pauses past the lease {c.pauses}, "
        f"apiserver restarts {c.apiserver_restarts}, etcd restarts {c.etcd_restarts}, speaker kills {c.speaker_kills}",
        f"fencing: lease taken over during the pause {c.takeovers}x; the resumed replica's writes refused by its "
        f"fence {c.fenced}, it stepped down {'yes' if c.stale_exited else 'no'}",
        f"violations: duplicates {c.duplicates}, moved {c.moved}, stale writes {c.stale_writes}, "
        f"missing {c.missing}, status mismatches {c.status_mismatch}; Layer2 (speakers): unannounced "
        f"{c.unannounced}, split {c.split}, wrong announcer {c.wrong_announcer} "
        f"-> {'PASS' if not c.violations() else 'FAIL'}",
    ]
    return "\n".join(lines + [f"  e.g. {e}" for e in c.examples])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--rate", type=float, default=30)
    ap.add_argument("--kill-every", type=float, default=5)
    ap.add_argument("--settle", type=float, default=30)
    ap.add_argument("--outage", type=float, default=0, help="seconds the apiserver stays down at its restart")
    ap.add_argument("--speaker-kill-every", type=float, default=10, help="seconds between speaker SIGKILLs")
    args = ap.parse_args()
    if lab.is_healthy(Paths(lab.state_dir())):  # its OpenELB would serve the soak's Services too
        sys.exit("a lab is up: the soak needs one of its own; run `openelb-lab down` first")
    counts = run(args.services, args.seconds, args.rate, args.kill_every, args.settle, outage=args.outage,
                 speaker_kill_every=args.speaker_kill_every)  # fmt: skip
    print(report(counts))
    sys.exit(1 if counts.violations() else 0)


if __name__ == "__main__":
    main()
