#!/usr/bin/env bash
# Build the upstream Kubernetes binaries the lab needs (kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy, kubectl) and etcd 3.6 from the Go module proxy, into a cache
# directory outside the repository. Skips everything when the binaries are already there.
#
#   tools/k8s/build.sh            # prints the directory holding the binaries on its last line
#
# Environment:
#   K8S_VERSION   default v1.35.4 (falls back to FALLBACK_VERSIONS when not served)
#   ETCD_VERSION  default v3.6.16
#   OPENELB_BIN_CACHE  default ${XDG_CACHE_HOME:-$HOME/.cache}/openelb-lab
#   KUBEBUILDER_ASSETS / PATH: if they already hold every binary, nothing is built (envtest convention).
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.35.4}"
FALLBACK_VERSIONS="${FALLBACK_VERSIONS:-v1.36.3 v1.36.1 v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
CACHE="${OPENELB_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/openelb-lab}"
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl)
ALL=("${K8S_CMDS[@]}" etcd)
START=$(date +%s)

say() { printf '[k8s-build +%4ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

has_all() { local d=$1 c; for c in "${ALL[@]}"; do [[ -x "$d/$c" ]] || return 1; done; }

# 1. envtest convention: an existing asset directory wins.
if [[ -n "${KUBEBUILDER_ASSETS:-}" ]] && has_all "$KUBEBUILDER_ASSETS"; then
  say "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"; echo "$KUBEBUILDER_ASSETS"; exit 0
fi
OUT="$CACHE/$K8S_VERSION"
if has_all "$OUT"; then say "using cached binaries in $OUT"; echo "$OUT"; exit 0; fi

command -v go >/dev/null || die "Go is not installed; install Go >= 1.25 (or set KUBEBUILDER_ASSETS to a directory with ${ALL[*]})."
probe="$CACHE"; while [[ ! -d "$probe" ]]; do probe=$(dirname "$probe"); done
avail_kb=$(df -Pk "$probe" | awk 'NR==2{print $4}')
(( avail_kb > 6000000 )) || say "WARNING: less than 6 GB free near $CACHE; the build needs about 5 GB of Go caches."

export CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOFLAGS="${GOFLAGS:-}"

# 2. Pick a served k8s.io/kubernetes version.
kmod_of() { (cd /tmp && go mod download -json "k8s.io/kubernetes@$1" 2>/dev/null) |
  python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("GoMod") or sys.exit(1))'; }
KMOD=""
for v in "$K8S_VERSION" $FALLBACK_VERSIONS; do
  say "resolving k8s.io/kubernetes@$v on the Go module proxy"
  if KMOD=$(kmod_of "$v"); then
    [[ "$v" != "$K8S_VERSION" ]] && say "NOTE: $K8S_VERSION is not served; building $v instead"
    K8S_VERSION=$v; break
  fi
  KMOD=""
done
[[ -n "$KMOD" ]] || die "no k8s.io/kubernetes version could be downloaded (tried $K8S_VERSION $FALLBACK_VERSIONS); check 'go env GOPROXY'."
OUT="$CACHE/$K8S_VERSION"; WORK="$CACHE/build-$K8S_VERSION"
mkdir -p "$OUT" "$WORK/k8s" "$WORK/etcd"

mm="${K8S_VERSION#v1.}"; MINOR="${mm%%.*}"; STAGING_VERSION="v0.${mm}"

# 3. Wrapper module: every staging module k8s requires at v0.0.0 is replaced by its published tag.
build_k8s() {
  cd "$WORK/k8s"; rm -rf go.mod go.sum stub
  mapfile -t STAGING < <( {
    sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\)[[:space:]]*=>[[:space:]]*\./staging/src/.*#\1#p' "$KMOD"
    sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) v0\.0\.0\([[:space:]].*\)\{0,1\}$#\1#p' "$KMOD"
  } | sort -u )
  say "${#STAGING[@]} staging modules -> $STAGING_VERSION"
  local goline godebug m d c
  goline=$(awk '$1=="go"{print $2; exit}' "$KMOD")
  godebug=$(grep -m1 '^godebug ' "$KMOD" || true)
  {
    printf 'module local.invalid/openelb-k8s-build\n\ngo %s\n' "$goline"
    [[ -n "$godebug" ]] && printf '\n%s\n' "$godebug"
    printf '\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
    for m in "${STAGING[@]}"; do printf '\t%s => %s %s\n' "$m" "$m" "$STAGING_VERSION"; done
    printf ')\n'
  } > go.mod
  for m in "${STAGING[@]}"; do
    if ! (cd /tmp && go list -m -json "$m@$STAGING_VERSION" >/dev/null 2>&1); then
      say "WARNING: $m@$STAGING_VERSION not served -> local stub"
      d="stub/${m#k8s.io/}"; mkdir -p "$d"; printf 'module %s\n\ngo 1.22\n' "$m" > "$d/go.mod"
      go mod edit -replace="$m=./$d"
    fi
  done
  for c in "${K8S_CMDS[@]}"; do go mod edit -tool="k8s.io/kubernetes/cmd/$c"; done
  say "go mod tidy (downloads ~1 GB of modules on a cold machine)"
  go mod tidy
  local date ld p pkgs=()
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ); ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X '$p.gitVersion=${K8S_VERSION}' -X '$p.gitMajor=1' -X '$p.gitMinor=${MINOR}'"
    ld+=" -X '$p.gitTreeState=clean' -X '$p.buildDate=${date}'"
  done
  for c in "${K8S_CMDS[@]}"; do
    [[ -x "$OUT/$c" ]] && { say "$c already built"; continue; }
    say "compiling $c (cold: several minutes each; later ones reuse the build cache)"
    go build -p "$(nproc)" -trimpath -tags=selinux,notest -ldflags="$ld" -o "$OUT/$c.tmp" "k8s.io/kubernetes/cmd/$c"
    mv "$OUT/$c.tmp" "$OUT/$c"; say "$c done"
  done
}

build_etcd() {
  [[ -x "$OUT/etcd" ]] && { say "etcd already built"; return; }
  cd "$WORK/etcd"; rm -f go.mod go.sum
  printf 'module local.invalid/openelb-etcd-build\n\ngo 1.25.0\n' > go.mod
  go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION" -tool=go.etcd.io/etcd/server/v3
  say "compiling etcd $ETCD_VERSION"
  go mod tidy
  go build -trimpath -ldflags='-s -w' -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$OUT/etcd.tmp" "$OUT/etcd"; say "etcd done"
}

KMOD_FILE="$WORK/kubernetes.go.mod"; printf '%s\n' "$(cat "$KMOD")" > "$KMOD_FILE"; KMOD="$KMOD_FILE"
build_k8s
build_etcd
"$OUT/kube-apiserver" --version >&2
"$OUT/etcd" --version | head -1 >&2
printf '%s\n' "$K8S_VERSION" > "$OUT/VERSION"
say "all binaries ready in $OUT (build took $(( $(date +%s) - START ))s)"
echo "$OUT"
