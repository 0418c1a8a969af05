"""The heartbeat key in the lab: read from its Secret, rotated live in three steps without any
speaker expiring a peer or an IP changing owner, and a speaker with another key kept out
(issue 14 #8)."""

from __future__ import annotations

import base64
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import NS, delete_eip, eip, in_netns, lb_service, running_speakers, scrape, wait_ips, wait_speakers
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret, Service
from lightkube.types import PatchType

from openelb.api import names
from openelb.kube.memberlist import fingerprint
from openelb_lab import workloads
from openelb_lab.plan import LabPlan

pytestmark = [pytest.mark.root, pytest.mark.k8s_lab]
SECRET = "hb-rotation-test"


def _set_key(kube: Client, text: str) -> None:
    kube.patch(Secret, SECRET, {"stringData": {"key": text}}, namespace=NS, patch_type=PatchType.MERGE)


@pytest.fixture
def secret(kube: Client) -> Iterator[None]:
    workloads.ensure_namespace(kube, NS)
    try:
        kube.create(Secret(metadata=ObjectMeta(name=SECRET, namespace=NS), stringData={"key": "old-key\n"}))
    except ApiError as exc:
        if exc.status.code != 409:
            raise
        _set_key(kube, "old-key\n")
    yield
    kube.delete(Secret, SECRET, namespace=NS)


def _sum(samples: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]], name: str, **labels: str) -> float:
    key = tuple(sorted(labels.items()))
    return sum(s.get((name, key), 0.0) for s in samples)


def test_keys_rotate_live_and_a_stranger_stays_out(
    kube: Client, lab_plan: LabPlan, controller: dict[str, Any], ns: str, secret: None
) -> None:
    urls = [f"http://{n.lan_v4}:50053/metrics" for n in lab_plan.nodes]
    workloads.apply(kube, eip("hb-keys", "198.18.0.242-198.18.0.243", protocol="layer2", interface="eth0"))
    try:
        with running_speakers(lab_plan, f"--secret-name={SECRET}", "--secret-poll=0.5", tag="-keys") as procs:
            workloads.apply(kube, lb_service("hb-svc", ns, annotations={names.ANNOTATION_POOL: "hb-keys"}))
            (ip,) = wait_ips(kube, ns, "hb-svc", timeout=30)

            def owner() -> str | None:
                svc = kube.get(Service, "hb-svc", namespace=ns)
                return (svc.metadata.annotations or {}).get(names.ANNOTATION_LAYER2_ANNOUNCER)  # type: ignore[union-attr]

            wait_speakers(procs, f"an announcer for {ip}", lambda: owner() is not None, 20)
            first_owner = owner()
            before = [scrape(u) for u in urls]
            for text, signs, accepts in (
                ("old-key\nnew-key\n", b"old-key", {b"old-key", b"new-key"}),
                ("new-key\nold-key\n", b"new-key", {b"old-key", b"new-key"}),
                ("new-key\n", b"new-key", {b"new-key"}),
            ):
                _set_key(kube, text)
                want = {(fingerprint(k), "true" if k == signs else "false") for k in accepts}

                def applied(want: set[tuple[str, str]] = want) -> bool:
                    for u in urls:
                        got = {
                            (dict(labels)["fingerprint"], dict(labels)["signs"])
                            for (name, labels), _v in scrape(u).items()
                            if name == "openelb_speaker_heartbeat_keys"
                        }
                        if got != want:
                            return False
                    return True

                wait_speakers(procs, f"every speaker on keys {text!r}", applied, 20)
            after = [scrape(u) for u in urls]
            for metric, labels in (
                ("openelb_speaker_peers_expired_total", {}),
                ("openelb_speaker_ownership_gained_total", {}),
                ("openelb_speaker_heartbeats_refused_total", {"reason": "garbage"}),
            ):
                delta = _sum(after, metric, **labels) - _sum(before, metric, **labels)
                assert delta == 0, f"{metric} {labels} moved by {delta} during the rotation"
            assert owner() == first_owner
            assert all(s.get(("openelb_speaker_live_peers", ())) == len(urls) for s in after)

            # Heartbeats signed with another key (from the client's namespace, to every node) are refused.
            code = (
                "import socket,sys\n"
                "from openelb.protocols import heartbeat as h\n"
                "m = h.Membership('stranger', [b'another-key'])\n"
                "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "for a in sys.argv[1:]:\n"
                "    for k in (h.ALIVE, h.LEAVING):\n"
                "        s.sendto(m.message(k), (a, 7946))\n"
            )
            refused = _sum(after, "openelb_speaker_heartbeats_refused_total", reason="garbage")
            out = in_netns(lab_plan.client.netns, sys.executable, "-c", code, *(str(n.lan_v4) for n in lab_plan.nodes))
            assert out.returncode == 0, out.stderr
            wait_speakers(
                procs, "the stranger's heartbeats refused",
                lambda: _sum([scrape(u) for u in urls], "openelb_speaker_heartbeats_refused_total", reason="garbage")
                >= refused + 2 * len(urls),
                10,
            )  # fmt: skip
            live = [scrape(u).get(("openelb_speaker_live_peers", ())) for u in urls]
            assert live == [len(urls)] * len(urls), live
            assert owner() == first_owner
    finally:
        delete_eip(kube, "hb-keys")


def test_the_installed_key_is_random_not_published(kube: Client, controller: dict[str, Any]) -> None:
    """The controller of this session made its Secret (the chart ships none)."""

    def made() -> Secret | None:
        try:
            return kube.get(Secret, names.MEMBERLIST_SECRET, namespace=NS)
        except ApiError:
            return None

    sec = workloads.poll(f"Secret {names.MEMBERLIST_SECRET} made by the controller", made, 20)
    key = base64.b64decode((sec.data or {})["key"]).decode().strip()
    assert key != names.PUBLISHED_HEARTBEAT_KEY and len(key) >= 40, "the heartbeat key is not a random one"
