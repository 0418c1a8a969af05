"""The speakers at scale, reduced for CI (`bench/speaker_scale.py` with smaller figures): a lab of
its own after the shared one is down (`own_lab`), 12 speakers on 3 full and 9 light nodes, 2,000
LoadBalancer Services over a Layer2 and a BGP pool, 60 s of Service and EndpointSlice churn, then
power-offs. Nothing fails during the churn, so no speaker may expire a peer and no Layer2 IP may
change owner except through the Local endpoints the churn moves; power-off failover stays within the
bound the 3-node failover test holds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import speaker_scale  # the benchmark's own run, with CI's sizes

pytestmark = [pytest.mark.root, pytest.mark.k8s_lab]

NODES = int(os.environ.get("OPENELB_TEST_CHURN_NODES", "12"))
SERVICES = int(os.environ.get("OPENELB_TEST_CHURN_SERVICES", "2000"))
CHURN = float(os.environ.get("OPENELB_TEST_CHURN_SECONDS", "60"))
FAILOVER_BOUND = 1.5  # seconds, as tests/lab/test_speaker_layer2.py's power-off


@pytest.mark.timeout(1500)
def test_speakers_under_churn_change_nothing_and_fail_over_in_time(own_lab: None) -> None:
    figures = speaker_scale.run(NODES, SERVICES, CHURN, idle=10, runs=3)
    figures.report()
    assert figures.changes >= CHURN * 10, f"the churn did not happen: {figures.changes} changes"
    assert figures.expired == 0, f"{figures.expired:.0f} peer expirations while nothing failed"
    assert figures.moves <= figures.slice_changes, (
        f"{figures.moves:.0f} owner moves, more than the {figures.slice_changes} endpoint moves that may cause them"
    )
    assert len(figures.recovered()) == len(figures.outages), f"failovers that never happened: {figures.outages}"
    assert figures.failover_p99() < FAILOVER_BOUND, f"power-off failover: {figures.outages}"
    assert max(figures.cpu.values()) < 0.10, f"speaker CPU when idle: {figures.cpu}"
