"""Helpers for controller tests: controller processes, manifests, polling the API."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Service

from openelb.kube.resources import Eip
from openelb_lab import containers, lab, workloads
from openelb_lab.components import Paths
from openelb_lab.plan import LabPlan

NS = "openelb-system"
HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DaemonProcess:
    """A daemon a test starts and stops itself."""

    proc: subprocess.Popen[bytes]
    log: Path

    def report(self, lines: int = 15) -> str:
        """Whether it runs, and the end of its log: what a failed wait needs to say why."""
        code = self.proc.poll()
        state = "running" if code is None else f"exited with status {code}"
        try:
            tail = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            tail = [f"(log unreadable: {exc})"]
        return f"{state}; last lines of {self.log}:\n" + "\n".join(f"    {line}" for line in tail)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def alive(self) -> bool:
        return self.proc.poll() is None


class ControllerProcess(DaemonProcess):
    """`openelb controller` run as a real process against the lab apiserver."""

    def __init__(self, name: str, kubeconfig: Path, api_ip: str, webhook_port: int = 9443) -> None:
        self.name = name
        self.metrics_port = free_port()
        self.log = Path(f"/tmp/openelb-test-{name}-{os.getpid()}.log")
        argv = [
            sys.executable, "-m", "openelb", "controller",
            "--namespace", NS,
            f"--metrics-addr=127.0.0.1:{self.metrics_port}",
            f"--webhook-addr={api_ip}:{webhook_port}",
            "--webhook-ip", api_ip,
        ]  # fmt: skip
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": str(kubeconfig)}
            )


def apply_yaml(kube: Client, text: str, namespace: str | None = None) -> None:
    for doc in yaml.safe_load_all(text):
        if doc:
            if namespace and doc.get("kind") in ("Service", "Deployment"):
                doc.setdefault("metadata", {})["namespace"] = namespace
            workloads.apply(kube, doc)


def lease_holder(kube: Client) -> str | None:
    try:
        lease = kube.get(Lease, "openelb-controller", namespace=NS)
    except ApiError:
        return None
    return lease.spec.holderIdentity if lease.spec else None


def wait_webhook(kube: Client) -> None:
    """The webhook answers once a bogus Eip is refused by it (and not by a TLS or connection error)."""

    def refused() -> bool:
        try:
            kube.create(Eip({"metadata": {"name": "probe-" + uuid.uuid4().hex[:6]}, "spec": {"address": "nonsense"}}))
        except ApiError as exc:
            return "invalid eip address format" in str(exc.status.message)
        raise AssertionError("a malformed Eip was accepted")

    workloads.poll("webhook serving", refused, 30)


def eip(name: str, address: str, **spec: Any) -> dict[str, Any]:
    annotations = spec.pop("annotations", {})
    return {
        "apiVersion": "network.kubesphere.io/v1alpha2",
        "kind": "Eip",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"address": address, **spec},
    }


def lb_service(name: str, namespace: str, *, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "LoadBalancer",
        "selector": {"app": name},
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
    }
    body.update(spec)
    ann = {"lb.kubesphere.io/v1alpha1": "openelb"}
    ann.update(annotations or {})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "annotations": {k: v for k, v in ann.items() if v}},
        "spec": body,
    }


def ingress_ips(kube: Client, namespace: str, name: str) -> list[str]:
    svc = kube.get(Service, name, namespace=namespace)
    lb = svc.status.loadBalancer if svc.status else None
    return [i.ip for i in (lb.ingress if lb else None) or [] if i.ip]


def wait_ips(kube: Client, namespace: str, name: str, count: int = 1, timeout: float = 20) -> list[str]:
    return workloads.poll(  # type: ignore[no-any-return]
        f"{count} ingress IP(s) on {namespace}/{name}",
        lambda: (ips := ingress_ips(kube, namespace, name)) and len(ips) == count and ips,
        timeout,
    )


def events(kube: Client, namespace: str, name: str) -> list[tuple[str, str, str]]:
    from lightkube.resources.core_v1 import Event

    out = []
    for ev in kube.list(Event, namespace=namespace, fields={"involvedObject.name": name}):
        out.append((ev.type or "", ev.reason or "", ev.message or ""))
    return out


def wait_event(kube: Client, namespace: str, name: str, reason: str, contains: str = "", timeout: float = 20) -> str:
    def find() -> str | None:
        for _t, r, msg in events(kube, namespace, name):
            if r == reason and contains in msg:
                return msg
        return None

    return workloads.poll(f"event {reason} on {name}", find, timeout)  # type: ignore[no-any-return]


def eip_status(kube: Client, name: str) -> dict[str, Any]:
    return dict(kube.get(Eip, name).get("status") or {})


def delete_eip(kube: Client, name: str, timeout: float = 30) -> None:
    """Delete an Eip, first deleting the Services that hold its IPs.

    Eip status is written at most once a second, so the webhook may name a Service that is
    already gone for a moment: read the holders again on every try.
    """

    def attempt() -> bool:
        try:
            used = dict((kube.get(Eip, name).get("status") or {}).get("used") or {})
        except ApiError as exc:
            if exc.status.code == 404:
                return True
            raise
        for keys in used.values():
            for key in keys.split(";"):
                svc_ns, svc_name = key.split("/", 1)
                with contextlib.suppress(ApiError):
                    kube.delete(Service, svc_name, namespace=svc_ns)
        try:
            kube.delete(Eip, name)
        except ApiError as exc:
            if exc.status.code == 404:
                return True
            raise
        return True

    workloads.poll(f"Eip {name} deleted", attempt, timeout)


def settle(seconds: float = 1.0) -> None:
    time.sleep(seconds)


class SpeakerProcess(DaemonProcess):
    """`openelb speaker` in a node's namespace, as the DaemonSet pod (hostNetwork) would run it."""

    def __init__(self, node: str, netns: str, kubeconfig: Path, *extra: str, tag: str = "") -> None:
        self.node = node
        self.netns = netns
        self.log = Path(f"/tmp/openelb-test-speaker-{node}{tag}-{os.getpid()}.log")
        argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "openelb", "speaker", f"--kubeconfig={kubeconfig}"]
        argv += extra
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "NODE_NAME": node}
            )


def openelb_processes(role: str | None = None) -> list[tuple[str, str, str]]:
    """(pid, command line, uid) of every OpenELB controller and speaker on the machine (or of
    `role` only), from the image's containers or this checkout (/proc: `ps` truncates)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            uid = str(proc.stat().st_uid)
        except OSError:
            continue
        found_role = containers.openelb_role(argv)
        if found_role in ((role,) if role else ("controller", "speaker")):
            found.append((proc.name, " ".join(argv), uid))
    return found


def wait_speakers(procs: dict[str, SpeakerProcess], what: str, ready: Callable[[], bool], timeout: float) -> None:
    """Poll `ready` until true; fail at once when a speaker exits, and on failure show every
    speaker's state and log (a speaker that could not start says why there, e.g. a port taken)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline and all(p.alive() for p in procs.values()):
        try:
            if ready():
                return
        except Exception as exc:
            last = exc
        time.sleep(0.25)
    reports = "\n".join(f"speaker {name}: {p.report()}" for name, p in procs.items())
    raise AssertionError(f"{what}: not reached in {timeout:.0f}s (last error: {last})\n{reports}")


@contextlib.contextmanager
def running_speakers(lab_plan: LabPlan, *extra: str, tag: str = "") -> Iterator[dict[str, SpeakerProcess]]:
    """A speaker on every lab node, up and hearing each other; all stopped afterwards."""
    kc = Paths(lab.state_dir()).kubeconfig("admin")
    procs = {n.name: SpeakerProcess(n.name, n.netns, kc, *extra, tag=tag) for n in lab_plan.nodes}
    try:
        wait_live_peers(procs, [str(n.lan_v4) for n in lab_plan.nodes])
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def wait_live_peers(procs: dict[str, SpeakerProcess], addresses: list[str], timeout: float = 30) -> None:
    """Every speaker serves its metrics and hears every other one as ALIVE."""

    def ready() -> bool:
        urls = [f"http://{a}:50053/metrics" for a in addresses]
        return all(scrape(u).get(("openelb_speaker_live_peers", ())) == len(addresses) for u in urls)

    wait_speakers(procs, "all speakers up and hearing each other", ready, timeout)


def in_netns(netns: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def arping_macs(netns: str, ip: str, count: int = 3, wait: float = 3) -> list[str]:
    """MACs that answered ARP for `ip` (arping 2.x), waiting at most `wait` seconds."""
    out = in_netns(netns, "arping", "-c", str(count), "-w", str(wait), "-I", "eth0", ip).stdout
    macs = []
    for line in out.splitlines():
        if "from" in line:
            for word in line.replace("[", " ").replace("]", " ").replace("(", " ").split():
                if word.count(":") == 5:
                    macs.append(word.lower())
    return macs


def ndisc_mac(netns: str, ip: str) -> str | None:
    out = in_netns(netns, "ndisc6", "-1", "-r", "3", ip, "eth0").stdout
    for line in out.splitlines():
        if line.startswith("Target link-layer address:"):
            return line.split(":", 1)[1].strip().lower()
    return None


def iface_mac(netns: str, dev: str = "eth0") -> str:
    return in_netns(netns, "cat", f"/sys/class/net/{dev}/address").stdout.strip().lower()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus samples by (name, sorted labels)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


PROBER = Path(__file__).resolve().parents[2] / "bench" / "prober.py"


def probe_during(netns: str, ip: str, seconds: float, action: Callable[[], object]) -> tuple[int, int]:
    """Request http://ip/ every 10 ms from `netns` for `seconds` while `action` runs (after 1 s);
    (successes, failures)."""
    import json

    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, str(PROBER), ip, str(seconds)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        action()
        out, _ = proc.communicate(timeout=seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    got = json.loads(out)
    return len(got["oks"]), len(got["fails"])


def apiserver_outage(kube: Client, controller: dict[str, Any], seconds: float) -> None:
    """Stop the lab's apiserver for `seconds`, then bring back what its Deployment would: a
    controller that lost its lease meanwhile exits (by design) and is started again here."""
    lab.restart("kube-apiserver", pause=seconds)
    time.sleep(1.0)
    if not any(p.alive() for p in controller["procs"]):
        controller["start"](f"ctl-after-outage-{uuid.uuid4().hex[:4]}")
        workloads.poll("a controller leads again", lambda: lease_holder(kube) is not None, 60)
    wait_webhook(kube)
