"""The lab's stand-in for a container: an HTTP server that answers like `luksa/kubia`.

It runs inside the pod's network namespace and listens on every declared container port,
dual-stack, answering `You've hit <pod-name>` (HTTP over TCP; any UDP datagram gets that line
back) so a test sees which pod a request reached.
"""

from __future__ import annotations

import argparse
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


class DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def handler_for(pod_name: str) -> type[BaseHTTPRequestHandler]:
    body = f"You've hit {pod_name}\n".encode()

    class Handler(BaseHTTPRequestHandler):
        server_version = "openelb-lab-pod/1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def udp_echo(pod_name: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    body = f"You've hit {pod_name}\n".encode()
    while True:
        _data, addr = sock.recvfrom(2048)
        sock.sendto(body, addr)


def serve(pod_name: str, ports: list[int]) -> None:
    servers = [DualStackServer(("::", port), handler_for(pod_name)) for port in ports]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    threads += [threading.Thread(target=udp_echo, args=(pod_name, port), daemon=True) for port in ports]
    for t in threads:
        t.start()
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    stop.wait()
    for s in servers:
        s.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, action="append", default=[])
    args = parser.parse_args(argv)
    serve(args.name, args.port)


if __name__ == "__main__":
    main()
