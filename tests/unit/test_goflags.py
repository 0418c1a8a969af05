"""Go OpenELB's container args run our daemons unchanged (`openelb-behaviour.md` §7.2, §7.4)."""

from __future__ import annotations

import argparse
import logging

import pytest

from openelb import cli, goflags


def parse(*argv: str) -> argparse.Namespace:
    return cli.parser().parse_args(list(argv))


def test_go_openelbs_controller_args() -> None:
    args = parse("controller", "--metrics-addr=:50052", "--webhook-port=443", "--leader-elect")
    opts, notes = cli.controller_options(args)
    assert opts.leader_elect is True and opts.webhook_addr == "0.0.0.0:443" and opts.metrics_addr == ":50052"
    assert notes == []
    for value, expected in (("=false", False), ("=0", False), ("=True", True), ("=1", True)):
        assert cli.controller_options(parse("controller", f"--leader-elect{value}"))[0].leader_elect is expected
    go_only = parse("controller", "--webhook-cert-dir=/tmp/k8s-webhook-server/serving-certs", "--readiness-addr=0")
    opts, notes = cli.controller_options(go_only)
    assert opts.webhook_cert_dir == "/tmp/k8s-webhook-server/serving-certs"  # served from there when present
    assert any("--readiness-addr" in n for n in notes)


def test_go_openelbs_speaker_args(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "node-1")
    monkeypatch.setenv("MEMBER_LIST_SECRET", "from-the-secret")
    args = parse("speaker", "--api-hosts=:50051", "--enable-keepalived-vip=false", "--enable-layer2=false")
    opts, notes = cli.speaker_options(args)
    assert (opts.enable_layer2, opts.enable_vip, opts.enable_bgp) == (False, False, True)
    assert opts.keys == (b"from-the-secret",) and opts.node == "node-1" and opts.secret_name is None
    assert notes == [] and opts.api_hosts == ":50051"  # served (read-only GoBGP API)
    seed = cli.speaker_options(parse("speaker", "--enable-layer2=true", "--bind-addr=198.51.100.7", "--bind-port=7947"))
    assert seed[0].enable_layer2 is True and (seed[0].bind_addr, seed[0].port) == ("198.51.100.7", 7947)
    monkeypatch.delenv("MEMBER_LIST_SECRET")
    assert cli.speaker_options(parse("speaker", "--secret=s3"))[0].keys == (b"s3",)
    # Go's default when nothing is given (warned of at start); our chart's --secret-name otherwise
    assert cli.speaker_options(parse("speaker"))[0].keys == (b"openelb-speakers",)
    ours = cli.speaker_options(parse("speaker", "--secret-name=openelb-memberlist"))[0]
    assert ours.keys == () and ours.secret_name == "openelb-memberlist"
    monkeypatch.setenv("MEMBER_LIST_SECRET", "new\nold\n")  # rotation: the first signs, both verify
    assert cli.speaker_options(parse("speaker", "--secret-name=x"))[0].keys == (b"new", b"old")
    _o, notes = cli.speaker_options(parse("speaker", "--log-path=/var/log/k.log", "--keepalived-args=-D"))
    assert len(notes) == 2 and all("no keepalived runs" in n for n in notes)


def test_klog_flags_are_accepted_and_v_sets_the_level() -> None:
    args = parse("speaker", "--v=2", "--logtostderr", "--log_dir=/tmp", "--alsologtostderr=true")
    assert goflags.log_level(args) == logging.INFO
    notes = goflags.klog_notes(args)
    assert len(notes) == 2 and any("--log-dir=/tmp" in n for n in notes)  # --logtostderr is what we do anyway
    assert goflags.log_level(parse("controller", "-v", "4")) == logging.DEBUG


def test_unknown_and_malformed_flags_fail_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("speaker", "--enable-layer3=true")
    assert exc.value.code == 2 and "--enable-layer3=true" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("controller", "--leader-elect=maybe")
    assert "invalid boolean 'maybe'" in capsys.readouterr().err


def test_go_executables_and_their_version_subcommand(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.argv", ["openelb-speaker", "version"])
    cli.speaker_main()
    assert "openelb-speaker version" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", ["openelb-controller", "--no-such-flag"])
    with pytest.raises(SystemExit):
        cli.controller_main()
    assert "--no-such-flag" in capsys.readouterr().err  # unknown flags fail, naming the flag
