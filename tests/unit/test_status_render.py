import json

import yaml

from openelb.status import PoolRow, ServiceRow, Snapshot, render

SNAP = Snapshot(
    pools=[PoolRow("eip-pool", "198.18.0.200-198.18.0.210", "IPv4", "layer2", 1, 11, True, False, True)],
    services=[
        ServiceRow("default", "web", ["198.18.0.200"], "eip-pool", "layer2", "node-3"),
        ServiceRow("default", "stuck", [], "", "", "", "no available eip was found containing the ip:[203.0.113.77]"),
    ],
)


def test_table_shows_usage_state_announcer_and_pending_reason() -> None:
    out = render(SNAP)
    assert "eip-pool (default)" in out and "1/11" in out and "ready" in out
    web = next(line for line in out.splitlines() if line.startswith("default/web"))
    assert "198.18.0.200" in web and "node-3" in web
    stuck = next(line for line in out.splitlines() if line.startswith("default/stuck"))
    assert "<pending>" in stuck and "203.0.113.77" in stuck


def test_json_and_yaml_carry_the_same_facts() -> None:
    as_json = json.loads(render(SNAP, "json"))
    assert as_json == yaml.safe_load(render(SNAP, "yaml"))
    assert as_json["pools"][0]["usage"] == 1 and as_json["services"][0]["announcer"] == "node-3"
