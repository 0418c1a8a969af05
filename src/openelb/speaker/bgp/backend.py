"""The BGP engine behind the speaker: peers, listener, routes, status.

`BgpBackend` is the boundary the speaker talks to (configure, set routes, report status), so an
ExaBGP- or FRR-driven engine could replace the in-process one without touching the speaker.
`InProcessBackend` runs one `PeerRunner` per peer on the speaker's event loop: it connects with
exponential backoff (unless passive), accepts the peer's connections on the shared listener,
resolves collisions (RFC 4271 §6.8) and re-sends the current routes whenever a session comes up.
Routes are intent (prefix → next hops) held outside the sessions, so restarting a session or
changing BgpConf never loses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from openelb.protocols.bgp import codec as c
from openelb.protocols.bgp import session as bgp
from openelb.protocols.bgp.codec import Prefix
from openelb.speaker.bgp.config import GlobalConfig, PeerConfig
from openelb.speaker.bgp.transport import Connection, connect, set_md5

log = logging.getLogger("openelb.bgp")
MAX_RETRY = 30.0
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class PeerStatus:
    name: str
    address: str
    state: str
    peer_as: int
    local_as: int
    router_id: str
    """The peer's BGP identifier (empty before its OPEN)."""
    hold_time: int
    keepalive: float
    uptime: float | None
    """Seconds since Established."""
    downtime: float | None
    flops: int
    sent: Mapping[str, int]
    received: Mapping[str, int]
    add_path: bool
    prefixes_sent: int
    last_error: str
    bfd: str


class BgpBackend(Protocol):
    async def configure(self, global_cfg: GlobalConfig | None, peers: Mapping[str, PeerConfig]) -> None: ...

    def set_routes(self, routes: Mapping[Prefix, tuple[str, ...]]) -> None: ...

    def update_routes(self, changes: Mapping[Prefix, tuple[str, ...] | None]) -> None: ...

    def status(self) -> list[PeerStatus]: ...

    def set_bfd_state(self, address: str, state: str) -> None: ...

    async def close(self, graceful_restart: bool) -> None: ...


class PeerRunner:
    def __init__(
        self,
        global_cfg: GlobalConfig,
        cfg: PeerConfig,
        next_hops: Mapping[int, str],
        restarting: bool,
        routes: Callable[[], Mapping[Prefix, tuple[str, ...]]],
    ) -> None:
        self.global_cfg = global_cfg
        self.cfg = cfg
        self.next_hops = dict(next_hops)
        self.restarting = restarting
        self._routes = routes
        self.conns: list[Connection] = []
        self._pending: set[asyncio.Task[Any]] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopped = False
        self.flops = 0
        self.last_error = ""
        self.down_since: float | None = time.monotonic()
        self.bfd_state = "disabled" if cfg.bfd is None else "down"
        self._delay = cfg.connect_retry
        self._retry_at = 0.0
        self.last_counters: bgp.Counters = bgp.Counters()

    # ---- configuration ------------------------------------------------------------------------

    def session_config(self) -> bgp.SessionConfig:
        g, p = self.global_cfg, self.cfg
        gr_enabled = g.graceful_restart if p.graceful_restart is None else p.graceful_restart
        gr = None
        if gr_enabled:
            # F bit set: forwarding is kube-proxy's job and survives a speaker restart.
            gr = c.GracefulRestart(g.restart_time, self.restarting, tuple((f, True) for f in sorted(p.families)))
        return bgp.SessionConfig(
            local_as=p.local_as or g.asn,
            peer_as=p.peer_as,
            router_id=g.router_id,
            next_hops=self.next_hops,
            hold_time=p.hold_time,
            keepalive=p.keepalive,
            families=p.families,
            add_path_send=p.add_path_send,
            graceful_restart=gr,
        )

    @property
    def graceful_restart(self) -> bool:
        return self.session_config().graceful_restart is not None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"bgp-peer-{self.cfg.address}")

    async def stop(self, graceful_restart: bool = False, subcode: int = c.CEASE_PEER_DECONFIGURED) -> None:
        self._stopped = True
        self._wake.set()
        for conn in list(self.conns):
            neg = conn.session.negotiated
            helper = neg is not None and neg.peer_graceful_restart is not None
            if graceful_restart and helper and self.graceful_restart and conn.session.state == bgp.State.ESTABLISHED:
                conn.abort()
            else:
                conn.session.close(subcode, "openelb speaker stopping" if graceful_restart else "")
                conn.poke()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ---- connections --------------------------------------------------------------------------

    def established(self) -> Connection | None:
        return next((x for x in self.conns if x.session.state == bgp.State.ESTABLISHED), None)

    def _new_connection(self, outbound: bool) -> Connection:
        conn = Connection(bgp.Session(self.session_config(), time.monotonic()), outbound, self._event, self._closed)
        self.conns.append(conn)
        return conn

    def accept(self, sock: socket.socket) -> None:
        if self._stopped or self.cfg.admin_down:
            sock.close()
            return
        if self.established() is not None:
            log.info("peer %s: refusing a second connection while established", self.cfg.address)
            sock.close()
            return
        conn = self._new_connection(outbound=False)
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(lambda: conn, sock))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _backoff(self) -> None:
        """A connection that failed or ended before Established: wait longer each time (with
        jitter), so a peer that refuses us is not hammered."""
        self._retry_at = time.monotonic() + self._delay * random.uniform(0.75, 1.0)  # noqa: S311
        self._delay = min(self._delay * 2, MAX_RETRY)

    async def _run(self) -> None:
        while not self._stopped:
            wait = self._retry_at - time.monotonic()
            if self.cfg.passive or self.cfg.admin_down or self.conns or wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait if wait > 0 and not self.conns else None)
                continue
            conn = self._new_connection(outbound=True)
            try:
                sock = await connect(self.cfg.address, self.cfg.port, self.cfg.password, self.cfg.ttl, CONNECT_TIMEOUT)
                await asyncio.get_running_loop().connect_accepted_socket(lambda conn=conn: conn, sock)  # type: ignore[misc]
            except (OSError, TimeoutError) as exc:
                if conn in self.conns:
                    self.conns.remove(conn)
                self.last_error = f"connect: {exc}"
                log.debug("peer %s: %s", self.cfg.address, self.last_error)
                self._backoff()

    def _event(self, conn: Connection, ev: bgp.Event) -> None:
        if isinstance(ev, bgp.Established):
            neg = ev.negotiated
            for other in self.conns:
                if other is not conn and other.session.state != bgp.State.IDLE:
                    other.session.close(c.CEASE_COLLISION)
                    other.poke()
            self.down_since = None
            self.last_error = ""
            self._delay = self.cfg.connect_retry
            self.restarting = False  # the R bit is for the first session after a restart only
            log.info(
                "peer %s (AS %d, id %s): established, hold %ds, families %s, add-path %s",
                self.cfg.address,
                neg.peer_as,
                neg.peer_id,
                neg.hold_time,
                sorted(neg.families),
                sorted(neg.add_path),
            )
            conn.session.set_routes(self._routes())
            conn.poke()
        elif isinstance(ev, bgp.Closed):
            self.last_error = ev.reason
            level = logging.INFO if ev.sent is None or ev.sent.code == c.CEASE else logging.WARNING
            log.log(level, "peer %s: session closed: %s", self.cfg.address, ev.reason)
        if isinstance(ev, bgp.Established) or conn.session.state != bgp.State.OPENCONFIRM:
            return
        # Collision (RFC 4271 §6.8): two connections, both past OPEN: keep the one opened by the
        # speaker with the higher BGP identifier.
        theirs = conn.session.negotiated
        assert theirs is not None
        for other in self.conns:
            if other is conn or other.session.state not in (bgp.State.OPENCONFIRM, bgp.State.OPENSENT):
                continue
            local_wins = int(ipaddress.IPv4Address(self.global_cfg.router_id)) > int(
                ipaddress.IPv4Address(theirs.peer_id)
            )
            loser = other if (conn.outbound == local_wins) else conn
            loser.session.close(c.CEASE_COLLISION)
            loser.poke()
            return

    def _closed(self, conn: Connection) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
        self.last_counters = conn.session.counters
        if conn.session.established_at is not None:
            self.flops += 1
            self.down_since = time.monotonic()
            self._retry_at = time.monotonic() + 1.0  # reconnect soon: the peer may just be restarting
        elif conn.outbound:
            self._backoff()
        self._wake.set()

    def push_routes(self, changes: Mapping[Prefix, tuple[str, ...] | None] | None = None) -> None:
        """All routes, or only `changes` (prefix → next hops, None = withdrawn)."""
        conn = self.established()
        if conn is not None:
            if changes is None:
                conn.session.set_routes(self._routes())
            else:
                conn.session.update_routes(changes)
            conn.poke()

    def bfd_changed(self, state: str) -> None:
        """BFD Down tears the session down at once (RFC 5882 §4.1); Up lets it come back."""
        previous, self.bfd_state = self.bfd_state, state
        if state == "down" and previous == "up":
            for conn in list(self.conns):
                conn.session.close(c.CEASE_OTHER_CONFIG_CHANGE, "BFD session down")
                conn.poke()
            self.last_error = "BFD session down"
        if state == "up":  # the peer is reachable again: do not sit out the connect backoff
            self._delay = self.cfg.connect_retry
            self._retry_at = 0.0
        self._wake.set()

    def status(self) -> PeerStatus:
        conn = self.established() or (self.conns[0] if self.conns else None)
        s = conn.session if conn else None
        neg = s.negotiated if s else None
        now = time.monotonic()
        counters = s.counters if s else self.last_counters
        rib = s.rib_out() if s and s.state == bgp.State.ESTABLISHED else {}
        return PeerStatus(
            name=self.cfg.name,
            address=self.cfg.address,
            state=("ACTIVE" if not self.cfg.passive else "IDLE") if s is None else s.state.value,
            peer_as=self.cfg.peer_as,
            local_as=self.cfg.local_as or self.global_cfg.asn,
            router_id=neg.peer_id if neg else "",
            hold_time=neg.hold_time if neg else self.cfg.hold_time,
            keepalive=neg.keepalive if neg else (self.cfg.keepalive or self.cfg.hold_time / 3),
            uptime=now - s.established_at + 0.0
            if s and s.established_at and s.state == bgp.State.ESTABLISHED
            else None,
            downtime=None if self.down_since is None else now - self.down_since,
            flops=self.flops,
            sent=dict(counters.sent),
            received=dict(counters.received),
            add_path=bool(neg and neg.add_path),
            prefixes_sent=sum(len(r) for r in rib.values()),
            last_error=self.last_error,
            bfd=self.bfd_state,
        )


class InProcessBackend:
    def __init__(self, next_hops: Mapping[int, str]) -> None:
        self.next_hops = dict(next_hops)
        self.global_cfg: GlobalConfig | None = None
        self.peers: dict[str, PeerRunner] = {}
        self.routes: dict[Prefix, tuple[str, ...]] = {}
        self._listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._listening: tuple[int, tuple[str, ...]] | None = None
        self._first_start = True
        """The R bit goes out on the sessions of a speaker that just started (RFC 4724)."""

    def _current_routes(self) -> Mapping[Prefix, tuple[str, ...]]:
        return self.routes

    async def configure(self, global_cfg: GlobalConfig | None, peers: Mapping[str, PeerConfig]) -> None:
        """Apply BgpConf + BgpPeers: only what changed restarts, and the routes stay (they are
        intent, re-sent on every new session). A new listen port or address only rebinds the
        listener; the sessions restart only when what they carry in OPEN changes."""
        if _session_key(global_cfg) != _session_key(self.global_cfg):
            if self.global_cfg is not None and global_cfg is not None:
                log.info(
                    "BgpConf changed: sessions restart with AS %d, router id %s", global_cfg.asn, global_cfg.router_id
                )
            # With graceful restart negotiated the routers keep our routes while the sessions
            # come back (RFC 4724), so a BgpConf edit drops nothing (OpenELB emptied its RIB).
            keep = global_cfg is not None and global_cfg.graceful_restart
            for runner in list(self.peers.values()):
                await runner.stop(graceful_restart=keep, subcode=c.CEASE_OTHER_CONFIG_CHANGE)
            self.peers.clear()
            self._first_start = keep
        self.global_cfg = global_cfg
        for runner in self.peers.values():
            runner.global_cfg = global_cfg or runner.global_cfg
        if global_cfg is None:
            await self._listen(None)
            return
        for address in list(self.peers):
            if address not in peers or peers[address] != self.peers[address].cfg:
                await self.peers.pop(address).stop()
        for address, cfg in peers.items():
            if address not in self.peers:
                restarting = self._first_start and global_cfg.graceful_restart
                runner = PeerRunner(global_cfg, cfg, self.next_hops, restarting, self._current_routes)
                self.peers[address] = runner
                runner.start()
        self._first_start = False
        await self._listen(global_cfg)
        for runner in self.peers.values():  # a listener keyed by address: keep MD5 keys current
            self._apply_md5(runner.cfg)

    async def _listen(self, g: GlobalConfig | None) -> None:
        wanted = None if g is None or g.listen_port < 0 else (g.listen_port, g.listen_addresses)
        if wanted == self._listening:
            return
        for task in self._accepting:
            task.cancel()
        for sock in self._listeners:
            sock.close()
        self._listeners, self._accepting = [], []
        self._listening = wanted
        if wanted is None:
            return
        port, addresses = wanted
        for host in addresses or ("0.0.0.0", "::"):  # noqa: S104 - the node's BGP port, as configured
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
                sock.listen(64)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                log.error("BGP: cannot listen on [%s]:%d: %s (see BgpConf.spec.listenPort)", host, port, exc)
                continue
            self._listeners.append(sock)
            self._accepting.append(asyncio.get_running_loop().create_task(self._accept_loop(sock)))
        log.info("BGP: listening on port %d", port)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(listener)
            except OSError as exc:
                log.warning("BGP: accept failed: %s", exc)
                await asyncio.sleep(1)
                continue
            ip = ipaddress.ip_address(addr[0].split("%")[0])
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            runner = self.peers.get(str(ip))
            if runner is None:
                log.info("BGP: refusing a connection from %s: no BgpPeer for it", ip)
                sock.close()
                continue
            runner.accept(sock)

    def _apply_md5(self, cfg: PeerConfig) -> None:
        for sock in self._listeners:
            if cfg.password and (sock.family == socket.AF_INET6) == (":" in cfg.address):
                with contextlib.suppress(OSError):
                    set_md5(sock, cfg.address, cfg.password)

    def set_routes(self, routes: Mapping[Prefix, tuple[str, ...]]) -> None:
        if routes == self.routes:
            return
        self.routes = dict(routes)
        for runner in self.peers.values():
            runner.push_routes()

    def update_routes(self, changes: Mapping[Prefix, tuple[str, ...] | None]) -> None:
        if not changes:
            return
        for prefix, hops in changes.items():
            if hops is None:
                self.routes.pop(prefix, None)
            else:
                self.routes[prefix] = hops
        for runner in self.peers.values():
            runner.push_routes(changes)

    def set_bfd_state(self, address: str, state: str) -> None:
        runner = self.peers.get(address)
        if runner is not None:
            runner.bfd_changed(state)

    def status(self) -> list[PeerStatus]:
        return [r.status() for r in self.peers.values()]

    async def close(self, graceful_restart: bool) -> None:
        for runner in self.peers.values():
            await runner.stop(graceful_restart and runner.graceful_restart, c.CEASE_ADMIN_SHUTDOWN)
        await self._listen(None)


def _session_key(g: GlobalConfig | None) -> tuple[object, ...] | None:
    """The BgpConf fields a running session depends on (its OPEN)."""
    return None if g is None else (g.asn, g.router_id, g.graceful_restart, g.restart_time)
