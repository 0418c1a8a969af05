"""The HTTP prober the failover benchmarks run inside a client namespace.

Every 10 ms it opens a new TCP connection to <ip>:80 and sends a GET (a new connection each time,
so ECMP routers hash each probe anew); it prints the monotonic times of the successful and of the
failed probes as JSON. CLOCK_MONOTONIC is shared by all namespaces, so the harness can compare
them with the moment it injected a failure.

    python bench/prober.py <ip> <seconds>
"""

import json
import socket
import sys
import time


def main() -> None:
    ip, seconds = sys.argv[1], float(sys.argv[2])
    oks: list[float] = []
    fails: list[float] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        t = time.monotonic()
        try:
            s = socket.create_connection((ip, 80), timeout=0.1)
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):  # HTTP/1.0: the server closes after the body
                data += chunk
            s.close()
            (oks if b"You've hit" in data else fails).append(t)
        except OSError:
            fails.append(t)
        time.sleep(max(0.0, 0.01 - (time.monotonic() - t)))
    print(json.dumps({"oks": oks, "fails": fails}))


if __name__ == "__main__":
    main()
