# shellcheck shell=bash
# lib.sh - helpers shared by the scripts in scripts/peer/ (sourced, not run).
#
# Paths (all derived from the repository root, nothing from /work/shared):
#   $ROOT            repository root
#   $PEER_TOOLS      .tools/peer: bin/ (crictl, critest, containerd-client.test),
#                    images/ (OCI archives), cache stamps
#   $CTRD_BIN        containerd 2.4.2 built by scripts/deps.sh
#   $SHIM_BIN_DIR    bin/ (containerd-shim-custom-v2, from `make build`)
#   $OUT             _output/peer (reports)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PEER=$ROOT/scripts/peer
PEER_TOOLS=${PEER_TOOLS:-$ROOT/.tools/peer}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-2.4.2}
CTRD_BIN=${CTRD_BIN:-$ROOT/.tools/containerd/$CONTAINERD_VERSION/bin}
SHIM_BIN_DIR=${SHIM_BIN_DIR:-$ROOT/bin}
RUNSC_BIN=${RUNSC_BIN:-$ROOT/.tools/runsc/runsc}
OUT=${OUT:-$ROOT/_output/peer}
CNI_BIN=${CNI_BIN:-/usr/lib/cni}
CRI_TOOLS_VERSION=${CRI_TOOLS_VERSION:-v1.34.0}       # crictl, critest
CLIENT_TEST_VERSION=${CLIENT_TEST_VERSION:-v2.4.2}    # containerd integration/client
# The registry must be reachable as "localhost:<port>": containerd's client
# resolver only uses plain HTTP for localhost names by itself.
REG_PORT=${REG_PORT:-5000}
REG=localhost:$REG_PORT

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  PATH=/usr/local/go/bin:$PATH
fi

log() { printf '[%s %s] %s\n' "$(date +%T)" "$(basename "$0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# need_tools: fail early, with the command that fixes it.
need_tools() {
  local t
  for t in crictl critest containerd-client.test; do
    [ -x "$PEER_TOOLS/bin/$t" ] || die "$PEER_TOOLS/bin/$t missing: run scripts/peer/build-tools.sh"
  done
  [ -f "$PEER_TOOLS/images/busybox.tar" ] || die "images missing: run scripts/peer/build-tools.sh"
  [ -x "$CTRD_BIN/containerd" ] || die "$CTRD_BIN/containerd missing: run scripts/deps.sh"
  [ -x "$SHIM_BIN_DIR/containerd-shim-custom-v2" ] || die "$SHIM_BIN_DIR/containerd-shim-custom-v2 missing: run make build"
  command -v docker-registry >/dev/null || die "docker-registry missing: run scripts/peer/build-tools.sh"
  build_peercheck   # now, not first in a cleanup trap
}

# ---- process bookkeeping -------------------------------------------------------
# Every background process a script starts is recorded in STARTED_PIDS and
# stopped (TERM, then KILL after a grace period) by stop_started, newest first.
STARTED_PIDS=()
stop_pid() { # stop_pid PID [GRACE_SECONDS]
  local p=$1 grace=${2:-10} i
  kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  log "pid $p did not exit on TERM, sending KILL"
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
stop_started() {
  local i
  for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${STARTED_PIDS[i]}"; done
  STARTED_PIDS=()
}

# ---- leftovers and the gate: the Go side (integration/cmd/peercheck) ---------
# peercheck ARGS...: run integration/cmd/peercheck, built into .tools/bin on
# first use (go build does nothing when it is current). run-all.sh builds it
# once and exports PEERCHECK, so a run uses one binary throughout. It reuses
# integration/harness, the integration suite's leak cleanup:
#   peercheck leftovers DIR...   runc/runsc containers whose state names DIR/,
#                                processes naming DIR/ or running below it
#                                (and their children), mounts below DIR
#   peercheck pids STRING        pids whose command line contains STRING
#   peercheck gate OUTDIR        the verdict over a run-all.sh run (gate.sh)
build_peercheck() {
  [ -n "${PEERCHECK:-}" ] && return 0
  local bin=$ROOT/.tools/bin/peercheck
  mkdir -p "$(dirname "$bin")"
  (cd "$ROOT" && go build -o "$bin" ./integration/cmd/peercheck) || die "build integration/cmd/peercheck failed"
  PEERCHECK=$bin
}
peercheck() { build_peercheck; RUNSC_BIN=$RUNSC_BIN "$PEERCHECK" "$@"; }

# ---- registry -----------------------------------------------------------------
# start_registry DIR: Debian's docker-registry (distribution 2.8) on
# 127.0.0.1:$REG_PORT, storage in DIR/data, log in DIR/registry.log.
start_registry() {
  local dir=$1 i
  if curl -fsS -m 2 "http://127.0.0.1:$REG_PORT/v2/" >/dev/null 2>&1; then
    die "something already listens on 127.0.0.1:$REG_PORT (set REG_PORT to a free port)"
  fi
  mkdir -p "$dir/data"
  cat > "$dir/registry.yml" <<EOT
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$REG_PORT
EOT
  docker-registry serve "$dir/registry.yml" > "$dir/registry.log" 2>&1 &
  STARTED_PIDS+=("$!")
  for i in $(seq 1 100); do
    curl -fsS -m 1 "http://127.0.0.1:$REG_PORT/v2/" >/dev/null 2>&1 && { log "registry pid $! on 127.0.0.1:$REG_PORT"; return 0; }
    kill -0 "$!" 2>/dev/null || break
    sleep 0.1
  done
  cat "$dir/registry.log" >&2
  die "registry did not come up"
}

# push_images ARCHIVE...: push OCI archives to the registry with plain HTTP
# calls (push-oci.sh); no containerd needed, so nothing stays referenced in the
# daemon under test.
push_images() {
  local a
  for a in "$@"; do "$PEER/push-oci.sh" "$REG" "$a" >/dev/null || die "push $a failed"; done
  log "pushed $# archives to $REG"
}

# ---- containerd ------------------------------------------------------------------
# wait_containerd SOCK PID LOG: until `ctr version` answers.
wait_containerd() {
  local sock=$1 pid=$2 logf=$3 i
  for i in $(seq 1 150); do
    [ -S "$sock" ] && "$CTRD_BIN/ctr" -a "$sock" version >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { tail -20 "$logf" >&2; die "containerd exited"; }
    sleep 0.2
  done
  tail -20 "$logf" >&2; die "containerd did not answer on $sock"
}
