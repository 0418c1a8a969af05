#!/usr/bin/env bash
# Build MetalLB's controller and speaker (static, CGO_ENABLED=0) from the Go module proxy, with its
# CRDs from the same module, into a cache directory outside the repository. Only the peer
# benchmarks call this (bench/failover.py --peer metallb, bench/controller.py --peer metallb);
# scripts/test never does. Skips everything when the binaries are already there.
#
#   tools/peers/metallb.sh        # prints the directory holding controller, speaker, crd/ last
#
# Environment:
#   METALLB_VERSION   default v0.15.2 (the newest 0.15 the proxy serves; pinned so figures compare)
#   OPENELB_BIN_CACHE default ${XDG_CACHE_HOME:-$HOME/.cache}/openelb-lab
set -euo pipefail

METALLB_VERSION="${METALLB_VERSION:-v0.15.2}"
MODULE=go.universe.tf/metallb
CACHE="${OPENELB_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/openelb-lab}"
OUT="$CACHE/metallb-$METALLB_VERSION"
START=$(date +%s)

say() { printf '[metallb-build +%4ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

if [[ -x "$OUT/controller" && -x "$OUT/speaker" && -f "$OUT/crd/metallb.io_ipaddresspools.yaml" ]]; then
  say "using cached MetalLB $METALLB_VERSION in $OUT"; echo "$OUT"; exit 0
fi
command -v go >/dev/null || die "Go is not installed; install Go >= 1.24 to build MetalLB for the peer benchmarks."
export CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOFLAGS="${GOFLAGS:-}"

say "downloading $MODULE@$METALLB_VERSION from the Go module proxy"
SRC=$(cd /tmp && go mod download -json "$MODULE@$METALLB_VERSION" |
  python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error", "no Dir")))') ||
  die "$MODULE@$METALLB_VERSION is not served by $(go env GOPROXY); set METALLB_VERSION to one that 'go list -m -versions $MODULE' lists."

# The module cache is read-only and a module's own replace directives only apply when it is the
# main module: build from a writable copy, as MetalLB's own Makefile builds from its checkout.
WORK="$CACHE/build-metallb-$METALLB_VERSION"
rm -rf "$WORK"; mkdir -p "$WORK" "$OUT/crd"
cp -r "$SRC/." "$WORK/"; chmod -R u+w "$WORK"
cd "$WORK"
ld="-s -w -X $MODULE/internal/version.gitCommit=$METALLB_VERSION-modproxy -X $MODULE/internal/version.gitBranch=$METALLB_VERSION"
for c in controller speaker; do
  say "compiling $c (cold: a few minutes; downloads its modules)"
  go build -p "$(nproc)" -trimpath -ldflags="$ld" -o "$OUT/$c.tmp" "./$c"
  mv "$OUT/$c.tmp" "$OUT/$c"
done
# The CRD bases, not the kustomized ones: the patches add a conversion webhook (bgppeers) that
# needs MetalLB's webhook Service, which an out-of-cluster run does not have.
cp config/crd/bases/*.yaml "$OUT/crd/"
printf '%s\n' "$METALLB_VERSION" > "$OUT/VERSION"
rm -rf "$WORK"
say "MetalLB $METALLB_VERSION ready in $OUT (build took $(( $(date +%s) - START ))s)"
echo "$OUT"
