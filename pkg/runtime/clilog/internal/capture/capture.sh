#!/usr/bin/env bash
# capture.sh - recapture pkg/runtime/clilog/testdata/*.jsonl from the real
# runtimes: runc, crun, the runsc scripts/deps.sh builds, and Debian's runsc.
# Root; it starts containers, one runtime at a time under the machine's
# heavy-run lock. A runtime that is not installed is skipped. Review the
# diff: classify_test.go then says which messages no longer classify.
#
# env: RUNC (default runc), CRUN (crun), RUNSC (<repo>/.tools/runsc/runsc),
#      RUNSC_DEBIAN (/usr/bin/runsc), HEAVY_LOCK (/work/heavy.lock)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../../../.." && pwd)
out=$repo/pkg/runtime/clilog/testdata
lock=${HEAVY_LOCK:-/work/heavy.lock}
PATH=$PATH:/usr/local/go/bin

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$repo" && go build -o "$tmp/capture" ./pkg/runtime/clilog/internal/capture)

capture() { # capture OUT-NAME capture-flags...
  local name=$1; shift
  echo "capture.sh: $name" >&2
  if [ -e "$lock" ]; then
    flock "$lock" "$tmp/capture" -out "$out/$name.jsonl" "$@"
  else
    "$tmp/capture" -out "$out/$name.jsonl" "$@"
  fi
}
installed() { command -v "$1" >/dev/null 2>&1 || { echo "capture.sh: $1 not installed; skipped" >&2; return 1; }; }

runc=${RUNC:-runc}
if installed "$runc"; then
  v=$("$runc" --version | awk 'NR==1 {print $3}')   # 1.1.5+ds1
  capture "runc-${v%%+*}" -runtime "$runc"
fi

crun=${CRUN:-crun}
if installed "$crun"; then
  v=$("$crun" --version | awk 'NR==1 {print $3}')   # 1.8.1
  # crun 1.8 creates no container on a cgroup v1 hybrid host.
  capture "crun-$v" -runtime "$crun" -host-refusal "cgroups in hybrid mode not supported"
fi

runsc=${RUNSC:-$repo/.tools/runsc/runsc}
if installed "$runsc"; then
  # A module build says "VERSION_MISSING"; its module version has the date:
  # v0.0.0-20260905035102-160fafc42237 -> 20260905.
  v=$(go version -m "$runsc" | awk '$1 == "mod" {print $3}')
  v=${v#v0.0.0-}
  capture "runsc-${v:0:8}" -runtime "$runsc" -platform systrap
fi

debian=${RUNSC_DEBIAN:-/usr/bin/runsc}
if installed "$debian"; then
  v=$("$debian" --version | awk 'NR==1 {print $3}')  # 0.0~20221219.0
  v=${v#0.0~}
  # No systrap in 2022; kvm hangs on this VM.
  capture "runsc-${v%%.*}-debian" -runtime "$debian" -platform ptrace
fi
