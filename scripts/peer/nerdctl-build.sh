#!/usr/bin/env bash
# nerdctl-build.sh - build nerdctl from the Go module proxy into
# .tools/peer/bin/nerdctl (cached, idempotent: a second run only checks).
#
# `go install github.com/containerd/nerdctl/v2/cmd/nerdctl@V` does not work
# offline: the proxy refuses nerdctl's version list, and nerdctl's go.mod
# replaces github.com/containerd/nerdctl/mod/tigron (unpublished) with a local
# directory. So nerdctl is built as a tool of the wrapper module in
# scripts/peer/nerdctl/, which pins the version (go.mod `tool` line, go.sum)
# and replaces tigron with a stub of the one interface nerdctl's non-test code
# uses (tigron-stub/tig).
#
# Change the version: cd scripts/peer/nerdctl &&
#   GOFLAGS=-mod=mod go get -tool github.com/containerd/nerdctl/v2/cmd/nerdctl@vX.Y.Z
# (served: v2.0.0 v2.0.5 v2.1.3 v2.2.0-v2.2.2 v2.3.4 v2.3.5).
# env: TOOLS_DIR (default <repo>/.tools), FORCE=1 rebuilds.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
tools=${TOOLS_DIR:-$root/.tools}
mod=$root/scripts/peer/nerdctl
out=$tools/peer/bin/nerdctl

log() { printf 'nerdctl-build.sh: %s\n' "$*" >&2; }

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  PATH=/usr/local/go/bin:$PATH
fi
export GOTOOLCHAIN=local

version=$(sed -n 's#^[[:space:]]*github.com/containerd/nerdctl/v2 \(v[^ ]*\).*#\1#p' "$mod/go.mod")
[ -n "$version" ] || { log "no nerdctl version in $mod/go.mod"; exit 1; }

# "nerdctl version 2.3.5"
if [ "${FORCE:-0}" != 1 ] && [ -x "$out" ] &&
   "$out" --version 2>/dev/null | grep -Eq "version v?${version#v}\$"; then
  log "nerdctl $version (cached in $out)"
  exit 0
fi
command -v go >/dev/null || { log "go not found (needed to build nerdctl)"; exit 1; }
log "building nerdctl $version into $out (a few minutes the first time)"
mkdir -p "$(dirname "$out")"
# The version is stamped the way nerdctl's Makefile does (go build leaves it empty).
(cd "$mod" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath \
  -ldflags "-s -w -X github.com/containerd/nerdctl/v2/pkg/version.Version=$version" \
  -o "$out.tmp" github.com/containerd/nerdctl/v2/cmd/nerdctl)
mv "$out.tmp" "$out"
"$out" --version | grep -Eq "version v?${version#v}\$" ||
  { log "built nerdctl does not report version $version"; exit 1; }
log "built $("$out" --version)"
