#!/usr/bin/env bash
# crictl-smoke.sh [HANDLER...] - crictl v1.34.0 smoke test through CRI on the
# same private containerd critest.sh uses (cri-lib.sh). For each handler
# (default: custom-runc custom-runsc runc) it runs two pods:
#
#   hostnet  host network (no CNI, no hostname), one busybox container
#   cni      pod network on the CNI bridge, nginx-lite + busybox containers
#
# and steps through runp, create, start, logs, exec, stats (container and pod;
# the pods get cgroup_parent /peer-smoke, which pod stats need), stop, rm. It checks
# that ONE shim process serves each pod: the shim server processes of this
# daemon whose arguments carry the pod sandbox id (shims are started with
# "-id <first container>", and a pod's first container is its sandbox) must
# number exactly 1 once all containers run, and 0 after rmp.
#
# Output: _output/peer/crictl-smoke.txt (one line per step), crictl-smoke.log
# (commands and their output), crictl-smoke.containerd.log. Exit 1 if a step failed.
# env: ENDPOINT=unix:///path/containerd.sock to use an already running daemon
#      configured like templates/containerd-cri.toml.in instead of starting one.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$PEER/cri-lib.sh"

handlers=("$@"); ((${#handlers[@]})) || handlers=(custom-runc custom-runsc runc)
[ "$(id -u)" = 0 ] || die "needs root"
need_tools
mkdir -p "$OUT"
summary=$OUT/crictl-smoke.txt logf=$OUT/crictl-smoke.log
: > "$logf"

work=$(mktemp -d /tmp/peer-smoke-XXXXXX)
cleanup() {
  local rc=$?
  if [ -n "${ENDPOINT:-}" ]; then
    [ -n "${POD:-}" ] && X rmp -f "$POD" >/dev/null 2>&1
  else
    cri_stop   # removes $work/ctrd
  fi
  rm -rf "$work"
  # the pods' cgroup parent (cri/pod-*.json), empty once the pods are gone
  rmdir /sys/fs/cgroup/*/peer-smoke /sys/fs/cgroup/peer-smoke 2>/dev/null || true
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${ENDPOINT:-}" ]; then
  CRI_EP=$ENDPOINT CRI_SOCK=${ENDPOINT#unix://}
else
  cri_start "$work/ctrd" "$OUT/crictl-smoke.containerd.log"
fi

results=() failed=0
# step NAME CMD...: run CMD (output to the log), record PASS/FAIL and its time.
step() {
  local name=$1 t0 rc=0; shift
  t0=$(date +%s%N)
  { echo "\$ $*"; "$@"; } >> "$logf" 2>&1 || rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  if [ $rc = 0 ]; then results+=("PASS  $cur  $name  (${ms}ms)")
  else results+=("FAIL  $cur  $name  (rc $rc, ${ms}ms, see $logf)"); failed=1; fi
  return $rc
}
# out FILE CMD...: run CMD, keep stdout in FILE and in the log
out() { local f=$1; shift; "$@" > "$f"; cat "$f"; }
# expect REGEX CMD...: run CMD, log its output, succeed if it exits 0 and
# its output matches REGEX
expect() {
  local re=$1 o rc=0; shift
  o=$("$@" 2>&1) || rc=$?
  printf '%s\n' "$o"
  [ $rc = 0 ] && grep -qE -- "$re" <<< "$o"
}

shim_count() { # shim_count POD HANDLER EXPECTED
  local n; n=$(shim_pids_for "$1" "$2" | wc -l)
  echo "shim server processes naming pod $1: $n (want $3): $(shim_pids_for "$1" "$2" | tr '\n' ' ')"
  [ "$n" = "$3" ]
}
shim_gone() { # wait until no shim names the pod
  local i
  for i in $(seq 1 50); do [ -z "$(shim_pids_for "$1" "$2")" ] && return 0; sleep 0.2; done
  shim_count "$1" "$2" 0
}

# pod HANDLER KIND: one pod's life. Returns early (pod removed by the caller)
# when a step it depends on fails.
pod() {
  local h=$1 kind=$2 d=$work/$1-$2 shimkind=custom
  [ "$h" = runc ] && shimkind=runc
  cur="$h/$kind"
  mkdir -p "$d/logs"
  sed -e "s|@HANDLER@|$h|g" -e "s|@LOGDIR@|$d/logs|g" "$PEER/cri/pod-$kind.json" > "$d/pod.json"
  POD=
  step runp out "$d/pod" X runp --runtime "$h" "$d/pod.json" || return 1
  POD=$(cat "$d/pod")
  step "runtimeHandler=$h" expect "\"runtimeHandler\": \"$h\"" X inspectp "$POD"
  step create out "$d/cid" X create --no-pull "$POD" "$PEER/cri/ctr-busybox.json" "$d/pod.json" || return 1
  local cid; cid=$(cat "$d/cid")
  step start X start "$cid" || return 1
  if [ "$kind" = cni ]; then
    step create-web out "$d/web" X create --no-pull "$POD" "$PEER/cri/ctr-nginx.json" "$d/pod.json" || return 1
    step start-web X start "$(cat "$d/web")" || return 1
  fi
  sleep 2
  step logs expect 'hello from' X logs "$cid"
  step exec expect '^exec-ok uid=0$' X exec "$cid" sh -c 'echo exec-ok uid=$(id -u)'
  if [ "$kind" = cni ]; then
    step "exec hostname" expect '^smoke-cni$' X exec "$cid" hostname
    step "http from pod peer" expect Welcome X exec "$cid" wget -qO- http://127.0.0.1/
    local ip
    ip=$(X inspectp "$POD" | grep -o '"ip": *"[0-9.]*"' | head -1 | cut -d'"' -f4)
    step "pod ip $ip from host" expect Welcome curl -fsS -m 5 "http://$ip/"
  else
    step "exec hostname = host's" expect "^$(hostname)\$" X exec "$cid" hostname
    # host network: the container must see the host's interfaces (the one
    # carrying the default route), not a private namespace with only lo
    local hostif
    hostif=$(ip route show default | awk '{print $5; exit}')
    step "sees host interface $hostif" expect "^ *$hostif:" X exec "$cid" cat /proc/net/dev
  fi
  step stats expect workingSetBytes X stats -o json --id "$cid"
  step statsp X statsp --id "$POD"
  step "one shim for the pod" shim_count "$POD" "$shimkind" 1
  step stop X stop "$cid"
  step rm X rm "$cid"
  step stopp X stopp "$POD"
  step rmp X rmp "$POD" && POD=
  step "shim exited after rmp" shim_gone "$(cat "$d/pod")" "$shimkind"
}

start=$(date +%s)
for h in "${handlers[@]}"; do
  for kind in hostnet cni; do
    log "pod $kind, handler $h"
    pod "$h" "$kind" || true
    if [ -n "${POD:-}" ]; then X rmp -f "$POD" >> "$logf" 2>&1 || true; POD=; fi
  done
done
secs=$(( $(date +%s) - start ))
{
  echo "crictl $CRI_TOOLS_VERSION smoke, containerd $CONTAINERD_VERSION, handlers ${handlers[*]}, ${secs}s"
  echo "shim: containerd-shim-custom-v2 $("$SHIM_BIN_DIR/containerd-shim-custom-v2" --version 2>/dev/null | sed -n 's/^ *Version: *//p') ($SHIM_BIN_DIR)"
  printf '%s\n' "${results[@]}"
  [ $failed = 0 ] && echo "SMOKE OK" || echo "SMOKE FAILED"
} > "$summary"
cat "$summary"
exit $failed
