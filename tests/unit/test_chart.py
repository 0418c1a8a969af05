"""The Helm chart and the install manifest: lint, one source of truth, least privilege, and the
selectors OpenELB's chart got wrong. Needs helm (built by tools/helm/build.sh from the Go module)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from openelb.api import crds
from openelb.controller.webhook import webhook_configuration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "openelb"


@pytest.fixture(scope="module")
def helm() -> str:
    found = shutil.which("helm")
    out = subprocess.run([str(REPO / "tools/helm/build.sh")], capture_output=True, text=True, check=False)
    path = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else found
    if not path:
        pytest.skip(f"helm unavailable and could not be built: {out.stderr[-300:]}")
    return path


def render(helm: str, *sets: str, release: str = "openelb", namespace: str = "openelb-system") -> list[dict[str, Any]]:
    argv = [helm, "template", release, str(CHART), "--namespace", namespace, "--include-crds"]
    for s in sets:
        argv += ["--set", s]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_helm_lint(helm: str) -> None:
    out = subprocess.run([helm, "lint", str(CHART), "--strict"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_manifest_is_the_rendered_chart(helm: str) -> None:
    committed = [d for d in yaml.safe_load_all((REPO / "deploy/openelb.yaml").read_text()) if d]
    assert committed == render(helm, "namespace.create=true"), (
        "deploy/openelb.yaml is stale: run tools/render-deploy.sh"
    )


def test_chart_crds_are_the_generated_ones() -> None:
    on_disk = [d for d in yaml.safe_load_all((CHART / "crds/crds.yaml").read_text()) if d]
    assert on_disk == crds.definitions(), "charts/openelb/crds is stale: run tools/render-deploy.sh"


def test_webhook_configuration_matches_the_controller(helm: str) -> None:
    (vwc,) = [d for d in render(helm) if d["kind"] == "ValidatingWebhookConfiguration"]
    expected = webhook_configuration("openelb-admission", service=("openelb-controller", "openelb-system"))
    assert vwc["webhooks"] == expected["webhooks"]


def test_rbac_has_no_wildcards_and_no_secret_reads_beyond_its_own(helm: str) -> None:
    docs = render(helm)
    roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role")]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], role
            if "secrets" in rule["resources"]:
                own = rule.get("resourceNames") in (["openelb-admission"], ["openelb-memberlist"])
                assert set(rule["verbs"]) <= {"create"} or own, rule
                if rule.get("resourceNames") == ["openelb-memberlist"]:
                    assert rule["verbs"] == ["get"], rule  # read, never written by a speaker


def test_no_heartbeat_key_is_shipped_unless_given(helm: str) -> None:
    """A key in a published manifest is everyone's key (issue 14 #8): the controller makes it."""
    secrets = [d["metadata"]["name"] for d in render(helm) if d["kind"] == "Secret"]
    assert "openelb-memberlist" not in secrets
    given = [d for d in render(helm, "speaker.memberlistSecret=s3cret") if d["kind"] == "Secret"]
    assert [d["metadata"]["name"] for d in given] == ["openelb-memberlist"]


def test_monitors_select_the_pods_and_services_they_mean(helm: str) -> None:
    """OpenELB's ServiceMonitors selected `app: openelb-controller`, which nothing carried."""
    docs = render(helm, "controller.monitorEnable=true", "speaker.monitorEnable=true", "prometheusRule.enable=true")
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    (sm,) = by_kind["ServiceMonitor"]
    svc = next(s for s in by_kind["Service"] if s["metadata"]["name"] == "openelb-controller")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert any(p["name"] == sm["spec"]["endpoints"][0]["port"] for p in svc["spec"]["ports"])
    (pm,) = by_kind["PodMonitor"]
    (ds,) = by_kind["DaemonSet"]
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ports = ds["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert any(p["name"] == pm["spec"]["podMetricsEndpoints"][0]["port"] for p in ports)
    (rule,) = by_kind["PrometheusRule"]
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    for metric in ("openelb_pool_addresses_in_use", "openelb_allocation_failures_total"):
        assert metric in exprs


def test_speaker_gets_only_the_three_capabilities_and_host_network(helm: str) -> None:
    (ds,) = [d for d in render(helm) if d["kind"] == "DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    caps = spec["containers"][0]["securityContext"]["capabilities"]
    assert spec["hostNetwork"] is True
    assert caps == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "SYS_NICE"]}
    keys = {t.get("key") for t in spec["tolerations"]}
    assert "node-role.kubernetes.io/control-plane" in keys


def test_release_names_follow_openelb_rules(helm: str) -> None:
    names = {d["metadata"]["name"] for d in render(helm, release="lb") if d["kind"] == "Deployment"}
    assert names == {"lb-openelb-controller"}
    names = {d["metadata"]["name"] for d in render(helm, release="my-openelb") if d["kind"] == "Deployment"}
    assert names == {"my-openelb-controller"}


def test_speaker_modes_follow_openelbs_chart_keys(helm: str) -> None:
    def args(*sets: str) -> list[str]:
        (ds,) = [d for d in render(helm, *sets) if d["kind"] == "DaemonSet"]
        return list(ds["spec"]["template"]["spec"]["containers"][0]["args"])

    assert "--enable-keepalived-vip=true" in args() and "--enable-layer2=true" in args()
    assert "--enable-keepalived-vip=false" in args("speaker.vip=false")
    assert not any(a.startswith("--api-hosts") for a in args())  # ~30 MB: off unless asked for
    served = args("speaker.apiHosts=127.0.0.1:50051")
    assert "--api-hosts=127.0.0.1:50051" in served
    # every variant is what the daemon accepts
    from openelb import cli

    for variant in (args(), served, args("speaker.layer2=false", "speaker.vip=false")):
        opts, _notes = cli.speaker_options(cli.parser().parse_args(["speaker", "--node-name=n", *variant[1:]]))
        assert opts.secret_name == "openelb-memberlist"


def test_controller_variants_are_what_the_daemon_accepts(helm: str) -> None:
    """The chart's controller args, default and with `controller.webhookPort`, parse as the daemon's."""
    from openelb import cli

    for sets in ((), ("controller.webhookPort=8443",)):
        (dep,) = [d for d in render(helm, *sets) if d["kind"] == "Deployment"]
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        opts, _notes = cli.controller_options(cli.parser().parse_args(args))
        assert opts.webhook_addr.endswith(":8443" if sets else ":9443"), opts.webhook_addr
        assert opts.memberlist_secret == "openelb-memberlist" and opts.node_proxy_image.startswith("docker.io/")
