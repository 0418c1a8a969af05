"""BgpConf and BgpPeer: the range of every field we act on, and their validation — one source for
the CRD schemas (`kubectl apply` refuses with the schema's message), the webhook, and the
speaker (a value that still gets through, e.g. with the webhook off, fails only that peer with
a Warning Event, never an encoder or a timer).

Ranges come from the protocols: AS numbers are 4 octets (RFC 6793) and 0 is reserved; hold time
0 or at least 3 s (RFC 4271 §4.2), keepalive at most a third of the largest hold time; the GR
restart time is 12 bits (RFC 4724); TTLs are one octet; BFD's intervals travel in microseconds in
32 bits and its multiplier in 8 (RFC 5880) — 60 s is the longest interval we accept, as MetalLB;
the TCP-MD5 key is at most 80 bytes (RFC 2385, Linux TCP_MD5SIG_MAXKEYLEN).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

MAX_AS = 2**32 - 1

BGPCONF_INTS: dict[str, tuple[int, int]] = {
    "as": (1, MAX_AS),
    "listenPort": (-1, 65535),
    "gracefulRestart.restartTime": (0, 4095),
}
BGPPEER_INTS: dict[str, tuple[int, int]] = {
    "conf.peerAs": (1, MAX_AS),
    "conf.localAs": (0, MAX_AS),
    "ebgpMultihop.multihopTtl": (1, 255),
    "transport.remotePort": (0, 65535),
    "bfd.minRx": (1, 60000),
    "bfd.minTx": (1, 60000),
    "bfd.multiplier": (1, 255),
}
BGPPEER_TIMERS: dict[str, tuple[int, int]] = {
    "timers.config.holdTime": (0, 65535),
    "timers.config.keepaliveInterval": (0, 21845),
    "timers.config.connectRetry": (0, 65535),
}
"""Strings in OpenELB's CRD (GoBGP's timers), whole seconds here."""
MAX_PASSWORD = 80
MAX_ADDRESSES = 16
MAX_NAME = 253
"""Longest string field we read (a DNS name): nothing unbounded is echoed back."""


def _get(spec: Mapping[str, Any], path: str) -> Any:
    cur: Any = spec
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_int(spec: Mapping[str, Any], path: str, lo: int, hi: int, *, string: bool = False) -> str | None:
    value = _get(spec, path)
    if value is None or (string and value == ""):
        return None
    if string and isinstance(value, str):
        if not value.isdigit() or len(value) > 10:
            return f"spec.{path}: {_shown(value)} must be a whole number of seconds ({lo}..{hi})"
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        if hi == MAX_AS:
            return f"spec.{path} must be an AS number between {lo} and {hi} (not {_shown(value)})"
        return f"spec.{path}: {_shown(value)} is out of range ({lo}..{hi})"
    return None


def unicast(address: Any) -> str | None:
    """Why `address` cannot be a BGP neighbor or listen address, or None."""
    if not isinstance(address, str) or len(address) > 45:
        return f"{_shown(address)} is not an IP address"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{_shown(address)} is not an IP address"
    if ip.is_unspecified or ip.is_multicast or (ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255")):
        return f"{address} is not a unicast address"
    return None


def validate_bgpconf(spec: Any) -> list[str]:
    if not isinstance(spec, Mapping):
        return ["spec must be an object"]
    problems = [p for path, (lo, hi) in BGPCONF_INTS.items() if (p := _check_int(spec, path, lo, hi))]
    if spec.get("as") is None:
        problems.append(f"spec.as must be an AS number between 1 and {MAX_AS} (the speakers' AS)")
    per_rack = spec.get("asPerRack")
    if isinstance(per_rack, Mapping):
        for rack, asn in list(per_rack.items())[:64]:
            if isinstance(asn, bool) or not isinstance(asn, int) or not 1 <= asn <= MAX_AS:
                problems.append(f"spec.asPerRack.{_shown(rack)}: {_shown(asn)} is not an AS number (1..{MAX_AS})")
    rid = spec.get("routerId")
    if rid not in (None, ""):
        try:
            addr = ipaddress.IPv4Address(rid)
            if addr.is_unspecified or addr.is_multicast or str(addr) == "255.255.255.255":
                problems.append(f"spec.routerId {rid} cannot be a BGP identifier (RFC 6286: nonzero, unicast)")
        except (ValueError, TypeError):
            problems.append(f"spec.routerId {_shown(rid)} must be an IPv4 address (or empty for the node's IP)")
    addrs = spec.get("listenAddresses")
    if addrs is not None:
        if not isinstance(addrs, list) or len(addrs) > MAX_ADDRESSES:
            problems.append(f"spec.listenAddresses must be a list of at most {MAX_ADDRESSES} IP addresses")
        else:
            wildcards = ("0.0.0.0", "::")  # noqa: S104 - "every address" is a valid listen address
            problems += [f"spec.listenAddresses: {why}" for a in addrs if a not in wildcards and (why := unicast(a))]
    return problems


def validate_bgppeer(spec: Any) -> list[str]:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("conf"), Mapping):
        return ["spec.conf is required (peerAs and neighborAddress)"]
    problems = [p for path, (lo, hi) in BGPPEER_INTS.items() if (p := _check_int(spec, path, lo, hi))]
    problems += [p for path, (lo, hi) in BGPPEER_TIMERS.items() if (p := _check_int(spec, path, lo, hi, string=True))]
    conf = spec["conf"]
    if conf.get("peerAs") is None:
        problems.append(f"spec.conf.peerAs must be an AS number between 1 and {MAX_AS} (the peer's AS)")
    why = unicast(conf.get("neighborAddress"))
    if why:
        problems.append(f"spec.conf.neighborAddress {why}")
    hold = _get(spec, "timers.config.holdTime")
    if isinstance(hold, str) and hold.isdigit() and int(hold) in (1, 2):
        problems.append("spec.timers.config.holdTime: 1 and 2 are not allowed (0, or 3..65535: RFC 4271)")
    password = conf.get("authPassword")
    if password is not None and (not isinstance(password, str) or len(password.encode()) > MAX_PASSWORD):
        problems.append(f"spec.conf.authPassword must be a string of at most {MAX_PASSWORD} bytes (TCP-MD5)")
    families = spec.get("afiSafis")
    if families is not None and (not isinstance(families, list) or len(families) > 8):
        problems.append("spec.afiSafis must be a list of at most 8 families")
    elif isinstance(families, list):
        for i, f in enumerate(families):
            p = _check_int(f if isinstance(f, Mapping) else {}, "addPaths.config.sendMax", 0, 255)
            if p:
                problems.append(p.replace("spec.", f"spec.afiSafis[{i}].", 1))
    return problems
