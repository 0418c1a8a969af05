"""Thin wrappers over iproute2 for the lab's namespaces and links.

The lab shells out to `ip` rather than speaking netlink: these are one-off setup steps, `ip -batch`
makes them cheap, and a failing command's stderr is exactly the error a user can act on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterable, Sequence

from openelb_lab.plan import PREFIX


class LabCommandError(RuntimeError):
    """A system command the lab ran failed; the message carries the command and its stderr."""


def run(argv: Sequence[str], *, input_text: str | None = None, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(list(argv), input=input_text, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        shown = " ".join(argv)
        if input_text:
            shown += f" <<< {input_text.strip()[:400]!r}"
        raise LabCommandError(f"`{shown}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def ip_batch(commands: Iterable[str], netns: str | None = None) -> None:
    """Run several `ip` commands in one process (optionally inside a namespace)."""
    lines = "\n".join(commands) + "\n"
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    run(argv, input_text=lines)


def list_netns() -> list[str]:
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def lab_netns() -> list[str]:
    """Every namespace that belongs to the lab (by its name prefix), pods included."""
    return [n for n in list_netns() if n.startswith(f"{PREFIX}-")]


def add_netns(name: str, *, forwarding: bool = False) -> None:
    """Create a namespace with loopback up and IPv6 DAD off (lab addresses are unique by plan)."""
    run(["ip", "netns", "add", name])
    ip_batch(["link set lo up"], netns=name)
    settings = [
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
        "net.ipv6.conf.all.keep_addr_on_down=1",
    ]
    if forwarding:
        settings += ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]
    sysctl(name, settings)


def sysctl(netns: str, settings: Sequence[str]) -> None:
    run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", *settings])


def del_netns(name: str) -> None:
    """Delete a namespace after killing whatever still runs inside it."""
    for pid in netns_pids(name):
        kill_quietly(pid)
    run(["ip", "netns", "del", name], check=False)


def netns_pids(name: str) -> list[int]:
    out = run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def link_exists(name: str, netns: str | None = None) -> bool:
    argv = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", name]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs `argv` inside `netns`."""
    return ["ip", "netns", "exec", netns, *argv]
