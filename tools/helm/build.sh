#!/usr/bin/env bash
# Build `helm` (v3) from the helm.sh/helm/v3 Go module into the lab's binary cache; skip when it is
# already there or on PATH with the wanted version. Prints the helm binary's path on its last line.
#
# Environment: HELM_VERSION (default v3.19.0), OPENELB_BIN_CACHE (default ~/.cache/openelb-lab).
set -euo pipefail
HELM_VERSION="${HELM_VERSION:-v3.19.0}"
CACHE="${OPENELB_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/openelb-lab}"
OUT="$CACHE/helm-$HELM_VERSION"
START=$(date +%s)
say() { printf '[helm-build +%4ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

if [[ -x "$OUT/helm" ]]; then say "using cached $OUT/helm"; echo "$OUT/helm"; exit 0; fi
if command -v helm >/dev/null && helm version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
  say "using $(command -v helm)"; command -v helm; exit 0
fi
command -v go >/dev/null || { say "ERROR: Go is not installed; install Go or put helm $HELM_VERSION on PATH"; exit 1; }
mkdir -p "$OUT"
say "building helm $HELM_VERSION from the Go module proxy (about 2-4 minutes cold)"
export CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOBIN="$OUT"
ldflags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
if ! go install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2; then
  rm -rf "$OUT"; say "ERROR: go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed; check 'go env GOPROXY'"; exit 1
fi
say "built $OUT/helm"
echo "$OUT/helm"
