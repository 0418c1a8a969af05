import json

import yaml

from openelb.status import PoolRow, ServiceRow, SessionRow, Snapshot, render

SNAP = Snapshot(
    pools=[PoolRow("eip-pool", "198.18.0.200-198.18.0.210", "IPv4", "layer2", 1, 11, True, False, True)],
    services=[
        ServiceRow("default", "web", ["198.18.0.200"], "eip-pool", "layer2", "node-3"),
        ServiceRow("default", "stuck", [], "", "", "", "no available eip was found containing the ip:[203.0.113.77]"),
        ServiceRow("default", "bgp", ["203.0.113.10"], "bgp-pool", "bgp", "node-1,node-2"),
    ],
    sessions=[SessionRow("node-1", "router", "198.18.0.2", "ESTABLISHED", "up", 2, "40s", "")],
)


def test_table_shows_usage_state_announcer_and_pending_reason() -> None:
    out = render(SNAP)
    assert "eip-pool (default)" in out and "1/11" in out and "ready" in out
    web = next(line for line in out.splitlines() if line.startswith("default/web"))
    assert "198.18.0.200" in web and "node-3" in web
    stuck = next(line for line in out.splitlines() if line.startswith("default/stuck"))
    assert "<pending>" in stuck and "203.0.113.77" in stuck
    bgp = next(line for line in out.splitlines() if line.startswith("default/bgp"))
    assert "node-1,node-2" in bgp
    session = out.split("BGP SESSIONS")[1].splitlines()[2].split()
    assert session[:4] == ["node-1", "router", "(198.18.0.2)", "ESTABLISHED"] and session[4] == "up"


def test_json_and_yaml_carry_the_same_facts() -> None:
    as_json = json.loads(render(SNAP, "json"))
    assert as_json == yaml.safe_load(render(SNAP, "yaml"))
    assert as_json["pools"][0]["usage"] == 1 and as_json["services"][0]["announcer"] == "node-3"
