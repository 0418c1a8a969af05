"""BGP codec: round trips, packing, strict decoding, and ExaBGP as an independent decoder."""

from __future__ import annotations

import ipaddress
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openelb.protocols.bgp import codec as c

EXABGP = shutil.which("exabgp") or str(Path(sys.executable).parent / "exabgp")


def decode_all(data: bytes, add_path: frozenset[c.Family] = frozenset()) -> list[c.Message]:
    buf = bytearray(data)
    out = [c.decode(kind, body, add_path) for kind, body in c.split_messages(buf)]
    assert not buf
    return out


def test_open_round_trip_with_4_octet_asn() -> None:
    caps = c.Capabilities(
        families=frozenset({c.IPV4_UNICAST, c.IPV6_UNICAST}),
        as4=4200000001,
        route_refresh=True,
        graceful_restart=c.GracefulRestart(120, True, ((c.IPV4_UNICAST, True),)),
        add_path=((c.IPV4_UNICAST, c.ADD_PATH_SEND),),
    )
    raw = c.encode_open(c.Open(4200000001, 90, "192.0.2.1", caps))
    assert raw[19 + 1 : 19 + 3] == c.AS_TRANS.to_bytes(2, "big")  # My AS carries AS_TRANS
    (msg,) = decode_all(raw)
    assert msg == c.Open(4200000001, 90, "192.0.2.1", caps)


def test_keepalive_notification_refresh_round_trip() -> None:
    raw = (
        c.encode_keepalive()
        + c.encode_notification(c.Notification(6, 2, b"\x03bye"))
        + c.encode_route_refresh(c.IPV6_UNICAST)
    )
    ka, note, rr = decode_all(raw)
    assert isinstance(ka, c.Keepalive)
    assert note == c.Notification(6, 2, b"\x03bye") and note.describe().endswith(": bye")
    assert rr == c.RouteRefresh(c.IPV6_UNICAST)


prefixes_v4 = st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=1500, unique=True).map(
    lambda xs: [(x & 0xFFFF, ipaddress.ip_network(f"{ipaddress.IPv4Address(x)}/32")) for x in xs]
)
prefixes_v6 = st.lists(st.integers(0, 2**128 - 1), min_size=1, max_size=600, unique=True).map(
    lambda xs: [(x & 0xFFFF, ipaddress.ip_network(f"{ipaddress.IPv6Address(x)}/128")) for x in xs]
)


@settings(max_examples=40, deadline=None)
@given(st.one_of(prefixes_v4, prefixes_v6), st.booleans(), st.booleans())
def test_updates_pack_every_prefix_within_the_size_limit(prefixes: list, add_path: bool, withdraw: bool) -> None:
    fam = c.IPV4_UNICAST if prefixes[0][1].version == 4 else c.IPV6_UNICAST
    nh = "192.0.2.1" if fam == c.IPV4_UNICAST else "2001:db8::1"
    attrs = c.Attributes(nh, (65001, 4200000000), communities=(65001 << 16 | 1,), large_communities=((1, 2, 3),))
    if not add_path:
        prefixes = [(0, p) for _i, p in prefixes]
    if withdraw:
        msgs = list(c.encode_updates(fam, None, withdrawn=prefixes, add_path=add_path))
    else:
        msgs = list(c.encode_updates(fam, attrs, nlri=prefixes, add_path=add_path))
    assert all(len(m) <= c.MAX_LEN for m in msgs)
    decoded = decode_all(b"".join(msgs), frozenset({fam}) if add_path else frozenset())
    got = [x for m in decoded for x in (m.withdrawn if withdraw else m.nlri)]  # type: ignore[union-attr]
    assert got == prefixes
    if not withdraw:
        assert all(m.attrs == attrs and m.family == fam for m in decoded)  # type: ignore[union-attr]


def test_end_of_rib_markers() -> None:
    for fam in (c.IPV4_UNICAST, c.IPV6_UNICAST):
        (raw,) = c.encode_updates(fam, None)
        (msg,) = decode_all(raw)
        assert isinstance(msg, c.Update) and msg.end_of_rib and msg.family == fam


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 6))
def test_garbage_raises_only_bgp_error(body: bytes, kind: int) -> None:
    for add_path in (frozenset(), frozenset({c.IPV4_UNICAST, c.IPV6_UNICAST})):
        try:
            c.decode(kind, body, add_path)
        except c.BgpError as err:
            assert 1 <= err.code <= 6


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=19, max_size=300))
def test_garbage_framing_raises_only_bgp_error(data: bytes) -> None:
    buf = bytearray(c.MARKER + data[16:])
    try:
        for kind, body in c.split_messages(buf):
            c.decode(kind, body)
    except c.BgpError:
        pass


def test_truncated_update_is_a_notification_not_a_crash() -> None:
    (raw,) = c.encode_updates(
        c.IPV4_UNICAST, c.Attributes("192.0.2.1", (65001,)), [(0, ipaddress.ip_network("198.51.100.0/24"))]
    )
    body = raw[19:]
    for cut in range(len(body)):
        try:
            c.decode(c.UPDATE, body[:cut])
        except c.BgpError as err:
            assert err.code in (c.HEADER_ERROR, c.UPDATE_ERROR)


def exabgp_decode(raw: bytes, family: str, path_information: bool = False) -> dict:
    args = [EXABGP, "decode", "-f", family] + (["-i"] if path_information else []) + [raw.hex()]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["neighbor"]["message"]["update"]


@pytest.mark.skipif(not Path(EXABGP).exists(), reason="exabgp (dev dependency) not installed: run scripts/setup")
def test_exabgp_decodes_our_updates() -> None:
    v4 = [(0, ipaddress.ip_network("198.51.100.7/32")), (0, ipaddress.ip_network("198.51.100.9/32"))]
    (raw,) = c.encode_updates(c.IPV4_UNICAST, c.Attributes("192.0.2.1", (64513,), communities=(64513 << 16 | 7,)), v4)
    upd = exabgp_decode(raw, "ipv4 unicast")
    assert upd["attribute"]["origin"] == "igp"
    assert upd["attribute"]["as-path"]["0"]["value"] == [64513]
    assert upd["attribute"]["community"] == [[64513, 7]]
    assert [x["nlri"] for x in upd["announce"]["ipv4 unicast"]["192.0.2.1"]] == ["198.51.100.7/32", "198.51.100.9/32"]

    pid = c.fnv32a("192.0.2.1")
    (raw,) = c.encode_updates(
        c.IPV4_UNICAST, c.Attributes("192.0.2.1", ()), [(pid, ipaddress.ip_network("198.51.100.7/32"))], add_path=True
    )
    upd = exabgp_decode(raw, "ipv4 unicast", path_information=True)
    (entry,) = upd["announce"]["ipv4 unicast"]["192.0.2.1"]
    assert entry["nlri"] == "198.51.100.7/32"
    assert entry["path-information"] == str(ipaddress.IPv4Address(pid))

    v6 = [(0, ipaddress.ip_network("2001:db8:ff::7/128"))]
    (raw,) = c.encode_updates(c.IPV6_UNICAST, c.Attributes("2001:db8::1", (4200000001,), local_pref=100), v6)
    upd = exabgp_decode(raw, "ipv6 unicast")
    assert upd["attribute"]["as-path"]["0"]["value"] == [4200000001]
    assert upd["attribute"]["local-preference"] == 100
    assert [x["nlri"] for x in upd["announce"]["ipv6 unicast"]["2001:db8::1"]] == ["2001:db8:ff::7/128"]

    (raw,) = c.encode_updates(c.IPV6_UNICAST, None, withdrawn=v6)
    assert exabgp_decode(raw, "ipv6 unicast")["withdraw"]["ipv6 unicast"] == [{"nlri": "2001:db8:ff::7/128"}]


def test_fnv32a_matches_go_hash_fnv() -> None:
    # Values of Go's hash/fnv New32a(), which OpenELB uses for ADD-PATH path identifiers.
    assert c.fnv32a("") == 0x811C9DC5
    assert c.fnv32a("a") == 0xE40C292C
    assert c.fnv32a("foobar") == 0xBF9CF968


def _update_2byte(as_path: bytes, as4_path: bytes | None) -> bytes:
    attrs = bytes([0x40, 1, 1, 0])  # ORIGIN IGP
    attrs += bytes([0x40, 2, len(as_path)]) + as_path
    attrs += bytes([0x40, 3, 4]) + bytes([198, 51, 100, 1])
    if as4_path is not None:
        attrs += bytes([0xC0, 17, len(as4_path)]) + as4_path
    nlri = bytes([24, 203, 0, 113])
    return struct.pack("!H", 0) + struct.pack("!H", len(attrs)) + attrs + nlri


def test_an_empty_or_malformed_as4_path_from_a_2_octet_peer_is_discarded() -> None:
    """Issue 14 #10: an empty AS4_PATH made AS_PATH parse as 4-octet: NOTIFICATION 3/11."""
    two = bytes([2, 2]) + struct.pack("!HH", 65001, 23456)  # AS_SEQUENCE 65001 AS_TRANS
    for as4_path in (b"", bytes([2, 5, 0, 0])):  # empty; a segment longer than the attribute
        upd = c.decode_update(_update_2byte(two, as4_path), as4=False)
        assert upd.attrs is not None and upd.attrs.as_path == (65001, 23456)
    merged = c.decode_update(_update_2byte(two, bytes([2, 1]) + struct.pack("!I", 4200000001)), as4=False)
    assert merged.attrs is not None and merged.attrs.as_path == (65001, 4200000001)  # RFC 6793 §4.2.3
