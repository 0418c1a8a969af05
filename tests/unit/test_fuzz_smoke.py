"""Every fuzz target for a few seconds on its seed corpus (issue 14): a regression finds what a
long run found once. Long runs: `bench/fuzz/run.py --seconds N` (README)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[2] / "bench" / "fuzz" / "run.py"
sys.path.insert(0, str(RUN.parent))
import targets  # noqa: E402


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_fuzz_target_runs_clean(name: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(RUN), "--seconds", "2", name],
        capture_output=True, text=True, timeout=120, check=False,
        env={"OPENELB_FUZZ_CORPUS": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "targets clean" in out.stdout


def test_seeds_pass_their_own_targets() -> None:
    for name, fn in targets.TARGETS.items():
        for data in targets.seeds(name):
            fn(data)
