"""The chaos soak, reduced for CI (`bench/chaos.py` with smaller figures), on a lab of its own:
two controller replicas, 300 Services churned at 20 operations/s for 60 s, the leader killed every
8 s, once paused past its lease (another takes over; the resumed one must not write), the
apiserver and etcd restarted. An independent checker must count no violation at all."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import chaos  # the benchmark's own run, with CI's sizes

pytestmark = [pytest.mark.root, pytest.mark.k8s_lab]


@pytest.mark.timeout(600)
def test_no_violation_under_kills_pauses_and_restarts(own_lab: None) -> None:
    counts = chaos.run(services=300, seconds=60, rate=20, kill_every=8, settle=20)
    print(chaos.report(counts))
    assert counts.operations >= 400, f"the churn did not happen: {counts.operations} operations"
    assert counts.kills >= 2 and counts.apiserver_restarts == 1 and counts.etcd_restarts == 1
    assert counts.takeovers == 1, "the paused leader's lease was not taken over: fencing was not exercised"
    assert counts.stale_exited, "the resumed stale leader did not step down"
    assert counts.violations() == 0, chaos.report(counts)
