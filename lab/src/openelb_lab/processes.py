"""Start lab daemons detached from the caller and stop exactly those, by recorded PID.

`lab up` returns while etcd, the control plane, kube-proxies and node agents keep running, so
each is started in its own session with its log in the state directory and its PID in a pidfile.
`down` signals those process groups only (never processes found by name), after checking that the
PID is still the process that was started (its start time, recorded with it), so a recycled PID is
never killed. The start time, not the command line, is what identifies it: a just-started daemon is
still in `fork` or in its wrappers (`unshare`, `sh`, `ip netns exec`) before it execs the program,
and must count as running then too, or a stop right after a start would leave it behind.
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
    start_time: int | None = None
    """The PID's start time (clock ticks after boot, /proc/PID/stat); None in records of old labs."""


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
    st = _stat(proc.pid)
    daemon = Daemon(name, proc.pid, tuple(argv), log, program, st[1] if st else None)
    record = {"pid": proc.pid, "argv": list(argv), "program": program, "start_time": daemon.start_time}
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
        started = data.get("start_time")
        program = str(data.get("program") or "")
        out.append(Daemon(f.stem, int(data["pid"]), tuple(data["argv"]), log, program, started))
    return out


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of a PID, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # fields from the 3rd (state) on; `comm` may hold spaces
    return fields[0], int(fields[19])


def is_running(d: Daemon) -> bool:
    """True when the PID is alive and still the process that was started."""
    st = _stat(d.pid)
    if st is None:
        return False
    if st[0] == "Z":
        with contextlib.suppress(ChildProcessError):  # a zombie child of ours: reap it
            os.waitpid(d.pid, os.WNOHANG)
        return False
    if d.start_time is not None:
        return st[1] == d.start_time
    try:  # a record without start time: compare the program, as labs before it did
        cmd = [a for a in Path(f"/proc/{d.pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a]
    except OSError:
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
