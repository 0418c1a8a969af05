"""The lab's upstream routers for BGP mode: BIRD 2, gobgpd and FRR in the `router` namespace.

BIRD peers with every node (IPv4 and IPv6 sessions, ADD-PATH receive, optional MD5 and BFD) and
exports what it learns into its namespace's kernel with `merge paths`, so the `remote` host behind
the router reaches a LoadBalancer IP over ECMP routes, as a real top-of-rack router would.
gobgpd and FRR's bgpd are the other implementations the speaker is checked against (`gobgp` and
`vtysh` for assertions), on the router's WAN address so that they run beside BIRD.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from openelb_lab import netns, processes
from openelb_lab.plan import LabPlan

ROUTER_AS = 50000
NODES_AS = 50001
SPEAKER_PORT = 17900
"""The speakers' listen port in the samples (BgpConf.spec.listenPort)."""


@dataclass(frozen=True)
class BirdOptions:
    router_as: int = ROUTER_AS
    nodes_as: int = NODES_AS
    password: str = ""
    bfd_ms: int = 0
    """0: no BFD; else min rx/tx interval in milliseconds (multiplier 3)."""
    passive: bool = True
    """The router waits for the speakers to connect (they always try; BgpPeer default)."""
    graceful_restart: bool = True
    ipv6: bool = True


def bird_config(plan: LabPlan, opts: BirdOptions, log: Path | None = None) -> str:
    """BIRD's configuration; with `log`, BGP state changes and packets (End-of-RIB included) are
    written there for tests to read."""
    router = plan.router
    lines = [
        f"router id {router.lan_v4};",
        f'log "{log}" all;' if log else "log stderr { info, remote, warning, error, auth, fatal, bug };",
        "protocol device { scan time 10; }",
        "protocol direct { ipv4; ipv6; }",
        "protocol kernel k4 { ipv4 { export where source = RTS_BGP; }; merge paths on; }",
        "protocol kernel k6 { ipv6 { export where source = RTS_BGP; }; merge paths on; }",
    ]
    if opts.bfd_ms:
        ms = opts.bfd_ms
        lines.append(
            f'protocol bfd {{ interface "*" {{ min rx interval {ms} ms; min tx interval {ms} ms; multiplier 3; }}; }}'
        )
    common = []
    if opts.passive:
        common.append("passive on;")
    if opts.password:
        common.append(f'password "{opts.password}";')
    if opts.bfd_ms:
        common.append("bfd on;")
    common.append(f"graceful restart {'on' if opts.graceful_restart else 'aware'};")
    # BIRD holds a session down for 60-300 s after an error, a BFD Down included (even the
    # AdminDown a stopping speaker sends): a restarted node would wait that long to return.
    common.append("error wait time 1, 10;")
    if log:
        common.append("debug { states, events, packets };")
    body = " ".join(common)
    for node in plan.nodes:
        name = node.name.replace("-", "_")
        lines.append(
            f"protocol bgp {name} {{ local {router.lan_v4} as {opts.router_as}; "
            f"neighbor {node.lan_v4} port {SPEAKER_PORT} as {opts.nodes_as}; {body} "
            "ipv4 { import all; export none; add paths rx; }; }"
        )
        if opts.ipv6:
            lines.append(
                f"protocol bgp {name}_v6 {{ local {router.lan_v6} as {opts.router_as}; "
                f"neighbor {node.lan_v6} port {SPEAKER_PORT} as {opts.nodes_as}; {body} "
                "ipv6 { import all; export none; add paths rx; }; }"
            )
    return "\n".join(lines) + "\n"


class Bird:
    """BIRD running in the router namespace; `birdc` talks to it over its control socket."""

    def __init__(self, plan: LabPlan, state: Path, opts: BirdOptions) -> None:
        self.plan = plan
        self.dir = state / "bird"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "bird.conf"
        self.sock = self.dir / "bird.ctl"
        self.opts = opts
        self.log = self.dir / "bird.log"
        self.conf.write_text(bird_config(plan, opts, self.log))
        self.state = state
        self.daemon = processes.start(
            state,
            "bird",
            netns.exec_argv(plan.router.netns, ["bird", "-f", "-c", str(self.conf), "-s", str(self.sock)]),
        )
        deadline = time.monotonic() + 10
        while not self.sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.sock.exists():
            raise RuntimeError(f"bird did not start; see {self.daemon.log}")

    @classmethod
    def attach(cls, plan: LabPlan, state: Path, opts: BirdOptions | None = None) -> Bird:
        """The BIRD a previous command started (the demo's)."""
        daemon = next((d for d in processes.recorded(state) if d.name == "bird" and processes.is_running(d)), None)
        if daemon is None:
            raise RuntimeError("BIRD is not running in the lab: run `openelb-lab demo` first")
        self = cls.__new__(cls)
        self.plan, self.state, self.daemon = plan, state, daemon
        self.dir = state / "bird"
        self.conf, self.sock, self.log = self.dir / "bird.conf", self.dir / "bird.ctl", self.dir / "bird.log"
        self.opts = opts or BirdOptions(bfd_ms=100)
        return self

    def reconfigure(self, opts: BirdOptions) -> None:
        self.opts = opts
        self.conf.write_text(bird_config(self.plan, opts, self.log))
        self.birdc("configure")

    def log_lines(self, protocol: str, text: str) -> int:
        """How many log lines of `protocol` contain `text` (e.g. "Got END-OF-RIB")."""
        if not self.log.exists():
            return 0
        lines = self.log.read_text(errors="replace").splitlines()
        return sum(1 for line in lines if f" {protocol}: " in line and text in line)

    def birdc(self, *args: str) -> str:
        out = subprocess.run(
            ["birdc", "-s", str(self.sock), *args], capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout

    def established(self) -> dict[str, bool]:
        """Protocol name → BGP session Established."""
        out = {}
        for line in self.birdc("show", "protocols").splitlines():
            parts = line.split()
            if len(parts) >= 6 and parts[1] == "BGP":
                out[parts[0]] = parts[5] == "Established"
        return out

    def hold_times(self) -> dict[str, int]:
        """Protocol name → the hold time its Established session negotiated (seconds): a
        benchmark that changes the hold time waits until the sessions carry the new one."""
        out = {}
        for name, up in self.established().items():
            if not up:
                continue
            for line in self.birdc("show", "protocols", "all", name).splitlines():
                if "Hold timer:" in line:
                    out[name] = int(float(line.split()[-1].split("/")[-1]))
        return out

    def bfd_sessions(self) -> dict[str, str]:
        out = {}
        for line in self.birdc("show", "bfd", "sessions").splitlines():
            parts = line.split()
            if len(parts) >= 3 and (parts[0][0].isdigit() or ":" in parts[0]):
                out[parts[0]] = parts[2]
        return out

    def stop(self) -> None:
        processes.stop(self.state, self.daemon)


def kernel_next_hops(plan: LabPlan, ip: str) -> set[str]:
    """The router kernel's next hops for `ip` (an ECMP route lists several)."""
    family = "-6" if ":" in ip else "-4"
    out = netns.run(["ip", "-n", plan.router.netns, "-j", family, "route", "show", ip], check=False)
    hops: set[str] = set()
    for route in json.loads(out or "[]"):
        if "gateway" in route:
            hops.add(route["gateway"])
        for nh in route.get("nexthops", []):
            hops.add(nh["gateway"])
    return hops


def gobgpd_config(plan: LabPlan, router_as: int, nodes_as: int, listen_port: int, nodes_passive: bool) -> str:
    """gobgpd on the router's WAN address (a multihop peer for the nodes)."""
    r = plan.router
    lines = [
        "[global.config]",
        f"  as = {router_as}",
        f'  router-id = "{r.lan_v4}"',
        f"  port = {listen_port}",
        f'  local-address-list = ["{r.wan_v4}"]',
    ]
    for node in plan.nodes:
        lines += [
            "[[neighbors]]",
            "  [neighbors.config]",
            f'    neighbor-address = "{node.lan_v4}"',
            f"    peer-as = {nodes_as}",
            "  [neighbors.transport.config]",
            f'    local-address = "{r.wan_v4}"',
            f"    passive-mode = {'false' if nodes_passive else 'true'}",
            f"    remote-port = {SPEAKER_PORT}",
            "  [neighbors.ebgp-multihop.config]",
            "    enabled = true",
            "    multihop-ttl = 3",
            "  [[neighbors.afi-safis]]",
            "    [neighbors.afi-safis.config]",
            '      afi-safi-name = "ipv4-unicast"',
            "    [neighbors.afi-safis.add-paths.config]",
            "      receive = true",
        ]
    return "\n".join(lines) + "\n"


class GoBgp:
    API = "127.0.0.1:50051"

    def __init__(self, plan: LabPlan, state: Path, config: str) -> None:
        self.plan = plan
        self.state = state
        d = state / "gobgp"
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "gobgpd.toml"
        conf.write_text(config)
        self.daemon = processes.start(
            state,
            "gobgpd",
            netns.exec_argv(plan.router.netns, ["gobgpd", "-f", str(conf), "--api-hosts", self.API, "-p"]),
        )

    def gobgp(self, *args: str) -> str:
        argv = netns.exec_argv(self.plan.router.netns, ["gobgp", "-u", "127.0.0.1", "-p", "50051", *args])
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout

    def neighbors(self) -> dict[str, str]:
        out = {}
        for peer in json.loads(self.gobgp("neighbor", "-j") or "[]"):
            state = peer.get("state", {})
            out[state.get("neighbor_address", "")] = str(state.get("session_state", ""))
        return out

    def rib(self) -> dict[str, set[str]]:
        """Prefix → next hops (every path, ADD-PATH included)."""
        out: dict[str, set[str]] = {}
        for prefix, paths in (json.loads(self.gobgp("global", "rib", "-a", "ipv4", "-j") or "{}") or {}).items():
            for p in paths:
                for attr in p.get("attrs", []):
                    if attr.get("type") == 3:  # NEXT_HOP
                        out.setdefault(prefix, set()).add(attr["nexthop"])
        return out

    def stop(self) -> None:
        processes.stop(self.state, self.daemon)


def have_router_daemons() -> str | None:
    """Why BGP interop tests cannot run here, or None."""
    missing = [b for b in ("bird", "birdc", "gobgpd", "gobgp", "vtysh") if shutil.which(b) is None]
    if not Path(FRR_BGPD).exists():
        missing.append(FRR_BGPD)
    return f"missing {', '.join(missing)}: run scripts/setup (apt bird2 gobgpd frr)" if missing else None


FRR_BGPD = "/usr/lib/frr/bgpd"
FRR_PORT = 1791


def frr_config(plan: LabPlan, router_as: int, nodes_as: int, password: str) -> str:
    """FRR's bgpd on the router's WAN address, port 1791, passive: the speakers connect to it
    (BgpPeer transport.remotePort) over eBGP multihop, with TCP-MD5 and ADD-PATH receive."""
    r = plan.router
    lines = [f"router bgp {router_as}", f" bgp router-id {r.lan_v4}", " no bgp ebgp-requires-policy"]
    for node in plan.nodes:
        lines += [
            f" neighbor {node.lan_v4} remote-as {nodes_as}",
            f" neighbor {node.lan_v4} ebgp-multihop 3",
            f" neighbor {node.lan_v4} passive",
        ]
        if password:
            lines.append(f" neighbor {node.lan_v4} password {password}")
    lines.append(" address-family ipv4 unicast")
    lines += [f"  neighbor {node.lan_v4} addpath-rx-paths-limit 16" for node in plan.nodes]
    lines.append(" exit-address-family")
    return "\n".join(lines) + "\n"


class Frr:
    """FRR's bgpd (no zebra) in the router namespace; `vtysh` over its socket for assertions."""

    def __init__(self, plan: LabPlan, state: Path, config: str) -> None:
        self.plan = plan
        self.state = state
        self.dir = state / "frr"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o777)  # bgpd drops to the frr user and writes its vty socket here
        conf = self.dir / "bgpd.conf"
        conf.write_text(config)
        conf.chmod(0o644)
        argv = [FRR_BGPD, "-Z", "-p", str(FRR_PORT), "-l", str(plan.router.wan_v4), "-f", str(conf),
                "--vty_socket", str(self.dir), "-i", str(self.dir / "bgpd.pid")]  # fmt: skip
        self.daemon = processes.start(state, "frr-bgpd", netns.exec_argv(plan.router.netns, argv))

    def vtysh(self, command: str) -> str:
        out = subprocess.run(
            ["vtysh", "--vty_socket", str(self.dir), "-c", command],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return out.stdout

    def neighbors(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.vtysh("show bgp neighbors json") or "{}")
        except ValueError:
            return {}
        return {k: v for k, v in data.items() if isinstance(v, dict)}

    def next_hops(self, prefix: str) -> set[str]:
        try:
            data = json.loads(self.vtysh(f"show bgp ipv4 unicast {prefix} json") or "{}")
        except ValueError:
            return set()
        return {nh["ip"] for path in data.get("paths", []) for nh in path.get("nexthops", [])}

    def stop(self) -> None:
        processes.stop(self.state, self.daemon)
