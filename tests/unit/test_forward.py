"""NodeProxy's relay on loopback: TCP and UDP reach the target, a taken port is retried, and
nothing stays listening after stop."""

from __future__ import annotations

import asyncio
import socket

import pytest

from openelb.nodeproxy import forward as fw


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET6, kind) as s:
        s.bind(("::", 0))
        return int(s.getsockname()[1])


async def _echo_servers(port: int) -> tuple[asyncio.Server, asyncio.DatagramTransport]:
    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(100)
        writer.write(b"tcp:" + data)
        await writer.drain()
        writer.close()

    class Udp(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.t.sendto(b"udp:" + data, addr)  # type: ignore[attr-defined]

    server = await asyncio.start_server(tcp, "127.0.0.1", port)
    udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(Udp, local_addr=("127.0.0.1", port))
    return server, udp


def test_tcp_and_udp_relay_then_nothing_left() -> None:
    async def scenario() -> tuple[bytes, bytes, bytes]:
        target, listen = free_port(), free_port()
        server, udp = await _echo_servers(target)
        stop = asyncio.Event()
        ports = [fw.parse_port(f"tcp/{listen}:{target}"), fw.parse_port(f"udp/{listen}:{target}")]
        task = asyncio.create_task(fw.run(["127.0.0.1"], ports, stop))
        try:
            for _ in range(100):
                try:
                    reader, writer = await asyncio.open_connection("::1", listen)  # a v6 client, v4 target
                    break
                except OSError:
                    await asyncio.sleep(0.02)
            writer.write(b"hello")
            tcp_answer = await asyncio.wait_for(reader.read(100), 5)
            writer.close()

            loop = asyncio.get_running_loop()
            got: asyncio.Future[bytes] = loop.create_future()

            class Client(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                    if not got.done():
                        got.set_result(data)

            client, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", listen))
            client.sendto(b"ping")
            udp_answer = await asyncio.wait_for(got, 5)
            client.close()
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
            server.close()
            udp.close()
        with socket.socket(socket.AF_INET6) as probe:  # the port is free again (TIME_WAIT aside)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("::", listen))
        return tcp_answer, udp_answer, b""

    tcp_answer, udp_answer, _ = asyncio.run(scenario())
    assert tcp_answer == b"tcp:hello" and udp_answer == b"udp:ping"


def test_a_taken_port_is_retried_until_free() -> None:
    async def scenario() -> bytes:
        target, listen = free_port(), free_port()
        server, udp = await _echo_servers(target)
        squatter = socket.socket(socket.AF_INET6)
        squatter.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        squatter.bind(("::", listen))
        squatter.listen()
        stop = asyncio.Event()
        name = f"test-{listen}"
        task = asyncio.create_task(fw.run(["127.0.0.1"], [fw.parse_port(f"tcp/{listen}:{target}")], stop, name))
        await asyncio.sleep(0.3)
        not_ready = fw.check(name)  # the port answers (the squatter), but the relay is not ready
        squatter.close()  # the port frees: the relay takes it at its next retry
        try:
            for _ in range(200):
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", listen)
                    writer.write(b"x")
                    answer = await asyncio.wait_for(reader.read(100), 2)
                    writer.close()
                    if answer:
                        for _ in range(50):
                            if fw.check(name) == 0:
                                break
                            await asyncio.sleep(0.1)
                        return answer + (b" ready" if fw.check(name) == 0 and not_ready == 1 else b"")
                except OSError:
                    pass
                await asyncio.sleep(0.05)
            return b""
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
            server.close()
            udp.close()

    assert asyncio.run(scenario()) == b"tcp:x ready"


@pytest.mark.parametrize("bad", ["sctp/80", "tcp/0", "tcp/70000", "udp/x", "tcp/80:0"])
def test_bad_ports_are_refused(bad: str) -> None:
    with pytest.raises(Exception, match="use tcp/PORT"):
        fw.parse_port(bad)


def test_the_clients_family_picks_the_cluster_ip() -> None:
    assert fw.pick_target("::ffff:198.51.100.7", ["2001:db8::1", "198.51.100.1"]) == "198.51.100.1"
    assert fw.pick_target("2001:db8::9", ["198.51.100.1", "2001:db8::1"]) == "2001:db8::1"
    assert fw.pick_target("198.51.100.7", ["2001:db8::1"]) == "2001:db8::1"  # single-stack v6 Service
