from typing import Any

from openelb.controller.admission import response, review_bgpconf, review_bgppeer, review_eip


def eip(name: str, address: str, used: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    ann = spec.pop("annotations", {})
    return {
        "metadata": {"name": name, "annotations": ann},
        "spec": {"address": address, **spec},
        "status": {"used": used or {}},
    }


DEFAULT = {"eip.openelb.kubesphere.io/is-default-eip": "true"}


def test_create_rules_with_openelb_messages() -> None:
    existing = [eip("a", "198.51.100.0/28", annotations=DEFAULT)]
    ok = review_eip({"operation": "CREATE", "object": eip("b", "198.51.100.16/28")}, existing)
    assert ok.allowed
    bad = review_eip({"operation": "CREATE", "object": eip("b", "198.51.100.8-198.51.100.20")}, existing)
    assert not bad.allowed and bad.message == "eip address overlap with a"
    bad = review_eip({"operation": "CREATE", "object": eip("c", "x", protocol="vip")}, existing)
    assert "invalid eip address format" in bad.message
    assert "if protocol is layer2 or vip, interface should not be empty" in bad.message
    second_default = eip("d", "198.51.100.64/28", annotations=DEFAULT)
    assert (
        "already exists a default EIP: a"
        in review_eip({"operation": "CREATE", "object": second_default}, existing).message
    )
    v6_default = eip("e", "2001:db8::/120", annotations=DEFAULT)  # one default per family is fine
    assert review_eip({"operation": "CREATE", "object": v6_default}, existing).allowed


def test_update_may_grow_but_not_orphan_used_ips() -> None:
    old = eip("a", "198.51.100.0/28", used={"198.51.100.9": "ns/x;ns/y"})
    grow = review_eip({"operation": "UPDATE", "object": eip("a", "198.51.100.0/27"), "oldObject": old}, [old])
    assert grow.allowed
    shrink = review_eip({"operation": "UPDATE", "object": eip("a", "198.51.100.0/29"), "oldObject": old}, [old])
    assert not shrink.allowed
    assert "leaves out ip 198.51.100.9 in use by ns/x, ns/y" in shrink.message


def test_delete_of_an_eip_in_use_names_its_services() -> None:
    old = eip("a", "198.51.100.0/28", used={"198.51.100.1": "ns/x", "198.51.100.2": "ns/y"})
    verdict = review_eip({"operation": "DELETE", "oldObject": old}, [old])
    assert not verdict.allowed and "ns/x, ns/y" in verdict.message
    assert review_eip({"operation": "DELETE", "oldObject": eip("b", "198.51.100.16/28")}, []).allowed


def test_bgp_basics() -> None:
    assert review_bgpconf({"operation": "CREATE", "object": {"spec": {"as": 50001, "listenPort": 17900}}}).allowed
    bad = review_bgpconf({"operation": "CREATE", "object": {"spec": {"as": 50001, "listenPort": 70000}}})
    assert "listenPort" in bad.message
    assert not review_bgppeer({"operation": "CREATE", "object": {"spec": {}}}).allowed
    peer = {"spec": {"conf": {"peerAs": 50000, "neighborAddress": "2001:db8::2"}}}
    assert review_bgppeer({"operation": "CREATE", "object": peer}).allowed


def test_response_shape() -> None:
    out = response(
        {"request": {"uid": "u1"}},
        review_eip({"operation": "DELETE", "oldObject": eip("a", "1.1.1.1", used={"1.1.1.1": "n/s"})}, []),
    )
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["response"]["uid"] == "u1"
    assert out["response"]["allowed"] is False and out["response"]["status"]["code"] == 403
    # Go OpenELB's configuration lists v1beta1 first: the apiserver then asks, and wants, v1beta1
    beta = response({"apiVersion": "admission.k8s.io/v1beta1", "request": {"uid": "u2"}}, review_eip({}, []))
    assert beta["apiVersion"] == "admission.k8s.io/v1beta1" and beta["response"]["uid"] == "u2"


def test_vip_annotations_are_checked_and_pins_may_not_overlap() -> None:
    vrid, interval = "vip.openelb.kubesphere.io/vrid", "vip.openelb.kubesphere.io/advert-interval"
    existing = [eip("a", "198.51.100.0/28", protocol="vip", interface="eth0", annotations={vrid: "40-47"})]

    def review(**ann: str) -> Any:
        obj = eip("b", "198.51.100.16/28", protocol="vip", interface="eth0", annotations=ann)
        return review_eip({"operation": "CREATE", "object": obj}, existing)

    assert review().allowed and review(**{vrid: "48", interval: "250ms"}).allowed
    assert review(**{interval: "1s"}).allowed and review(**{interval: "0.5"}).allowed
    clash = review(**{vrid: "45-50"})
    assert not clash.allowed and "overlaps the VRIDs 40-47 of Eip a" in clash.message
    for bad in ("0", "256", "9-3", "x", "1-2-3"):
        assert "must" in review(**{vrid: bad}).message or "is not a VRID" in review(**{vrid: bad}).message, bad
    for bad in ("0", "5ms", "41s", "fast", "15ms"):
        assert "10ms-40.95s" in review(**{interval: bad}).message, bad


def test_pools_that_can_never_be_right_are_refused_naming_the_block() -> None:
    """Issue 14 #6: from `0.0.0.0/0` the first IP handed out was 0.0.0.0."""
    cases = {
        "0.0.0.0/0": "this network",
        "::/0": "unspecified",
        "224.0.0.0/4": "multicast",
        "127.0.0.1": "loopback",
        "fe80::1%eth0": "link-local",
        "::ffff:10.0.0.0/104": "IPv4-mapped",
        "169.254.1.1-169.254.1.9": "link-local",
        "255.255.255.255": "broadcast",
        "ff02::1": "multicast",
    }
    for address, why in cases.items():
        verdict = review_eip({"operation": "CREATE", "object": eip("bad", address)}, [])
        assert not verdict.allowed and why in verdict.message, (address, verdict.message)
    for fine in ("198.51.100.0/24", "2001:db8::/64", "203.0.113.0-203.0.113.255"):
        assert review_eip({"operation": "CREATE", "object": eip("ok", fine)}, []).allowed, fine


def test_booleans_are_no_as_numbers_and_garbage_used_keys_do_not_raise() -> None:
    """Issue 14 #7: `as: true` passed (a bool is an int); a non-IP key in oldObject.status.used raised."""
    conf = {"operation": "CREATE", "object": {"spec": {"as": True}}}
    assert not review_bgpconf(conf).allowed
    peer = {"operation": "CREATE", "object": {"spec": {"conf": {"peerAs": True, "neighborAddress": "198.51.100.2"}}}}
    assert "peerAs" in review_bgppeer(peer).message
    old = eip("a", "198.51.100.0/28", used={"not-an-ip": "ns/x", "198.51.100.3": "ns/y"})
    new = eip("a", "198.51.100.0/29", used={})
    verdict = review_eip({"operation": "UPDATE", "object": new, "oldObject": old}, [])
    assert verdict.allowed  # .3 stays inside; the garbage key is nobody's address


BAD_REVIEWS = (
    b"{not json",
    b"[1, 2]",
    b'{"request": "x"}',
    b'{"request": {"operation": "CREATE", "object": {"spec": "nope", "metadata": 7}}}',
    b'{"request": {"operation": "UPDATE", "object": {"spec": {"address": 5}}, "oldObject": 3}}',
    b'{"request": {"operation": "CREATE", "object": {"spec": {"conf": {"peerAs": [], "neighborAddress": {}}}}}}',
)


def test_the_webhook_never_answers_500_for_bad_input() -> None:
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from openelb.controller import webhook

    class NoEips:
        async def _items(self) -> Any:
            for _ in ():
                yield None

        def list(self, *_: Any, **__: Any) -> Any:
            return self._items()

    async def scenario() -> list[int]:
        app = webhook.make_app(NoEips())  # type: ignore[arg-type]
        async with TestClient(TestServer(app)) as http:
            codes = []
            for path in (webhook.EIP_PATH, webhook.BGPCONF_PATH, webhook.BGPPEER_PATH):
                for body in BAD_REVIEWS:
                    resp = await http.post(path, data=body, headers={"Content-Type": "application/json"})
                    codes.append(resp.status)
                    if resp.status == 200:
                        answer = await resp.json()
                        assert "allowed" in answer["response"]
            return codes

    codes = asyncio.run(scenario())
    assert 500 not in codes and set(codes) <= {200, 400}, codes


def test_huge_strings_cost_little_and_are_not_echoed() -> None:
    """Issue 14 #7: a 1,000,000-character address cost 5 s of CPU and came back in a 45 MiB answer."""
    import json
    import time

    big = "1" * 1_000_000
    for spec in ({"address": big}, {"address": "198.51.100.0/28", "protocol": "layer2", "interface": big},
                 {"address": "198.51.100.0/28", "namespaces": [big]}):  # fmt: skip
        t0 = time.process_time()
        verdict = review_eip({"operation": "CREATE", "object": {"metadata": {"name": "x"}, "spec": spec}}, [])
        spent = time.process_time() - t0
        answer = json.dumps(response({"request": {"uid": "u"}}, verdict))
        assert not verdict.allowed and len(answer) < 1000 and spent < 0.5, (len(answer), spent)
    peer = {"conf": {"peerAs": big, "neighborAddress": big, "authPassword": big}}
    verdict = review_bgppeer({"operation": "CREATE", "object": {"spec": peer}})
    assert not verdict.allowed and len(verdict.message) < 1000
