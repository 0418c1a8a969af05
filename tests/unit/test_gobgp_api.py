"""GoBGP's own CLI against our read-only GoBGP API (no BGP session needed: the global table and
the refusals; sessions are checked against BIRD in tests/lab/test_speaker_bgp.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import subprocess
import sys
import time

import pytest

from openelb.speaker.bgp.config import GlobalConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*calls: tuple[str, ...]) -> list[tuple[int, str]]:
    from openelb.speaker.bgp import gobgp_api as g

    if shutil.which("gobgp") is None:
        pytest.fail("the gobgp CLI is missing: scripts/setup installs Debian's gobgpd")
    routes = {
        ipaddress.ip_network("198.51.100.10/32"): ("192.0.2.11", "192.0.2.12"),
        ipaddress.ip_network("198.51.100.11/32"): ("192.0.2.12",),
        ipaddress.ip_network("2001:db8::10/128"): ("2001:db8:1::11",),
    }
    since = {p: time.time() - 65 for p in routes}
    view = g.View(GlobalConfig(64512, "192.0.2.11", 179, (), True, 120), {}, routes, since)
    port = free_port()

    async def scenario() -> list[tuple[int, str]]:
        server = await g.serve(f"127.0.0.1:{port}", lambda: view)
        out = []
        try:
            for args in calls:
                p = await asyncio.create_subprocess_exec(
                    "gobgp", "-p", str(port), *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                )
                text, _ = await asyncio.wait_for(p.communicate(), 10)
                out.append((p.returncode or 0, text.decode()))
        finally:
            await server.stop(0)
        return out

    return asyncio.run(scenario())


def test_global_and_rib_as_gobgp_shows_them() -> None:
    (g, g_rc), (rib, rib_rc), (rib6, rib6_rc), (one, _), (summary, _) = [
        (text, rc)
        for rc, text in run_cli(
            ("global",), ("global", "rib"), ("global", "rib", "-a", "ipv6"), ("global", "rib", "198.51.100.11"),
            ("global", "rib", "summary"),
        )
    ]  # fmt: skip
    assert g_rc == rib_rc == rib6_rc == 0
    assert "AS:        64512" in g and "Router-ID: 192.0.2.11" in g
    lines = [line.split() for line in rib.splitlines() if line.startswith("*")]
    assert [(p[0], p[1], p[2]) for p in lines] == [
        ("*>", "198.51.100.10/32", "192.0.2.11"),
        ("*", "198.51.100.10/32", "192.0.2.12"),
        ("*>", "198.51.100.11/32", "192.0.2.12"),
    ]
    assert all("00:01:0" in line for line in rib.splitlines()[1:])  # the age of the announcement
    assert "2001:db8::10/128" in rib6 and "2001:db8:1::11" in rib6
    assert "198.51.100.11/32" in one and "198.51.100.10/32" not in one
    assert "Destination: 2, Path: 3" in summary


def test_every_changing_call_is_refused_with_what_to_edit() -> None:
    results = run_cli(
        ("neighbor", "add", "192.0.2.1", "as", "65000"),
        ("global", "rib", "add", "203.0.113.0/24"),
        ("global", "as", "65000", "router-id", "192.0.2.9"),
        ("neighbor", "del", "192.0.2.1"),
    )
    for rc, text in results:
        assert rc != 0 and "Unimplemented" in text and "BgpPeer" in text, text


def test_the_speaker_does_not_pay_for_grpc_unless_asked() -> None:
    code = "import sys, openelb.speaker.main, openelb.cli; sys.exit('grpc' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
