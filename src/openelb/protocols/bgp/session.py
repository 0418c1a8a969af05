"""One BGP connection's state machine (RFC 4271 §8), sans-IO.

The adapter owns the socket and the clock: it calls `start()` once TCP is up, feeds received bytes
to `receive_data()`, calls `tick()` at `next_deadline()`, writes `data_to_send()` and closes the
socket once `state` is IDLE. Routes come in as *intent* — prefix → next hops — through
`set_routes()`; the session turns that into its Adj-RIB-Out according to what the OPEN exchange
negotiated (one path per next hop with ADD-PATH, else only this node's own next hop) and sends
only the differences. Received UPDATEs are validated and dropped: this speaker never learns routes.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from openelb.protocols.bgp import codec as c
from openelb.protocols.bgp.codec import Attributes, Family, Prefix

OPEN_HOLD = 240.0
"""Hold timer while waiting for the peer's OPEN (RFC 4271 suggests 4 minutes)."""


class State(enum.Enum):
    IDLE = "IDLE"
    CONNECT = "CONNECT"
    ACTIVE = "ACTIVE"
    OPENSENT = "OPENSENT"
    OPENCONFIRM = "OPENCONFIRM"
    ESTABLISHED = "ESTABLISHED"


@dataclass(frozen=True)
class SessionConfig:
    local_as: int
    peer_as: int
    """0 accepts any AS (the OPEN's AS is then taken as is)."""
    router_id: str
    next_hops: Mapping[int, str]
    """This node's own next hop per IP version (4, 6): the only path sent without ADD-PATH."""
    hold_time: int = 90
    keepalive: int | None = None
    """Seconds between KEEPALIVEs; default a third of the negotiated hold time."""
    families: frozenset[Family] = frozenset({c.IPV4_UNICAST})
    add_path_send: frozenset[Family] = frozenset()
    graceful_restart: c.GracefulRestart | None = None
    communities: tuple[int, ...] = ()
    large_communities: tuple[tuple[int, int, int], ...] = ()

    @property
    def ibgp(self) -> bool:
        return self.peer_as == self.local_as

    def capabilities(self) -> c.Capabilities:
        return c.Capabilities(
            families=self.families,
            as4=self.local_as,
            route_refresh=True,
            graceful_restart=self.graceful_restart,
            add_path=tuple((f, c.ADD_PATH_SEND) for f in sorted(self.add_path_send & self.families)),
        )


@dataclass(frozen=True)
class Negotiated:
    peer_as: int
    peer_id: str
    hold_time: int
    keepalive: float
    families: frozenset[Family]
    add_path: frozenset[Family]
    """Families in which we send several paths per prefix."""
    as4: bool
    route_refresh: bool
    peer_graceful_restart: c.GracefulRestart | None


@dataclass(frozen=True)
class Established:
    negotiated: Negotiated


@dataclass(frozen=True)
class Closed:
    reason: str
    sent: c.Notification | None = None
    received: c.Notification | None = None


@dataclass(frozen=True)
class RefreshRequested:
    family: Family


Event = Established | Closed | RefreshRequested


def family_of(prefix: Prefix) -> Family:
    return c.IPV4_UNICAST if prefix.version == 4 else c.IPV6_UNICAST


@dataclass
class Counters:
    """Messages per type, as OpenELB's BgpPeer status reports them."""

    sent: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)


KIND_NAMES = {
    c.OPEN: "open",
    c.UPDATE: "update",
    c.NOTIFICATION: "notification",
    c.KEEPALIVE: "keepalive",
    5: "refresh",
}


class Session:
    def __init__(self, config: SessionConfig, now: float) -> None:
        self.config = config
        self.state = State.CONNECT
        self.negotiated: Negotiated | None = None
        self.counters = Counters()
        self._out = bytearray()
        self._in = bytearray()
        self._hold_deadline: float | None = now + OPEN_HOLD
        """None: no hold timer (negotiated hold time 0, once Established: RFC 4271 §4.2)."""
        self._keepalive_deadline: float | None = None
        self._routes: dict[Prefix, tuple[str, ...]] = {}
        self._rib_out: dict[Family, dict[tuple[int, Prefix], Attributes]] = {}
        self._sent_ids: dict[Family, dict[Prefix, set[int]]] = {}
        """Prefix → the path ids of it in the Adj-RIB-Out: a partial flush finds what to withdraw."""
        self._paths: dict[str, tuple[int, Attributes]] = {}
        self.established_at: float | None = None
        self.closed: Closed | None = None
        self.peer_caps: c.Capabilities | None = None
        """What the peer's OPEN offered (shown by the GoBGP API's `neighbor <addr>`)."""

    # ---- inputs ---------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """TCP is up: send our OPEN."""
        cfg = self.config
        hold = cfg.hold_time
        self._send(c.OPEN, c.encode_open(c.Open(cfg.local_as, hold, cfg.router_id, cfg.capabilities())))
        self.state = State.OPENSENT
        self._hold_deadline = now + OPEN_HOLD

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        if self.state == State.IDLE:
            return []
        self._in += data
        events: list[Event] = []
        try:
            for kind, body in c.split_messages(self._in):
                self.counters.received[KIND_NAMES.get(kind, "other")] += 1
                self.counters.received["total"] += 1
                refused = self._unexpected(kind)
                if refused:  # refused on its type: a body this state cannot accept is never decoded
                    events.append(refused)
                    break
                neg = self.negotiated
                msg = c.decode(kind, body, as4=neg.as4 if neg else True)
                events += self._handle(msg, now)
                if self.closed is not None:
                    break
        except c.BgpError as err:
            events.append(self._fail(err.code, err.subcode, str(err), err.data))
        return events

    def tick(self, now: float) -> list[Event]:
        if self.state in (State.IDLE, State.CONNECT, State.ACTIVE):
            return []
        if self._hold_deadline is not None and now >= self._hold_deadline:
            return [self._fail(c.HOLD_EXPIRED, 0, "hold timer expired")]
        if self._keepalive_deadline is not None and now >= self._keepalive_deadline:
            self._send(c.KEEPALIVE, c.encode_keepalive())
            assert self.negotiated is not None
            self._keepalive_deadline = now + self.negotiated.keepalive
        return []

    def next_deadline(self) -> float | None:
        if self.state in (State.IDLE, State.CONNECT, State.ACTIVE):
            return None
        return min((d for d in (self._hold_deadline, self._keepalive_deadline) if d is not None), default=None)

    def connection_lost(self, reason: str = "connection closed by peer") -> list[Event]:
        if self.state == State.IDLE:
            return []
        self.state = State.IDLE
        self.closed = Closed(reason)
        return [self.closed]

    def close(self, subcode: int = c.CEASE_ADMIN_SHUTDOWN, message: str = "") -> list[Event]:
        """Administrative end: NOTIFICATION Cease (RFC 4486) with an RFC 8203 message."""
        if self.state == State.IDLE:
            return []
        data = b""
        if message and subcode in (c.CEASE_ADMIN_SHUTDOWN, c.CEASE_ADMIN_RESET):
            text = message.encode()[:128]
            data = bytes([len(text)]) + text
        return [self._fail(c.CEASE, subcode, message or "administrative shutdown", data)]

    def abandon(self) -> None:
        """Stop without NOTIFICATION: graceful restart (RFC 4724) keeps our routes at the peer."""
        self.state = State.IDLE
        self._out.clear()
        self.closed = Closed("restarting")

    def set_routes(self, routes: Mapping[Prefix, Iterable[str]]) -> None:
        """Intent: every prefix this node wants announced and the next hops traffic may use."""
        self._routes = {p: tuple(sorted(set(nhs))) for p, nhs in routes.items()}
        if self.state == State.ESTABLISHED:
            self._flush()

    def update_routes(self, changes: Mapping[Prefix, Iterable[str] | None]) -> None:
        """Intent for some prefixes only (None: withdraw): the UPDATEs cover just those, so a
        change costs what it touches, not the whole Adj-RIB-Out."""
        for p, nhs in changes.items():
            if nhs is None:
                self._routes.pop(p, None)
            else:
                self._routes[p] = tuple(sorted(set(nhs)))
        if self.state == State.ESTABLISHED:
            self._flush(only=set(changes))

    # ---- outputs --------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def rib_out(self) -> dict[Family, dict[tuple[int, Prefix], Attributes]]:
        return {f: dict(r) for f, r in self._rib_out.items()}

    # ---- internals ------------------------------------------------------------------------

    def _send(self, kind: int, data: bytes) -> None:
        self._out += data
        self.counters.sent[KIND_NAMES.get(kind, "other")] += 1
        self.counters.sent["total"] += 1

    def _fail(self, code: int, subcode: int, reason: str, data: bytes = b"") -> Closed:
        note = c.Notification(code, subcode, data)
        self._send(c.NOTIFICATION, c.encode_notification(note))
        self.state = State.IDLE
        self.closed = Closed(reason, sent=note)
        return self.closed

    def _unexpected(self, kind: int) -> Event | None:
        """An UPDATE or ROUTE-REFRESH before Established is an FSM error (RFC 4271 §9, RFC 6608
        subcodes); said from the header, so a peer cannot make us decode what we would refuse."""
        if kind not in (c.UPDATE, 5) or self.state == State.ESTABLISHED:
            return None
        sub = {State.OPENSENT: 1, State.OPENCONFIRM: 2}.get(self.state, 0)
        return self._fail(c.FSM_ERROR, sub, f"{KIND_NAMES.get(kind, kind)} in {self.state.value}")

    def _handle(self, msg: c.Message, now: float) -> list[Event]:  # noqa: PLR0911 - one return per FSM case
        if isinstance(msg, c.Notification):
            self.state = State.IDLE
            self.closed = Closed(f"peer sent NOTIFICATION: {msg.describe()}", received=msg)
            return [self.closed]
        fsm_subcode = {State.OPENSENT: 1, State.OPENCONFIRM: 2, State.ESTABLISHED: 3}.get(self.state, 0)
        if self.state == State.OPENSENT:
            if not isinstance(msg, c.Open):
                return [self._fail(c.FSM_ERROR, fsm_subcode, f"{type(msg).__name__} before OPEN")]
            return self._on_open(msg, now)
        assert self.negotiated is not None
        if isinstance(msg, c.Open):
            return [self._fail(c.FSM_ERROR, fsm_subcode, "second OPEN")]
        if self.negotiated.hold_time:
            self._hold_deadline = now + self.negotiated.hold_time
        if self.state == State.OPENCONFIRM:
            if not isinstance(msg, c.Keepalive):
                return [self._fail(c.FSM_ERROR, fsm_subcode, f"{type(msg).__name__} in OPENCONFIRM")]
            self.state = State.ESTABLISHED
            self.established_at = now
            if not self.negotiated.hold_time:
                self._hold_deadline = None  # hold time 0: no hold timer, no KEEPALIVEs
            self._rib_out, self._sent_ids = {}, {}
            self._flush(end_of_rib=True)
            return [Established(self.negotiated)]
        if isinstance(msg, c.RouteRefresh):
            if msg.family in self.negotiated.families:
                self._rib_out.pop(msg.family, None)  # re-send that family's Adj-RIB-Out
                self._sent_ids.pop(msg.family, None)
                self._flush()
            return [RefreshRequested(msg.family)]
        if isinstance(msg, c.Update):
            self.counters.received["withdrawPrefix"] += len(msg.withdrawn)
            self.counters.received["withdrawUpdate"] += bool(msg.withdrawn)
        return []  # UPDATE content is validated by decoding and otherwise ignored (no RIB-in)

    def _on_open(self, msg: c.Open, now: float) -> list[Event]:
        cfg = self.config
        if cfg.peer_as and msg.asn != cfg.peer_as:
            return [self._fail(c.OPEN_ERROR, c.OPEN_BAD_PEER_AS, f"peer AS {msg.asn}, expected {cfg.peer_as}")]
        if int(ipaddress.IPv4Address(msg.router_id)) == 0 or (
            msg.router_id == cfg.router_id and msg.asn == cfg.local_as
        ):
            return [self._fail(c.OPEN_ERROR, c.OPEN_BAD_ID, f"bad BGP identifier {msg.router_id}")]
        hold = min(cfg.hold_time, msg.hold_time)
        keepalive = float(cfg.keepalive) if cfg.keepalive and cfg.keepalive > 0 else hold / 3
        # at most a third of the hold time, at least 1 s (RFC 4271 §10): never a busy loop
        keepalive = max(1.0, min(keepalive, hold / 3)) if hold else 0.0
        caps = self.peer_caps = msg.caps
        peer_families = caps.families or frozenset({c.IPV4_UNICAST})  # no MP capability: IPv4 only (RFC 4760)
        families = cfg.families & peer_families
        add_path = frozenset(f for f in cfg.add_path_send & families if caps.add_path_mode(f) & c.ADD_PATH_RECEIVE)
        self.negotiated = Negotiated(
            peer_as=msg.asn,
            peer_id=msg.router_id,
            hold_time=hold,
            keepalive=keepalive,
            families=families,
            add_path=add_path,
            as4=caps.as4 is not None,
            route_refresh=caps.route_refresh,
            peer_graceful_restart=caps.graceful_restart,
        )
        self._send(c.KEEPALIVE, c.encode_keepalive())
        self.state = State.OPENCONFIRM
        self._hold_deadline = now + (hold or OPEN_HOLD)
        self._keepalive_deadline = now + keepalive if hold else None
        return []

    def _desired(self, only: set[Prefix] | None = None) -> dict[Family, dict[tuple[int, Prefix], Attributes]]:
        neg = self.negotiated
        assert neg is not None
        cfg = self.config
        out: dict[Family, dict[tuple[int, Prefix], Attributes]] = {f: {} for f in neg.families}
        items = self._routes.items() if only is None else ((p, self._routes[p]) for p in only if p in self._routes)
        for prefix, next_hops in items:
            fam = family_of(prefix)
            if fam not in neg.families:
                continue
            if fam in neg.add_path:
                chosen = next_hops
            else:
                own = cfg.next_hops.get(prefix.version)
                chosen = (own,) if own and own in next_hops else ()
            add_path = fam in neg.add_path
            for nh in chosen:
                path_id, attrs = self._path(nh)
                out[fam][(path_id if add_path else 0, prefix)] = attrs
        return out

    def _path(self, next_hop: str) -> tuple[int, Attributes]:
        """Path id and attributes depend on the next hop alone (a handful of nodes, thousands of
        prefixes): built once per next hop, not once per path on every change."""
        path = self._paths.get(next_hop)
        if path is None:
            cfg = self.config
            attrs = Attributes(
                next_hop=next_hop,
                as_path=() if cfg.ibgp else (cfg.local_as,),
                local_pref=100 if cfg.ibgp else None,
                communities=cfg.communities,
                large_communities=cfg.large_communities,
            )
            path = self._paths[next_hop] = (c.fnv32a(next_hop), attrs)
        return path

    def _flush(self, end_of_rib: bool = False, only: set[Prefix] | None = None) -> None:
        """Send what differs between intent and the Adj-RIB-Out: everything, or `only` those prefixes."""
        neg = self.negotiated
        assert neg is not None
        for fam, wanted in self._desired(only).items():
            sent = self._rib_out.setdefault(fam, {})
            add_path = fam in neg.add_path
            if only is None:
                gone = [k for k in sent if k not in wanted]
            else:  # the paths of the touched prefixes: one index per prefix, kept with the RIB
                known = self._sent_ids.get(fam, {})
                gone = [(i, p) for p in only for i in known.get(p, ()) if (i, p) not in wanted]
            for msg in c.encode_updates(fam, None, withdrawn=gone, add_path=add_path, as4=neg.as4) if gone else ():
                self._send(c.UPDATE, msg)
            self.counters.sent["withdrawPrefix"] += len(gone)
            index = self._sent_ids.setdefault(fam, {})
            for k in gone:
                del sent[k]
                ids = index.get(k[1])
                if ids is not None:
                    ids.discard(k[0])
                    if not ids:
                        del index[k[1]]
            by_attrs: dict[Attributes, list[tuple[int, Prefix]]] = {}
            for k, attrs in wanted.items():
                if sent.get(k) != attrs:
                    by_attrs.setdefault(attrs, []).append(k)
            for attrs, keys in by_attrs.items():
                keys.sort(key=lambda k: (int(k[1].network_address), k[0]))
                for msg in c.encode_updates(fam, attrs, nlri=keys, add_path=add_path, as4=neg.as4):
                    self._send(c.UPDATE, msg)
                sent.update(dict.fromkeys(keys, attrs))
                for path_id, prefix in keys:
                    index.setdefault(prefix, set()).add(path_id)
            if end_of_rib:
                for msg in c.encode_updates(fam, None):
                    self._send(c.UPDATE, msg)


def parse_prefix(ip: str) -> Prefix:
    """A service IP as the host route announced for it."""
    addr = ipaddress.ip_address(ip)
    return ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")
