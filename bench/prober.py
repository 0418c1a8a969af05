"""The HTTP prober the failover benchmarks run inside a client namespace.

Every 10 ms it opens a new TCP connection to <ip>:80 and sends a GET (a new connection each time,
so ECMP routers hash each probe anew); it prints the monotonic times of the successful and of the
failed probes as JSON. CLOCK_MONOTONIC is shared by all namespaces, so the harness can compare
them with the moment it injected a failure.

    python bench/prober.py <ip> <seconds> [<max-seconds>]

With <max-seconds>, <seconds> is the least it probes: after that it stops at the first probe that
succeeds, or at <max-seconds>. One harness can then measure a 0.3 s failover and a 6 s one with
the same probe, without giving every run the slow one's window. (Not "answered for a while":
with a Pod behind the cut node and no node-lifecycle controller in the lab, a share of the probes
keeps failing after the failover, as in a cluster until the node is declared dead.)
"""

import json
import socket
import sys
import time


def main() -> None:
    ip, seconds = sys.argv[1], float(sys.argv[2])
    limit = float(sys.argv[3]) if len(sys.argv) > 3 else seconds
    oks: list[float] = []
    fails: list[float] = []
    t0 = time.monotonic()
    while (now := time.monotonic()) - t0 < limit:
        if now - t0 >= seconds and (not fails or (oks and oks[-1] > fails[-1])):
            break
        t = now
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
