"""The read-only part of GoBGP's gRPC API (`--api-hosts`), so Go OpenELB's habits carry over.

Go OpenELB's speaker embeds GoBGP: its readiness probe is `gobgp -p 50051 global` and operators
debug with `gobgp neighbor` and `gobgp global rib`. This answers those calls from our own BGP
engine with GoBGP's messages (its .proto files, `speaker/gobgpapi/`): GetBgp, ListPeer, ListPath
(global table and a peer's adj-out), GetTable. Every other call — all that would change
something — answers UNIMPLEMENTED and names what to edit instead: OpenELB configures BGP from
BgpConf/BgpPeer objects only, so a second, unauthenticated way in would be a second source of
truth and a hole on the host network (Go OpenELB's API accepted AddPeer from anyone).

The builders below are plain functions of the engine's state (tested without a server); the
servicer runs on the speaker's event loop (grpc.aio), so it reads that state without locks.
Imported only when `--api-hosts` is set: grpc costs ~30 MB of RSS.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message

from openelb.protocols.bgp import codec as c
from openelb.protocols.bgp.codec import Prefix
from openelb.protocols.bgp.session import State
from openelb.speaker.bgp.backend import InProcessBackend, PeerRunner
from openelb.speaker.bgp.config import GlobalConfig
from openelb.speaker.bgp.mode import BgpMode
from openelb.speaker.gobgpapi import attribute_pb2 as attr
from openelb.speaker.gobgpapi import capability_pb2 as cap
from openelb.speaker.gobgpapi import gobgp_pb2 as api
from openelb.speaker.gobgpapi import gobgp_pb2_grpc as api_grpc

log = logging.getLogger("openelb.bgp.api")
READ_ONLY = (
    "read-only: OpenELB configures BGP from its objects — edit BgpConf `default` (AS, router ID, "
    "listen port) or the BgpPeer objects (neighbors), e.g. `kubectl edit bgppeer <name>`"
)
_STATES = {
    State.IDLE: api.PeerState.IDLE,
    State.CONNECT: api.PeerState.CONNECT,
    State.OPENSENT: api.PeerState.OPENSENT,
    State.OPENCONFIRM: api.PeerState.OPENCONFIRM,
    State.ESTABLISHED: api.PeerState.ESTABLISHED,
}


@dataclass
class View:
    """What the API shows: the BGP mode's configuration, sessions and announced routes."""

    global_cfg: GlobalConfig | None
    peers: Mapping[str, PeerRunner]
    routes: Mapping[Prefix, tuple[str, ...]]
    route_since: Mapping[Prefix, float]
    """Wall-clock time a prefix was first announced (the path's age)."""


def view_of(mode: BgpMode | None) -> View:
    backend = mode.backend if mode is not None else None
    peers = backend.peers if isinstance(backend, InProcessBackend) else {}
    if mode is None:
        return View(None, peers, {}, {})
    return View(mode.global_cfg, peers, mode.routes, mode.route_since)


def _pack(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def _family(fam: c.Family) -> api.Family:
    return api.Family(afi=fam[0], safi=fam[1])  # type: ignore[arg-type]  # enum values are ints


def _stamp(wall: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(wall * 1e9))
    return ts


def global_message(g: GlobalConfig | None) -> api.Global:
    if g is None:
        return api.Global()
    return api.Global(
        asn=g.asn,
        router_id=g.router_id,
        listen_port=g.listen_port,
        listen_addresses=list(g.listen_addresses) or ["0.0.0.0", "::"],  # noqa: S104 - shown, not bound
    )


def capabilities(caps: c.Capabilities | None) -> list[any_pb2.Any]:
    """Our codec's capabilities as GoBGP's capability messages (in OPEN order)."""
    if caps is None:
        return []
    out = [_pack(cap.MultiProtocolCapability(family=_family(f))) for f in sorted(caps.families)]
    if caps.route_refresh:
        out.append(_pack(cap.RouteRefreshCapability()))
    gr = caps.graceful_restart
    if gr is not None:
        tuples = [
            cap.GracefulRestartCapabilityTuple(family=_family(f), flags=0x80 if fwd else 0) for f, fwd in gr.families
        ]
        out.append(_pack(cap.GracefulRestartCapability(flags=0x08 if gr.restarting else 0, time=gr.restart_time,
                                                       tuples=tuples)))  # fmt: skip
    if caps.as4 is not None:
        out.append(_pack(cap.FourOctetASNCapability(asn=caps.as4)))
    if caps.add_path:
        out.append(_pack(cap.AddPathCapability(tuples=[
            cap.AddPathCapabilityTuple(family=_family(f), mode=mode) for f, mode in caps.add_path  # type: ignore[arg-type]
        ])))  # fmt: skip
    out += [
        _pack(_OTHER_CAPS[code]() if code in _OTHER_CAPS else cap.UnknownCapability(code=code)) for code in caps.unknown
    ]
    return out


_OTHER_CAPS: dict[int, Callable[[], Message]] = {
    5: cap.ExtendedNexthopCapability,
    70: cap.EnhancedRouteRefreshCapability,
    71: cap.LongLivedGracefulRestartCapability,
    73: cap.FqdnCapability,
    128: cap.RouteRefreshCiscoCapability,
}
"""Capabilities our codec keeps only by code: as GoBGP's own message (the CLI type-asserts the
ones it knows and crashes on an UnknownCapability with such a code), their contents empty."""


def _messages(counts: Mapping[str, int]) -> api.Message:
    return api.Message(
        notification=counts.get("notification", 0),
        update=counts.get("update", 0),
        open=counts.get("open", 0),
        keepalive=counts.get("keepalive", 0),
        refresh=counts.get("refresh", 0),
        total=counts.get("total", 0),
        withdraw_update=counts.get("withdrawUpdate", 0),
        withdraw_prefix=counts.get("withdrawPrefix", 0),
    )


def peer_message(runner: PeerRunner, now_wall: float, now_mono: float) -> api.Peer:
    """One neighbor as `gobgp neighbor [<addr>]` reads it (every sub-message set: the CLI
    dereferences them)."""
    cfg = runner.cfg
    st = runner.status()
    conn = runner.established() or (runner.conns[0] if runner.conns else None)
    session = conn.session if conn else None
    established = session is not None and session.state == State.ESTABLISHED
    state = _STATES.get(session.state, api.PeerState.ACTIVE) if session else (
        api.PeerState.IDLE if cfg.passive else api.PeerState.ACTIVE
    )  # fmt: skip
    rib = session.rib_out() if established and session else {}
    families = sorted(cfg.families)
    afi_safis = []
    for fam in families:
        sent = len(rib.get(fam, {}))
        afi_safis.append(api.AfiSafi(
            config=api.AfiSafiConfig(family=_family(fam), enabled=True),
            state=api.AfiSafiState(family=_family(fam), enabled=True, advertised=sent),
            add_paths=api.AddPaths(config=api.AddPathsConfig(send_max=255 if fam in cfg.add_path_send else 0)),
        ))  # fmt: skip
    timers_state = api.TimersState(
        hold_time=st.hold_time,
        keepalive_interval=int(st.keepalive),
        negotiated_hold_time=st.hold_time if established else 0,
        connect_retry=int(cfg.connect_retry),
    )
    if st.uptime is not None:
        timers_state.uptime.CopyFrom(_stamp(now_wall - st.uptime))
    if st.downtime is not None:
        timers_state.downtime.CopyFrom(_stamp(now_wall - st.downtime))
    elif runner.down_since is None and st.uptime is not None:
        timers_state.downtime.CopyFrom(_stamp(now_wall - st.uptime))
    local_as = cfg.local_as or runner.global_cfg.asn
    peer_type = api.INTERNAL if cfg.peer_as == local_as else api.EXTERNAL
    return api.Peer(
        conf=api.PeerConf(
            neighbor_address=cfg.address,
            peer_asn=cfg.peer_as,
            local_asn=local_as,
            type=peer_type,
            description=cfg.name,
            admin_down=cfg.admin_down,
        ),
        state=api.PeerState(
            neighbor_address=cfg.address,
            peer_asn=st.peer_as,
            local_asn=local_as,
            type=peer_type,
            description=cfg.name,
            session_state=state,
            admin_state=api.PeerState.DOWN if cfg.admin_down else api.PeerState.UP,
            messages=api.Messages(received=_messages(st.received), sent=_messages(st.sent)),
            queues=api.Queues(),
            flops=st.flops,
            router_id=st.router_id,
            local_cap=capabilities(session.config.capabilities()) if session else [],
            remote_cap=capabilities(session.peer_caps) if session else [],
        ),
        timers=api.Timers(
            config=api.TimersConfig(
                hold_time=cfg.hold_time,
                keepalive_interval=cfg.keepalive or cfg.hold_time // 3,
                connect_retry=int(cfg.connect_retry),
            ),
            state=timers_state,
        ),
        transport=api.Transport(remote_address=cfg.address, remote_port=cfg.port, passive_mode=cfg.passive),
        ebgp_multihop=api.EbgpMultihop(enabled=bool(cfg.ttl and cfg.ttl > 1), multihop_ttl=cfg.ttl or 0),
        route_reflector=api.RouteReflector(),
        route_server=api.RouteServer(),
        graceful_restart=api.GracefulRestart(
            enabled=runner.graceful_restart, restart_time=runner.global_cfg.restart_time
        ),
        afi_safis=afi_safis,
    )


def _path(prefix: Prefix, a: c.Attributes, age: float, best: bool, path_id: int = 0) -> api.Path:
    fam = c.IPV4_UNICAST if prefix.version == 4 else c.IPV6_UNICAST
    nlri = attr.IPAddressPrefix(prefix_len=prefix.prefixlen, prefix=str(prefix.network_address))
    pattrs = [_pack(attr.OriginAttribute(origin=c.ORIGIN_IGP))]
    segments = [attr.AsSegment(type=attr.AsSegment.AS_SEQUENCE, numbers=list(a.as_path))] if a.as_path else []
    pattrs.append(_pack(attr.AsPathAttribute(segments=segments)))
    if prefix.version == 4:
        pattrs.append(_pack(attr.NextHopAttribute(next_hop=a.next_hop)))
    else:
        pattrs.append(
            _pack(attr.MpReachNLRIAttribute(family=_family(fam), next_hops=[a.next_hop], nlris=[_pack(nlri)]))
        )
    if a.med is not None:
        pattrs.append(_pack(attr.MultiExitDiscAttribute(med=a.med)))
    if a.local_pref is not None:
        pattrs.append(_pack(attr.LocalPrefAttribute(local_pref=a.local_pref)))
    if a.communities:
        pattrs.append(_pack(attr.CommunitiesAttribute(communities=list(a.communities))))
    if a.large_communities:
        pattrs.append(_pack(attr.LargeCommunitiesAttribute(communities=[
            attr.LargeCommunity(global_admin=g, local_data1=x, local_data2=y) for g, x, y in a.large_communities
        ])))  # fmt: skip
    return api.Path(
        nlri=_pack(nlri), pattrs=pattrs, age=_stamp(age), best=best, family=_family(fam),
        neighbor_ip="<nil>", source_id="<nil>", local_identifier=path_id,
    )  # fmt: skip


def _matches(prefix: Prefix, lookups: Iterable[api.TableLookupPrefix]) -> bool:
    wanted = list(lookups)
    if not wanted:
        return True
    for w in wanted:
        try:
            net = ipaddress.ip_network(w.prefix, strict=False)
        except ValueError:
            continue
        if net.version != prefix.version:
            continue
        if w.type == api.TableLookupPrefix.LONGER and prefix.subnet_of(net):  # type: ignore[arg-type]
            return True
        if w.type == api.TableLookupPrefix.SHORTER and net.subnet_of(prefix):  # type: ignore[arg-type]
            return True
        if w.type == api.TableLookupPrefix.EXACT and (
            prefix == net or (net.num_addresses == 1 and net.network_address in prefix)
        ):
            return True
    return False


def global_destinations(
    view: View, fam: c.Family, lookups: Iterable[api.TableLookupPrefix] = ()
) -> list[api.Destination]:
    """What this node announces, one path per next hop (the first is best: ECMP)."""
    out = []
    lookups = list(lookups)
    for prefix in sorted((p for p in view.routes if (c.IPV4_UNICAST if p.version == 4 else c.IPV6_UNICAST) == fam),
                         key=lambda p: (p.network_address, p.prefixlen)):  # fmt: skip
        if not _matches(prefix, lookups):
            continue
        age = view.route_since.get(prefix, time.time())
        paths = [_path(prefix, c.Attributes(next_hop=h), age, i == 0) for i, h in enumerate(view.routes[prefix])]
        if paths:
            out.append(api.Destination(prefix=str(prefix), paths=paths))
    return out


def adj_out_destinations(runner: PeerRunner, fam: c.Family, route_since: Mapping[Prefix, float],
                         lookups: Iterable[api.TableLookupPrefix] = ()) -> list[api.Destination]:  # fmt: skip
    """What the session to one peer carries now (its Adj-RIB-Out)."""
    conn = runner.established()
    if conn is None:
        return []
    by_prefix: dict[Prefix, list[tuple[int, c.Attributes]]] = {}
    for (path_id, prefix), attrs in conn.session.rib_out().get(fam, {}).items():
        if _matches(prefix, list(lookups)):
            by_prefix.setdefault(prefix, []).append((path_id, attrs))
    out = []
    for prefix in sorted(by_prefix, key=lambda p: (p.network_address, p.prefixlen)):
        age = route_since.get(prefix, time.time())
        paths = [_path(prefix, a, age, i == 0, pid) for i, (pid, a) in enumerate(sorted(by_prefix[prefix]))]
        out.append(api.Destination(prefix=str(prefix), paths=paths))
    return out


class Servicer(api_grpc.GobgpApiServicer):
    def __init__(self, view: Callable[[], View]) -> None:
        self.view = view

    async def GetBgp(
        self, request: api.GetBgpRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.GetBgpResponse:
        return api.GetBgpResponse(**{"global": global_message(self.view().global_cfg)})

    async def ListPeer(self, request: api.ListPeerRequest, context: Any) -> AsyncIterator[api.ListPeerResponse]:
        v = self.view()
        now_wall, now_mono = time.time(), time.monotonic()
        for address, runner in sorted(v.peers.items()):
            if request.address and request.address != address:
                continue
            yield api.ListPeerResponse(peer=peer_message(runner, now_wall, now_mono))

    async def ListPath(self, request: api.ListPathRequest, context: Any) -> AsyncIterator[api.ListPathResponse]:
        v = self.view()
        fam = (request.family.afi, request.family.safi) if request.HasField("family") else c.IPV4_UNICAST
        if fam not in (c.IPV4_UNICAST, c.IPV6_UNICAST):
            return  # we carry no other family: an empty table, as GoBGP would show
        if request.table_type == api.GLOBAL:
            dests = global_destinations(v, fam, request.prefixes)
        elif request.table_type == api.ADJ_OUT:
            runner = v.peers.get(request.name)
            if runner is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no BgpPeer with address {request.name}")
            dests = adj_out_destinations(runner, fam, v.route_since, request.prefixes)  # type: ignore[arg-type]
        elif request.table_type in (api.ADJ_IN, api.LOCAL):
            if request.name and request.name not in v.peers:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no BgpPeer with address {request.name}")
            dests = []  # announce-only: routes from peers are checked and dropped, never kept
        else:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "OpenELB has no VRFs")
            return
        for d in dests:
            yield api.ListPathResponse(destination=d)

    async def GetTable(self, request: api.GetTableRequest, context: Any) -> api.GetTableResponse:
        v = self.view()
        fam = (request.family.afi, request.family.safi) if request.HasField("family") else c.IPV4_UNICAST
        if request.table_type == api.ADJ_OUT and request.name in v.peers:
            dests = adj_out_destinations(v.peers[request.name], fam, v.route_since)
        elif request.table_type == api.GLOBAL:
            dests = global_destinations(v, fam)
        else:
            dests = []
        paths = sum(len(d.paths) for d in dests)
        return api.GetTableResponse(num_destination=len(dests), num_path=paths, num_accepted=paths)


_SERVED = {"GetBgp", "ListPeer", "ListPath", "GetTable"}


def _refuse(name: str) -> Callable[..., Any]:
    async def refuse(self: Servicer, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name}: {READ_ONLY}")

    return refuse


for _m in api.DESCRIPTOR.services_by_name["GobgpApi"].methods:
    if _m.name not in _SERVED:
        setattr(Servicer, _m.name, _refuse(_m.name))


async def serve(address: str, view: Callable[[], View]) -> grpc.aio.Server:
    """Listen on `address` (GoBGP's syntax: `:50051` is every address) and answer."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 1 << 20)])
    api_grpc.add_GobgpApiServicer_to_server(Servicer(view), server)  # type: ignore[no-untyped-call]
    host, _, port = address.rpartition(":")
    # Every address: `[::]` (dual-stack), or IPv4's where a node has IPv6 disabled.
    every = host in ("", "[::]", "0.0.0.0")  # noqa: S104 - GoBGP's `:50051`, as configured
    candidates = [f"[::]:{port}", f"0.0.0.0:{port}"] if every else [f"{host}:{port}"]
    errors = []
    for target in candidates:
        try:
            if server.add_insecure_port(target):
                break
            errors.append(f"{target}: not bound")
        except RuntimeError as exc:
            errors.append(f"{target}: {exc}")
    else:
        raise OSError(f"cannot listen on {', '.join(errors)}")
    await server.start()
    log.info("GoBGP API (read-only) on %s", target)
    return server
