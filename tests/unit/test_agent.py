"""The lab kubelet's container bookkeeping: removing a pod while its probe loop runs leaves no
process behind (an orphaned speaker holds its node's ports and breaks every later speaker)."""

import asyncio
import sys
import threading
import time
from pathlib import Path

from openelb_lab import containers, podnet, processes
from openelb_lab.agent import NodeAgent
from openelb_lab.components import Paths
from openelb_lab.plan import make_plan

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def agent_with_one_pod(
    tmp_path: Path, uid: str
) -> tuple[NodeAgent, list[processes.Daemon], podnet.Sandbox, list[containers.ContainerRun], str]:
    """An agent whose containers are plain local processes (the real `_exec` wraps them in
    unshare + ip netns exec, as root; the bookkeeping under test is the same), and one pod."""
    plan = make_plan(1)
    agent = NodeAgent(plan, Paths(tmp_path), plan.nodes[0].name)
    started: list[processes.Daemon] = []

    def exec_here(box: podnet.Sandbox, run: containers.ContainerRun) -> None:
        started.append(processes.start(tmp_path, agent._daemon(box.uid, run.name), run.argv, program=sys.executable))

    agent._exec = exec_here  # type: ignore[method-assign]
    box = podnet.host_network(plan.nodes[0], uid, "openelb-system", f"speaker-{uid}")
    runs = [containers.ContainerRun("speaker", SLEEPER, {})]
    return agent, started, box, runs, f"openelb-system/speaker-{uid}"


def test_removal_racing_the_probe_loop_leaves_no_orphan(tmp_path: Path) -> None:
    agent, started, box, runs, key = agent_with_one_pod(tmp_path, "uid-1")
    try:
        for _ in range(5):  # each round: start, then remove while a probe spins beside it
            agent.boxes[key], agent.runs[key] = box, runs
            agent._start_containers(key, box, runs)
            done = threading.Event()

            def probe_loop(done: threading.Event) -> None:
                deadline = time.monotonic() + 20
                while not done.is_set() and time.monotonic() < deadline:
                    agent._probe_pod(key, box, runs)

            prober = threading.Thread(target=probe_loop, args=(done,))
            prober.start()
            try:
                asyncio.run(agent._remove(key, box))
            finally:
                done.set()
                prober.join(30)
            alive = [d.pid for d in started if processes.is_running(d)]
            assert alive == [], f"processes left running after the pod was removed: {alive}"
            assert processes.recorded(tmp_path) == []
            assert key not in agent.runs and key not in agent.boxes
    finally:
        for d in started:
            processes.stop(tmp_path, d, timeout=2)


def test_an_exited_container_is_restarted_once(tmp_path: Path) -> None:
    agent, started, box, runs, key = agent_with_one_pod(tmp_path, "uid-2")
    try:
        agent.boxes[key], agent.runs[key] = box, runs
        agent._start_containers(key, box, runs)
        agent._start_containers(key, box, runs)  # a second start adopts the running one
        assert len(started) == 1
        processes.stop(tmp_path, started[0], timeout=5)
        agent._probe_pod(key, box, runs)
        assert len(started) == 2 and processes.is_running(started[1])
        assert agent.restarts[key] == {"speaker": 1}
    finally:
        for d in started:
            processes.stop(tmp_path, d, timeout=2)
