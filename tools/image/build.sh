#!/usr/bin/env bash
# Build OpenELB's OCI image on this machine from what it can reach: Debian's packages (mmdebstrap)
# and the locked wheels from PyPI (uv.lock, hashes checked), packed with umoci. No registry pulls,
# no Docker engine. The Dockerfile stays for users with Docker and installs the same contents.
#
#   tools/image/build.sh          # prints the OCI layout directory (image tag: $TAG) last
#
# Reproducible: the timestamps come from the last commit (SOURCE_DATE_EPOCH), the layer is
# mmdebstrap's tarball added verbatim, bytecode is compiled with hash-based invalidation; the
# same commit and the same Debian archive state give the same digest.
# Cached by the inputs' hash (commit tree, uv.lock, this script) in $OPENELB_BIN_CACHE/image-<hash>.
#
# Environment: OPENELB_BIN_CACHE (default ~/.cache/openelb-lab), DEBIAN_MIRROR (default
# http://deb.debian.org/debian; a snapshot.debian.org URL pins the archive state), SUITE (bookworm).
set -euo pipefail
cd "$(dirname "$0")/../.."
START=$(date +%s)
say() { printf '[image +%4ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

SUITE="${SUITE:-bookworm}"
TAG="${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}"
CACHE="${OPENELB_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/openelb-lab}"
for tool in mmdebstrap umoci uv python3; do
  command -v "$tool" >/dev/null || die "$tool is missing: scripts/setup installs it (apt: mmdebstrap umoci)"
done
[[ $(id -u) -eq 0 ]] || die "mmdebstrap builds the root filesystem as root here; run as root"

# Inputs: the product's sources as committed plus any local change to them, the lock, this script.
KEY=$( { git ls-files -s src pyproject.toml uv.lock README.md tools/image; git diff HEAD -- src pyproject.toml uv.lock tools/image; } |
  sha256sum | cut -c1-16)
OUT="$CACHE/image-$KEY"
if [[ -f "$OUT/oci/index.json" ]]; then say "cached: $OUT/oci:$TAG"; echo "$OUT/oci"; exit 0; fi
# The timestamps: the last commit of those inputs (not of the repository: a commit of docs or tests
# alone would change every timestamp, and so the digest, under the same cache key).
EPOCH=$(git log -1 --format=%ct -- src pyproject.toml uv.lock README.md tools/image 2>/dev/null || echo 0)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/openelb-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

say "wheels: openelb from this checkout, its locked dependencies from PyPI (no dev group, no lab)"
mkdir -p "$WORK/wheels"
SOURCE_DATE_EPOCH=$EPOCH uv build --quiet --package openelb --wheel --out-dir "$WORK/wheels" >&2
uv export --quiet --frozen --no-dev --package openelb --no-emit-project --format requirements-txt > "$WORK/requirements.txt"
# Debian bookworm: CPython 3.11, glibc 2.36. Binary wheels only (no compiler in the image or here).
python3 -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes --only-binary=:all: \
  --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
  --platform manylinux_2_36_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any \
  -r "$WORK/requirements.txt" -d "$WORK/wheels" >&2
say "$(ls "$WORK/wheels" | wc -l) wheels"

MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
say "root filesystem: Debian $SUITE from $MIRROR (python3.11, iproute2, gobgpd), wheels installed"
# iproute2: the speaker's addresses and `ip route get`; gobgpd: its `gobgp` CLI, for Go OpenELB's
# readiness probe and operators' `gobgp neighbor`. No pip, no compiler, no docs in the result.
SOURCE_DATE_EPOCH=$EPOCH mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
  --include=python3.11,python3.11-venv,iproute2,gobgpd,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook="copy-in $WORK/wheels /tmp" \
  --customize-hook='chroot "$1" python3.11 -m venv /app/.venv' \
  --customize-hook='chroot "$1" sh -c "/app/.venv/bin/python -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check /tmp/wheels/*.whl"' \
  --customize-hook='chroot "$1" /app/.venv/bin/python -m pip uninstall --quiet --yes pip setuptools' \
  --customize-hook='chroot "$1" /app/.venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /app/.venv/lib' \
  --customize-hook='rm -rf "$1/tmp/wheels" "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
  --customize-hook='echo "openelb:x:65532:65532::/nonexistent:/usr/sbin/nologin" >> "$1/etc/passwd"' \
  --customize-hook='echo "openelb:x:65532:" >> "$1/etc/group"' \
  "$SUITE" "$WORK/rootfs.tar" "$MIRROR" >&2

say "OCI image: one layer, entrypoint openelb, user root (as Go OpenELB's images; the chart sets 65532 for the controller)"
mkdir -p "$OUT.tmp"; rm -rf "$OUT.tmp/oci"
created=$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)
umoci init --layout "$OUT.tmp/oci"
umoci new --image "$OUT.tmp/oci:$TAG"
umoci raw add-layer --image "$OUT.tmp/oci:$TAG" --history.created "$created" \
  --history.created_by "tools/image/build.sh (mmdebstrap $SUITE + locked wheels)" "$WORK/rootfs.tar"
umoci config --image "$OUT.tmp/oci:$TAG" --created "$created" --history.created "$created" \
  --config.entrypoint openelb --config.cmd --help --config.user 0:0 --config.workingdir / \
  --config.env PATH=/app/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.env PYTHONDONTWRITEBYTECODE=1 --config.env PYTHONUNBUFFERED=1 \
  --author "OpenELB (Python)" --architecture amd64 --os linux
umoci gc --layout "$OUT.tmp/oci"
rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"
# Earlier builds (other inputs) are dead weight of ~100 MB each: keep only this one.
find "$CACHE" -maxdepth 1 -name 'image-*' ! -name "image-$KEY" -exec rm -rf {} +
manifest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$OUT/oci/index.json")
size=$(du -sm "$OUT/oci/blobs" | cut -f1)
say "image $TAG: manifest $manifest, ${size} MB compressed, built in $(( $(date +%s) - START ))s"
echo "$OUT/oci"
