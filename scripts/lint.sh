#!/usr/bin/env bash
# lint.sh - run golangci-lint (v2, config in .golangci.yml) over the module.
#
# golangci-lint is built from the Go module proxy into .tools/bin the first
# time (a few minutes) and again only when GOLANGCI_LINT_VERSION changes: the
# version is stamped in .tools/bin/.golangci-lint-version, as deps.sh does
# for promtool. Arguments are passed to `golangci-lint run` (e.g. --fix, or
# package patterns instead of ./...).
# env: GOLANGCI_LINT_VERSION (default v2.15.0), TOOLS_DIR (default <repo>/.tools)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=${TOOLS_DIR:-$root/.tools}
version=${GOLANGCI_LINT_VERSION:-v2.15.0}
bin=$tools/bin/golangci-lint

log() { printf 'lint.sh: %s\n' "$*" >&2; }

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  PATH=/usr/local/go/bin:$PATH
fi

if [ "$(cat "$tools/bin/.golangci-lint-version" 2>/dev/null)" != "$version" ] || [ ! -x "$bin" ]; then
  command -v go >/dev/null || { log "go not found (needed to build golangci-lint)"; exit 1; }
  log "building golangci-lint $version into $tools/bin (takes a few minutes)"
  mkdir -p "$tools/bin"
  # go install pkg@version ignores the current module: built with golangci-lint's own go.mod.
  GOFLAGS=-mod=mod GOBIN=$tools/bin go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$version"
  echo "$version" > "$tools/bin/.golangci-lint-version"
fi

cd "$root"
(($#)) || set -- ./...
exec "$bin" run "$@"
