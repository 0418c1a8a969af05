import sys
import time
from pathlib import Path

from openelb_lab import processes


def test_start_records_and_stop_kills_the_process_group(tmp_path: Path) -> None:
    d = processes.start(
        tmp_path, "sleeper", [sys.executable, "-c", "import time; print('hi', flush=True); time.sleep(60)"]
    )
    assert processes.is_running(d)
    deadline = time.monotonic() + 10
    while "hi" not in d.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [r.name for r in processes.recorded(tmp_path)] == ["sleeper"]
    assert processes.stop(tmp_path, d, timeout=5)
    assert not processes.is_running(d)
    assert processes.recorded(tmp_path) == []
    assert "hi" in d.log.read_text()  # the log survives the process


def test_a_recycled_pid_running_something_else_is_not_ours(tmp_path: Path) -> None:
    d = processes.start(tmp_path, "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    impostor = processes.Daemon("x", d.pid, ("/usr/bin/definitely-not-this",), d.log)
    assert not processes.is_running(impostor)
    processes.stop(tmp_path, d)


def test_stopping_a_dead_process_is_harmless(tmp_path: Path) -> None:
    d = processes.start(tmp_path, "quick", [sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while processes.is_running(d) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes.stop(tmp_path, d)


def test_stopping_an_old_daemon_keeps_its_successors_record(tmp_path: Path) -> None:
    old = processes.start(tmp_path, "speaker", [sys.executable, "-c", "import time; time.sleep(60)"])
    new = processes.start(tmp_path, "speaker", [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        processes.stop(tmp_path, old, timeout=5)
        assert [d.pid for d in processes.recorded(tmp_path)] == [new.pid]
        assert processes.is_running(new)
    finally:
        processes.stop(tmp_path, new, timeout=5)
    assert processes.recorded(tmp_path) == []


def test_a_daemon_still_in_its_wrappers_is_running_and_stop_kills_it(tmp_path: Path) -> None:
    """Right after start the PID still runs `sh` (as the lab's `unshare`/`ip netns exec` chain
    does): it is running already, so a stop at that moment does not leave it behind."""
    argv = ["sh", "-c", 'sleep 0.5; exec "$PROGRAM" -c "import time; time.sleep(60)"']
    d = processes.start(tmp_path, "wrapped", argv, env={"PROGRAM": sys.executable}, program=sys.executable)
    assert processes.is_running(d)
    assert processes.stop(tmp_path, d, timeout=5)
    time.sleep(0.8)  # past the moment it would have exec'd the program
    assert not processes.is_running(d)
    assert not Path(f"/proc/{d.pid}").exists() or "time.sleep(60)" not in Path(f"/proc/{d.pid}/cmdline").read_text()


def test_the_same_pid_started_at_another_time_is_not_ours(tmp_path: Path) -> None:
    d = processes.start(tmp_path, "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert d.start_time is not None
        recycled = processes.Daemon("x", d.pid, d.argv, d.log, d.program, d.start_time + 1)
        assert not processes.is_running(recycled)
    finally:
        processes.stop(tmp_path, d)
