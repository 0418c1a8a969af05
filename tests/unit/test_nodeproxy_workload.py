"""NodeProxy's pure part: Go OpenELB's names, least privilege, what a Service publishes."""

from __future__ import annotations

from lightkube.resources.core_v1 import Service

from openelb.api import names
from openelb.controller import servicepolicy as sp
from openelb.nodeproxy import workload as wl


def test_names_follow_go_openelb_and_stay_valid() -> None:
    assert wl.workload_name("default", "web") == "node-proxy-web-default"
    long = wl.workload_name("n" * 40, "s" * 40)
    assert len(long) <= 63 and long.startswith("node-proxy-") and long != wl.workload_name("n" * 40, "s" * 41)


def test_manifest_is_least_privilege_and_carries_the_ports() -> None:
    spec = wl.proxy_spec("ns/web", "daemonset", ["198.51.100.10", "2001:db8::a"], [("TCP", 8443), ("UDP", 5300)])
    body = wl.manifest(spec, "openelb-system", "docker.io/openelb/openelb-python:0.1.0")
    assert body["kind"] == "DaemonSet" and body["metadata"]["name"] == "node-proxy-web-ns"
    assert body["metadata"]["annotations"][names.ANNOTATION_NODE_PROXY_TYPE] == "ns"  # (sic) Go's
    pod = body["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["hostNetwork"] is True and pod["automountServiceAccountToken"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}  # no port below 1024: nothing at all
    assert c["securityContext"]["runAsNonRoot"] is True
    assert c["args"] == ["forward", "--ready-name=node-proxy-web-ns", "--to=198.51.100.10", "--to=2001:db8::a",
                         "--port=tcp/8443", "--port=udp/5300"]  # fmt: skip
    assert [(p["protocol"], p["hostPort"]) for p in c["ports"]] == [("TCP", 8443), ("UDP", 5300)]
    probe = c["readinessProbe"]["exec"]["command"]
    assert probe == ["openelb", "forward", "--check", "node-proxy-web-ns"]  # our relay, not the port
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0] == {"key": names.LABEL_NODE_PROXY_EXCLUDE, "operator": "DoesNotExist"}
    low = wl.manifest(wl.proxy_spec("ns/web", "deployment", ["198.51.100.10"], [("TCP", 80)]), "x", "img")
    assert low["kind"] == "Deployment" and low["spec"]["strategy"] == {"type": "Recreate"}
    low_sc = low["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert low_sc["capabilities"]["add"] == ["NET_BIND_SERVICE"]
    # no ambient capabilities in Kubernetes: a non-root user loses NET_BIND_SERVICE at exec
    assert low_sc["runAsUser"] == 0 and low_sc["runAsNonRoot"] is False and low_sc["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["runAsUser"] == 65532


def test_published_addresses_are_sorted_and_ingress_prefers_external() -> None:
    addrs = {
        "a": {"InternalIP": ("198.18.0.12", "2001:db8::12")},
        "b": {"InternalIP": ("198.18.0.11",), "ExternalIP": ("203.0.113.5",)},
    }
    pub = wl.published({"a", "b"}, addrs)
    assert pub.internal == ("198.18.0.11", "198.18.0.12", "2001:db8::12")
    assert pub.external == ("203.0.113.5",) and pub.ingress == ("203.0.113.5",)
    assert wl.published({"a"}, addrs).ingress == ("198.18.0.12", "2001:db8::12")
    assert wl.published(set(), addrs).annotations() == {
        names.ANNOTATION_NODE_PROXY_EXTERNAL_IP: None,
        names.ANNOTATION_NODE_PROXY_INTERNAL_IP: None,
    }


def test_a_node_proxy_service_gets_no_eip_ip() -> None:
    def svc(**ann: str) -> Service:
        return Service.from_dict({
            "metadata": {"name": "s", "namespace": "n", "annotations": {names.ANNOTATION_LB: "openelb", **ann}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
        })  # fmt: skip

    policy = sp.Policy()
    assert sp.is_ours(svc(), policy) and not sp.is_node_proxy(svc(), policy)
    proxied = svc(**{names.ANNOTATION_NODE_PROXY_TYPE: "daemonset"})
    assert sp.is_node_proxy(proxied, policy) and not sp.is_ours(proxied, policy)
    wrong = svc(**{names.ANNOTATION_NODE_PROXY_TYPE: "bogus"})
    assert not sp.is_ours(wrong, policy)  # reported by NodeProxy, not given an Eip IP by mistake
