#!/usr/bin/env bash
# gvisor-shim.sh - build gVisor's own containerd shim (containerd-shim-runsc-v1)
# of the runsc version deps.sh builds, into .tools/runsc/, for make bench's
# memory rows (gVisor's shim with its pause path against this shim's
# custom-runsc-sb). Static, as runsc. Idempotent.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=${TOOLS_DIR:-$root/.tools}
runsc_version=${RUNSC_VERSION:-v0.0.0-20260905035102-160fafc42237}
dir=$tools/runsc
bin=$dir/containerd-shim-runsc-v1

if [ "$(cat "$bin.version" 2>/dev/null)" = "$runsc_version" ] && [ -x "$bin" ]; then
  exit 0
fi
echo "gvisor-shim.sh: building containerd-shim-runsc-v1 $runsc_version into $dir" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The module's main package is gvisor.dev/gvisor/shim: go install names it "shim".
CGO_ENABLED=0 GOFLAGS=-mod=mod GOBIN=$tmp go install "gvisor.dev/gvisor/shim@$runsc_version"
mkdir -p "$dir"
mv "$tmp/shim" "$bin"
echo "$runsc_version" > "$bin.version"
