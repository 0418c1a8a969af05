"""VRRPv3 codec and state machine (RFC 5798), without a network: a simulated segment delivers
every advert to every other router at once."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openelb.protocols import vrrp
from openelb.protocols.vrrp import Advert, Event, State, VirtualRouter

V4 = (ipaddress.IPv4Address("198.18.40.1"), ipaddress.IPv4Address("198.18.40.2"))
SRC4, SRC6 = ipaddress.IPv4Address("198.51.100.11"), ipaddress.IPv6Address("fe80::11")


def test_encode_decode_round_trip_and_checksum_over_the_pseudo_header() -> None:
    adv = Advert(42, 200, 10, V4)
    wire = adv.encode(SRC4, vrrp.GROUP_V4)
    assert wire[0] == 0x31 and wire[1] == 42 and wire[2] == 200 and wire[3] == 2
    assert int.from_bytes(wire[4:6], "big") == 10 and len(wire) == 8 + 8
    assert vrrp.decode(wire, SRC4, vrrp.GROUP_V4) == adv
    # the checksum covers the pseudo-header: the same bytes from another source are refused
    with pytest.raises(vrrp.VrrpError, match="checksum"):
        vrrp.decode(wire, ipaddress.IPv4Address("198.51.100.12"), vrrp.GROUP_V4)
    v6 = Advert(7, 100, 100, (ipaddress.IPv6Address("2001:db8::40"),))
    assert vrrp.decode(v6.encode(SRC6, vrrp.GROUP_V6), SRC6, vrrp.GROUP_V6) == v6


def test_a_known_packet_decodes() -> None:
    # VRRPv3 IPv4 advert, VRID 51, priority 100, 1 s, address 192.0.2.10, from 192.0.2.1,
    # checksum computed by hand over the pseudo-header (192.0.2.1 -> 224.0.0.18, proto 112, len 12).
    src = ipaddress.IPv4Address("192.0.2.1")
    head = bytes([0x31, 51, 100, 1, 0x00, 100])
    body = ipaddress.IPv4Address("192.0.2.10").packed
    words = [0xC000, 0x0201, 0xE000, 0x0012, 0x0070, 0x000C, 0x3133, 0x6401, 0x0064, 0xC000, 0x020A]
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    wire = head + (~total & 0xFFFF).to_bytes(2, "big") + body
    assert vrrp.decode(wire, src, vrrp.GROUP_V4) == Advert(51, 100, 100, (ipaddress.IPv4Address("192.0.2.10"),))
    assert Advert(51, 100, 100, (ipaddress.IPv4Address("192.0.2.10"),)).encode(src, vrrp.GROUP_V4) == wire


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda b: bytes([0x21]) + b[1:], "version 2"),
        (lambda b: bytes([0x32]) + b[1:], "type 2"),
        (lambda b: b[:5], "shorter"),
        (lambda b: b[:3] + bytes([9]) + b[4:], "9 addresses"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum"),
    ],
)
def test_bad_adverts_are_refused_with_a_reason(mutate: object, why: str) -> None:
    wire = Advert(42, 200, 10, V4).encode(SRC4, vrrp.GROUP_V4)
    with pytest.raises(vrrp.VrrpError, match=why):
        vrrp.decode(mutate(wire), SRC4, vrrp.GROUP_V4)  # type: ignore[operator]


@given(st.binary(max_size=64))
def test_garbage_raises_only_vrrp_errors(data: bytes) -> None:
    with contextlib.suppress(vrrp.VrrpError):
        vrrp.decode(data, SRC4, vrrp.GROUP_V4)


class Segment:
    """Routers on one link; `step` advances the clock to the next deadline and delivers adverts."""

    def __init__(self, priorities: dict[str, int], interval_cs: int = 10) -> None:
        self.now = 0.0
        self.routers: dict[str, VirtualRouter] = {}
        self.masters_seen: list[tuple[float, str]] = []
        for i, (name, prio) in enumerate(priorities.items()):
            self.routers[name] = VirtualRouter(1, prio, interval_cs, V4, ipaddress.IPv4Address(f"198.51.100.{i + 1}"))
        for r in self.routers.values():
            r.start(self.now)

    def deliver(self, sender: str, out: vrrp.Output) -> None:
        pending = [(sender, out)]
        while pending:
            name, o = pending.pop()
            for e in o.events:
                if e is Event.BECAME_MASTER:
                    self.masters_seen.append((self.now, name))
            src = ipaddress.IPv4Address(self.routers[name].local) if name in self.routers else SRC4
            for adv in o.send:
                for other, r in self.routers.items():
                    if other != name:
                        pending.append((other, r.receive(adv, src, self.now)))

    def run(self, until: float) -> None:
        for _ in range(100_000):
            nxt = min((r.deadline for r in self.routers.values()), default=float("inf"))
            if nxt > until:
                self.now = until
                return
            self.now = nxt
            for name, r in list(self.routers.items()):
                if r.deadline <= self.now:
                    self.deliver(name, r.tick(self.now))
        raise AssertionError("no progress")

    def masters(self) -> list[str]:
        return [n for n, r in self.routers.items() if r.state is State.MASTER]


def test_highest_priority_wins_and_a_silent_master_is_replaced_within_master_down() -> None:
    seg = Segment({"a": 254, "b": 253, "c": 252})
    seg.run(1.0)
    assert seg.masters() == ["a"]
    died = seg.now
    del seg.routers["a"]  # powered off: no priority-0 advert
    seg.run(died + 1.0)
    assert seg.masters() == ["b"]
    took = next(t for t, n in seg.masters_seen if n == "b") - died
    assert took <= 3 * 0.1 + (256 - 253) / 256 * 0.1 + 1e-9  # Master_Down_Interval of b


def test_a_stopping_master_hands_over_within_the_skew_time() -> None:
    seg = Segment({"a": 254, "b": 253})
    seg.run(1.0)
    t = seg.now
    seg.deliver("a", seg.routers["a"].stop())
    seg.run(t + 0.5)
    assert seg.masters() == ["b"]
    assert next(tm for tm, n in seg.masters_seen if n == "b") - t <= (256 - 253) / 256 * 0.1 + 1e-9


def test_a_returning_higher_priority_router_preempts() -> None:
    seg = Segment({"b": 253})
    seg.run(1.0)
    assert seg.masters() == ["b"]
    seg.routers["a"] = VirtualRouter(1, 254, 10, V4, ipaddress.IPv4Address("198.51.100.9"))
    seg.routers["a"].start(seg.now)
    seg.run(seg.now + 1.0)
    assert seg.masters() == ["a"]


def test_two_masters_of_equal_priority_leave_the_higher_address_master() -> None:
    seg = Segment({"a": 100, "b": 100, "c": 100})
    seg.now = seg.routers["a"].deadline  # all fire at once, as after a partition heals
    outs = {n: r.tick(seg.now) for n, r in seg.routers.items()}
    assert seg.masters() == ["a", "b", "c"]
    for n, out in outs.items():
        seg.deliver(n, out)
    seg.run(seg.now + 1.0)
    assert seg.masters() == ["c"]  # 198.51.100.3


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 254), min_size=1, max_size=5, unique=True),
    st.lists(
        st.tuples(st.sampled_from(["kill", "stop", "revive", "priority"]), st.integers(0, 4), st.integers(1, 254)),
        max_size=12,
    ),
)
def test_any_history_ends_with_the_highest_priority_alive_as_the_only_master(
    prios: list[int], history: list[tuple[str, int, int]]
) -> None:
    names = [f"r{i}" for i in range(len(prios))]
    seg = Segment(dict(zip(names, prios, strict=True)))
    parked: dict[str, VirtualRouter] = {}
    for action, which, value in history:
        seg.run(seg.now + 0.25)
        name = names[which % len(names)]
        if action == "kill" and name in seg.routers:
            parked[name] = seg.routers.pop(name)
        elif action == "stop" and name in seg.routers:
            r = seg.routers.pop(name)
            seg.routers[name] = r
            seg.deliver(name, r.stop())
            parked[name] = seg.routers.pop(name)
        elif action == "revive" and name in parked:
            r = parked.pop(name)
            r.state, r.deadline = State.INIT, float("inf")
            seg.routers[name] = r
            r.start(seg.now)
        elif action == "priority" and name in seg.routers:
            others = {x.priority for n, x in seg.routers.items() if n != name}
            if value not in others:
                seg.deliver(name, seg.routers[name].reconfigure(value, 10, V4, seg.now))
    seg.run(seg.now + 2.0)
    if seg.routers:
        best = max(seg.routers, key=lambda n: (seg.routers[n].priority, seg.routers[n].local))
        assert seg.masters() == [best]


def test_a_router_with_thousands_of_addresses_advertises_the_first_ones() -> None:
    many4 = tuple(ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.64.0")) + i) for i in range(1250))
    many6 = tuple(ipaddress.IPv6Address(int(ipaddress.IPv6Address("2001:db8:64::")) + i) for i in range(300))
    for many, src, group, mtu in ((many4, SRC4, vrrp.GROUP_V4, 1500 - 20), (many6, SRC6, vrrp.GROUP_V6, 1500 - 40)):
        r = VirtualRouter(9, 200, 10, many, src)
        r.start(0.0)
        out = r.tick(r.deadline)
        assert out.events == [Event.BECAME_MASTER]
        wire = out.send[0].encode(src, group)  # encodes (it raised beyond 255 before)
        assert len(wire) <= mtu
        assert vrrp.decode(wire, src, group).addresses == many[: vrrp.LISTED[src.version]]
