"""The OCI image a user runs, built by tools/image/build.sh and run with a real OCI runtime (runc;
crun 1.8 refuses this machine's hybrid cgroup hierarchy).

It must hold what the daemons need at run time (a missing library, module or tool fails here, not
on a user's node), nothing they do not (no tests, no lab, no pip, no compiler), and the same
configuration as the Dockerfile, which cannot be built here (no Docker engine): entrypoint,
default command, environment, user and the Debian tools are compared with what it declares.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TAG = re.search(r'^version = "(.*)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)  # type: ignore[union-attr]

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def layout() -> Path:
    if os.geteuid() != 0:
        pytest.skip("building and running the image needs root (mmdebstrap, runc)")
    for tool in ("mmdebstrap", "umoci", "runc"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: scripts/setup installs it")
    out = subprocess.run([str(ROOT / "tools" / "image" / "build.sh")], stdout=subprocess.PIPE, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bundle(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    target = tmp_path_factory.mktemp("bundle") / "b"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{TAG}", str(target)], check=True, capture_output=True)
    yield target
    shutil.rmtree(target, ignore_errors=True)


def image_config(layout: Path) -> dict[str, object]:
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest).read_text())
    config_digest = manifest["config"]["digest"].split(":", 1)[1]
    return json.loads((layout / "blobs" / "sha256" / config_digest).read_text())  # type: ignore[no-any-return]


def run(bundle: Path, args: list[str], user: int = 0, caps: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`args` in the image under runc, in its own namespaces (network: only lo), as `user`."""
    spec = json.loads((bundle / "config.json").read_text())
    proc = spec["process"]
    proc["args"], proc["terminal"] = args, False
    proc["user"] = {"uid": user, "gid": user}
    names = [f"CAP_{c}" for c in caps]
    proc["capabilities"] = {k: names for k in ("bounding", "effective", "permitted")}
    (bundle / "config.json").write_text(json.dumps(spec))
    name = f"openelb-image-test-{os.getpid()}"
    try:
        return subprocess.run(
            ["runc", "run", "--bundle", str(bundle), name], capture_output=True, text=True, timeout=120, check=False
        )
    finally:
        subprocess.run(["runc", "delete", "--force", name], capture_output=True, check=False)


def test_the_daemons_and_their_tools_run_from_the_image(bundle: Path) -> None:
    probe = (
        "import openelb.controller.main, openelb.speaker.main, openelb.speaker.bgp.gobgp_api, "
        "openelb.speaker.hostnet, openelb.nodeproxy.forward, cryptography.hazmat.bindings._rust, grpc, yaml; "
        "print('imports ok')"
    )
    out = run(bundle, ["python", "-c", probe])
    assert out.returncode == 0 and "imports ok" in out.stdout, out.stderr
    for args in (["openelb", "--version"], ["openelb-speaker", "version"], ["gobgp", "--version"], ["ip", "-V"]):
        out = run(bundle, args)
        assert out.returncode == 0, (args, out.stderr)
    # The controller runs as 65532 without capabilities (the chart): the CRDs it serves render.
    out = run(bundle, ["openelb", "crds"], user=65532)
    assert out.returncode == 0 and "kind: CustomResourceDefinition" in out.stdout, out.stderr
    # The speaker's netlink work with the capabilities the manifest gives it: an address on a
    # dummy link (a bridge where the kernel has no dummy driver, as the speaker falls back) in the
    # container's own network namespace.
    script = (
        "{ ip link add openelb0 type dummy || ip link add openelb0 type bridge; } "
        "&& ip addr add 192.0.2.10/32 dev openelb0 && ip -br addr show openelb0"
    )
    out = run(bundle, ["sh", "-c", script], caps=("NET_ADMIN", "NET_RAW"))
    assert out.returncode == 0 and "192.0.2.10/32" in out.stdout, out.stderr


def test_the_image_holds_no_tests_lab_pip_or_compiler(bundle: Path) -> None:
    rootfs = bundle / "rootfs"
    site = next((rootfs / "app" / ".venv" / "lib").glob("python3.11/site-packages"))
    present = {p.name for p in site.iterdir()}
    assert "openelb" in present
    for absent in ("openelb_lab", "tests", "pip", "setuptools", "pytest", "mypy", "ruff"):
        assert absent not in present, absent
    for tool in ("gcc", "cc", "make"):
        assert not (rootfs / "usr" / "bin" / tool).exists(), tool
    for docs in ("doc", "man"):  # dpkg's path-exclude: the directories stay, empty
        assert not any(p.is_file() for p in (rootfs / "usr" / "share" / docs).rglob("*")), docs
    passwd = (rootfs / "etc" / "passwd").read_text()
    assert "openelb:x:65532:65532:" in passwd


def test_the_image_is_configured_as_the_dockerfile_declares(layout: Path, bundle: Path) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    final = dockerfile.rsplit("\nFROM ", 1)[1]  # the runtime stage
    config = image_config(layout)["config"]
    assert isinstance(config, dict)
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", final, re.M).group(1))  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", final, re.M).group(1))  # type: ignore[union-attr]
    assert config["Entrypoint"] == entrypoint and config["Cmd"] == cmd
    env = dict(e.split("=", 1) for e in config["Env"])
    for pair in re.search(r"^ENV (.*)$", final, re.M).group(1).split():  # type: ignore[union-attr]
        key, value = pair.split("=", 1)
        if key == "PATH":  # the Dockerfile's base image PATH has /usr/local first (python:3.11-slim)
            assert env[key].startswith(value.split("$PATH")[0].rstrip(":")), env[key]
        else:
            assert env[key] == value, key
    assert "USER " not in final and config.get("User") in ("0:0", "0", "root")  # root, as Go's images
    apt = re.search(r"apt-get install -y --no-install-recommends ([^\\\n&]+)", final).group(1).split()  # type: ignore[union-attr]
    build = (ROOT / "tools" / "image" / "build.sh").read_text()
    included = re.search(r"--include=(\S+)", build).group(1).split(",")  # type: ignore[union-attr]
    assert set(apt) <= set(included), (apt, included)
    assert "useradd --uid 65532" in final


def test_same_inputs_same_digest(layout: Path) -> None:
    """Rebuilding from the same commit gives the same manifest digest (the cache is bypassed)."""
    first = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    env = {**os.environ, "OPENELB_BIN_CACHE": str(layout.parent.parent / "rebuild")}
    out = subprocess.run(
        [str(ROOT / "tools" / "image" / "build.sh")], stdout=subprocess.PIPE, text=True, check=True, env=env
    )
    again = Path(out.stdout.strip().splitlines()[-1])
    try:
        assert json.loads((again / "index.json").read_text())["manifests"][0]["digest"] == first
    finally:
        shutil.rmtree(again.parent.parent, ignore_errors=True)
