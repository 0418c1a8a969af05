"""NodeProxy's relay (`openelb forward`) on loopback: TCP throughput and connection rate through
it, beside the same client talking to the server directly, in the same run.

    .venv/bin/python bench/nodeproxy.py [--megabytes 200] [--connections 2000]

What the docs call "an extra hop through userspace": the figure to weigh against a Layer2 or BGP
Eip, where the kernel forwards and nothing is copied.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time

from openelb.nodeproxy import forward as fw


def free_port() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::", 0))
        return int(s.getsockname()[1])


async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(1 << 16):
        pass
    writer.write(b"done")
    await writer.drain()
    writer.close()


async def push(port: int, megabytes: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunk = b"x" * (1 << 16)
    t0 = time.perf_counter()
    for _ in range(megabytes * 16):
        writer.write(chunk)
        await writer.drain()
    writer.write_eof()
    await reader.read(10)
    writer.close()
    return megabytes / (time.perf_counter() - t0)


async def connections(port: int, count: int) -> float:
    t0 = time.perf_counter()
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hi")
        writer.write_eof()
        await reader.read(10)
        writer.close()
    return count / (time.perf_counter() - t0)


async def main_async(megabytes: int, count: int) -> None:
    target, listen = free_port(), free_port()
    server = await asyncio.start_server(sink, "127.0.0.1", target)
    stop = asyncio.Event()
    relay = asyncio.create_task(fw.run(["127.0.0.1"], [fw.parse_port(f"tcp/{listen}:{target}")], stop, "bench"))
    while fw.check("bench") != 0:  # noqa: ASYNC110 - the relay's readiness is its probe's answer
        await asyncio.sleep(0.05)
    direct_mb, relayed_mb = await push(target, megabytes), await push(listen, megabytes)
    direct_c, relayed_c = await connections(target, count), await connections(listen, count)
    stop.set()
    await relay
    server.close()
    print(f"{'':24} {'direct':>10} {'relay':>10} {'ratio':>7}")
    print(f"{'throughput (MB/s)':24} {direct_mb:10.0f} {relayed_mb:10.0f} {relayed_mb / direct_mb:7.2f}")
    print(f"{'connections/s':24} {direct_c:10.0f} {relayed_c:10.0f} {relayed_c / direct_c:7.2f}")
    print("(one process for client, server and relay: the relay's share of a core is what it adds)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--megabytes", type=int, default=200)
    ap.add_argument("--connections", type=int, default=2000)
    args = ap.parse_args()
    asyncio.run(main_async(args.megabytes, args.connections))


if __name__ == "__main__":
    main()
