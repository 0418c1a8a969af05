"""Start lab daemons detached from the caller and stop exactly those, by recorded PID.

`lab up` returns while etcd, the control plane, kube-proxies and node agents keep running, so
each is started in its own session with its log in the state directory and its PID in a pidfile.
`down` signals those process groups only (never processes found by name), after checking that the
PID still runs the command that was recorded, so a recycled PID is never killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Daemon:
    name: str
    pid: int
    argv: tuple[str, ...]
    log: Path
    program: str = ""
    """The program the PID ends up running after wrappers exec it (default: from `argv`)."""


def _pid_dir(state: Path) -> Path:
    d = state / "pids"
    d.mkdir(parents=True, exist_ok=True)
    return d


def start(
    state: Path,
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    inherit_env: bool = True,
    program: str = "",
) -> Daemon:
    """Start `argv` detached; stdout and stderr go to `<state>/logs/<name>.log`. Without
    `inherit_env` the process sees `env` alone (a container's environment)."""
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**(os.environ if inherit_env else {}), **(env or {})},
        )
    daemon = Daemon(name, proc.pid, tuple(argv), log, program)
    record = {"pid": proc.pid, "argv": list(argv), "program": program}
    (_pid_dir(state) / f"{name}.json").write_text(json.dumps(record))
    return daemon


def recorded(state: Path) -> list[Daemon]:
    out = []
    for f in sorted(_pid_dir(state).glob("*.json")) if state.exists() else []:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        log = state / "logs" / f"{f.stem}.log"
        out.append(Daemon(f.stem, int(data["pid"]), tuple(data["argv"]), log, str(data.get("program") or "")))
    return out


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        with contextlib.suppress(ChildProcessError):  # a zombie child of ours: reap it
            os.waitpid(pid, os.WNOHANG)
        return None
    return [a for a in raw.decode(errors="replace").split("\0") if a]


def is_running(d: Daemon) -> bool:
    """True when the PID is alive and still runs the recorded program."""
    cmd = _cmdline(d.pid)
    if not cmd:
        return False
    # `ip netns exec NS prog ...` execs into prog: compare on the program's own name.
    wanted = Path(d.program or d.argv[_program_index(d.argv)]).name
    return any(Path(arg).name == wanted for arg in cmd[:6])


def _program_index(argv: Sequence[str]) -> int:
    return 4 if len(argv) > 4 and argv[:3] == ("ip", "netns", "exec") else 0


def stop(state: Path, d: Daemon, timeout: float = 10.0) -> bool:
    """Stop one daemon (its whole process group); True when it was running."""
    pidfile = _pid_dir(state) / f"{d.name}.json"
    was_running = is_running(d)
    if was_running:
        _signal_group(d.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and is_running(d):
            time.sleep(0.05)
        if is_running(d):
            _signal_group(d.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and is_running(d):
                time.sleep(0.05)
    # Only our own record: the name may already belong to a successor (a restarted container).
    with contextlib.suppress(OSError, ValueError, KeyError):
        if int(json.loads(pidfile.read_text())["pid"]) == d.pid:
            pidfile.unlink()
    return was_running


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
