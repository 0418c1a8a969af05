"""`openelb forward`: NodeProxy's proxy Pod — the node's ports relayed to the Service.

Runs in the node's network namespace (hostNetwork). For each `--port proto/N` it listens on every
address of the node (`::`, dual-stack) and relays to the Service's ClusterIP of the client's
family (`--to`, one per family; a client of the other family goes to the one there is), where
kube-proxy balances over the Service's Pods as for any client on the node: Pods coming and going
behind the Service change nothing here. TCP: one upstream connection per connection, half-closes
passed on. UDP: one upstream socket per client address, forgotten after `UDP_IDLE` seconds without
traffic, at most `MAX_FLOWS` at once (the oldest is dropped first).

A port that cannot be bound (taken on this node) is retried every `RETRY` seconds and logged.
Readiness is not "something answers on the port" (whatever took it would): once every port is
bound the relay listens on an abstract Unix socket named after its workload (`--ready-name`), and
the Pod's exec probe (`openelb forward --check NAME`) connects to it — abstract sockets belong to
the network namespace, the node's here. Until then the controller leaves this node out of the
Service's addresses. Nothing outside the process is changed, so nothing is left when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

log = logging.getLogger("openelb.forward")
RETRY = 2.0
UDP_IDLE = 60.0
MAX_FLOWS = 4096
BUFFER = 65536


@dataclass(frozen=True)
class Port:
    protocol: str
    port: int
    target: int = 0
    """The Service's port when it differs from the listening one (0: the same)."""

    @property
    def upstream(self) -> int:
        return self.target or self.port


def parse_port(text: str) -> Port:
    """`tcp/PORT` or `udp/PORT` (`tcp/PORT:TARGET` to relay to another port)."""
    proto, _, nums = text.partition("/")
    listen, _, target = nums.partition(":")
    ok = proto.lower() in ("tcp", "udp") and listen.isdigit() and 0 < int(listen) < 65536
    if not ok or (target and not (target.isdigit() and 0 < int(target) < 65536)):
        raise argparse.ArgumentTypeError(f"{text!r}: use tcp/PORT or udp/PORT")
    return Port(proto.lower(), int(listen), int(target or 0))


def pick_target(client: str, targets: Sequence[str]) -> str:
    """The ClusterIP of the client's family, else the first (a v4 client of a v6-only Service)."""
    host = client.removeprefix("::ffff:") if client.startswith("::ffff:") and "." in client else client
    version = ipaddress.ip_address(host.split("%")[0]).version
    return next((t for t in targets if ipaddress.ip_address(t).version == version), targets[0])


def _listener(kind: int, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.setblocking(False)
    return sock


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(BUFFER):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


class TcpRelay:
    def __init__(self, port: int, targets: Sequence[str]) -> None:
        self.port, self.targets = port, targets
        """`port`: the upstream one."""
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        target = pick_target(peer[0], self.targets)
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(target, self.port), 10)
        except (OSError, TimeoutError) as exc:
            log.warning("tcp/%d: %s:%d unreachable for %s: %s", self.port, target, self.port, peer[0], exc)
            writer.close()
            return
        self.connections += 1
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay, client: tuple[str, int]) -> None:
        self.relay, self.client = relay, client
        self.transport: asyncio.DatagramTransport | None = None
        self.last = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.last = time.monotonic()
        if self.relay.transport is not None:
            self.relay.transport.sendto(data, self.client)


class UdpRelay(asyncio.DatagramProtocol):
    def __init__(self, port: int, targets: Sequence[str]) -> None:
        self.port, self.targets = port, targets
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: OrderedDict[tuple[str, int], _Upstream] = OrderedDict()
        self._opening: dict[tuple[str, int], list[bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, ...]) -> None:
        client = (addr[0], int(addr[1]))
        flow = self.flows.get(client)
        if flow is not None and flow.transport is not None:
            flow.last = time.monotonic()
            self.flows.move_to_end(client)
            flow.transport.sendto(data)
            return
        if client in self._opening:
            if len(self._opening[client]) < 16:
                self._opening[client].append(data)
            return
        self._opening[client] = [data]
        asyncio.get_running_loop().create_task(self._open(client))

    async def _open(self, client: tuple[str, int]) -> None:
        target = pick_target(client[0], self.targets)
        try:
            _t, flow = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _Upstream(self, client), remote_addr=(target, self.port)
            )
        except OSError as exc:
            log.warning("udp/%d: %s unreachable: %s", self.port, target, exc)
            self._opening.pop(client, None)
            return
        while len(self.flows) >= MAX_FLOWS:
            _old, oldest = self.flows.popitem(last=False)
            if oldest.transport is not None:
                oldest.transport.close()
        self.flows[client] = flow
        for data in self._opening.pop(client, []):
            assert flow.transport is not None
            flow.transport.sendto(data)

    def expire(self, now: float) -> None:
        for client, flow in list(self.flows.items()):
            if now - flow.last > UDP_IDLE:
                del self.flows[client]
                if flow.transport is not None:
                    flow.transport.close()


def _ready_address(name: str) -> str:
    return "\0openelb-forward:" + name


def check(name: str) -> int:
    """The readiness probe: 0 when the relay named `name` has bound every port."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(_ready_address(name))
        except OSError as exc:
            print(f"relay {name} not ready: {exc.strerror or exc}")
            return 1
    return 0


async def run(targets: Sequence[str], ports: Sequence[Port], stop: asyncio.Event, ready_name: str = "") -> None:
    loop = asyncio.get_running_loop()
    ready: socket.socket | None = None
    servers: list[asyncio.Server] = []
    udp: list[UdpRelay] = []
    pending = list(ports)
    said: set[Port] = set()
    while not stop.is_set():
        for p in list(pending):
            try:
                sock = _listener(socket.SOCK_STREAM if p.protocol == "tcp" else socket.SOCK_DGRAM, p.port)
            except OSError as exc:
                if p not in said:
                    log.error("%s/%d: cannot listen (%s): taken on this node? retrying every %.0f s",
                              p.protocol, p.port, exc.strerror or exc, RETRY)  # fmt: skip
                    said.add(p)
                continue
            if p.protocol == "tcp":
                tcp = TcpRelay(p.upstream, targets)
                servers.append(await asyncio.start_server(tcp.handle, sock=sock))
            else:
                relay = UdpRelay(p.upstream, targets)
                await loop.create_datagram_endpoint(lambda r=relay: r, sock=sock)  # type: ignore[misc]
                udp.append(relay)
            pending.remove(p)
            log.info("%s/%d -> %s", p.protocol, p.port, ", ".join(f"{t}:{p.upstream}" for t in targets))
        if not pending and ready is None and ready_name:
            ready = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            ready.bind(_ready_address(ready_name))
            ready.listen(16)
            ready.setblocking(False)
            await asyncio.start_unix_server(lambda _r, w: w.close(), sock=ready)
            log.info("every port bound: ready")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RETRY)
        now = time.monotonic()
        for relay in udp:
            relay.expire(now)
    for s in servers:
        s.close()
    for s in servers:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(s.wait_closed(), 2)
    for relay in udp:
        if relay.transport is not None:
            relay.transport.close()
    if ready is not None:
        ready.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openelb forward", description=__doc__.split("\n\n")[0])
    parser.add_argument("--to", action="append", default=[], help="the Service's ClusterIP (one per family)")
    parser.add_argument("--port", action="append", type=parse_port, default=[], help="tcp/PORT or udp/PORT")
    parser.add_argument("--ready-name", default="", help="name of the readiness socket (the workload's)")
    parser.add_argument("--check", metavar="NAME", help="readiness probe: exit 0 once relay NAME bound every port")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.check)
    if not args.to or not args.port:
        parser.error("--to and --port are required")
    for t in args.to:
        ipaddress.ip_address(t)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(args.to, args.port, stop, args.ready_name)

    asyncio.run(go())
    return 0
