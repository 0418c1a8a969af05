"""`openelb lab supervise -- CMD...`: restart CMD whenever it exits, as the kubelet restarts a
DaemonSet pod's container (1 s, then back-off up to 10 s for a child that keeps dying within 3 s).
SIGTERM/SIGINT stop the child and the supervisor."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import FrameType


def supervise(argv: list[str]) -> int:
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    backoff = 1.0
    while not stopping:
        started = time.monotonic()
        child = subprocess.Popen(argv)
        code = child.wait()
        if stopping:
            break
        ran = time.monotonic() - started
        backoff = 1.0 if ran > 3 else min(backoff * 2, 10.0)
        print(
            f"[supervise] {argv[0]} exited with {code} after {ran:.1f}s; restarting in {backoff:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(backoff)
    if child and child.poll() is None:
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
    return 0
