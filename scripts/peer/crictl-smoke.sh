#!/usr/bin/env bash
# crictl-smoke.sh [HANDLER...] - crictl v1.34.0 smoke test through CRI on the
# same private containerd critest.sh uses (cri-lib.sh). For each handler
# (default: custom-runc custom-runsc custom-runc-sb custom-runsc-sb custom-runc-pool runc) it
# runs two pods:
#
#   hostnet  host network (no CNI, no hostname), busybox + a second busybox
#   cni      pod network on the CNI bridge, busybox + second busybox + nginx-lite
#
# and steps through runp, create, start, logs, exec, hostname, the pod's DNS
# file (/etc/resolv.conf from its dns_config), /dev/shm shared between two
# containers, stats (container and pod; the pods get cgroup_parent
# /peer-smoke, which pod stats need), stop, rm, stopp, rmp. It checks that ONE
# shim process serves each pod: the shim server processes of this daemon
# whose arguments carry the pod sandbox id (shims are started with "-id <first
# container>", and a pod's first container is its sandbox; with sandboxer =
# 'shim' the shim is started for the sandbox id itself) must number exactly 1
# once all containers run, and 0 after rmp. After rmp nothing of the pod may
# be left: no process naming it (shim, runsc sandbox and gofer), no mount
# naming it, no cgroup <parent>/<id>, no CRI sandboxes/<id> directories, no
# sandbox bundle, no runsc state.
#
# The sandboxed handlers (custom-runc-sb, custom-runsc-sb: sandboxer = 'shim',
# containerd's Sandbox API) also must show no pause container: containerd's
# store (ctr -n k8s.io containers ls) holds exactly the pod's app containers;
# and after rmp no namespace-holder process ("containerd-shim-custom-v2
# sandbox-holder") may be left (pods run one at a time).
#
# Output: _output/peer/crictl-smoke.txt (one line per step), crictl-smoke.log
# (commands and their output), crictl-smoke.containerd.log. Exit 1 if a step failed.
# env: ENDPOINT=unix:///path/containerd.sock to use an already running daemon
#      configured like templates/containerd-cri.toml.in instead of starting one.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$PEER/cri-lib.sh"

handlers=("$@"); ((${#handlers[@]})) || handlers=(custom-runc custom-runsc custom-runc-sb custom-runsc-sb custom-runc-pool runc)
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

# only_containers WANT...: containerd's k8s.io store holds exactly these
# containers (a pause pod also has its sandbox container there).
only_containers() {
  local got want
  got=$(ctr_k8s containers ls -q | sort | tr '\n' ' ')
  want=$(printf '%s\n' "$@" | sort | tr '\n' ' ')
  echo "containers in containerd's store: $got(want $want)"
  [ "$got" = "$want" ]
}
# shared_shm FROM TO: a file one container wrote to /dev/shm is seen from the other
shared_shm() {
  local i
  for i in $(seq 1 25); do
    X exec "$2" cat /dev/shm/smoke-ipc 2>/dev/null | grep -q '^shm-from-' && { X exec "$2" cat /dev/shm/smoke-ipc; return 0; }
    sleep 0.2
  done
  echo "container $2 never saw /dev/shm/smoke-ipc written by $1"
  X exec "$1" ls -l /dev/shm
  X exec "$2" ls -l /dev/shm
  return 1
}
# nothing_left POD HANDLER: after rmp, nothing names the pod
nothing_left() {
  local pod=$1 h=$2 bad=0 p d i
  for i in $(seq 1 50); do [ -z "$(peercheck pids "$pod")" ] && break; sleep 0.2; done
  for p in $(peercheck pids "$pod"); do
    echo "process left: $p $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null)"; bad=1
  done
  case $h in *-sb|*-pool)
    for p in $(peercheck pids "containerd-shim-custom-v2 sandbox-holder"); do
      echo "sandbox holder left: $p $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null)"; bad=1
    done ;;
  esac
  if grep -F "$pod" /proc/self/mountinfo; then echo "mounts left (above)"; bad=1; fi
  local dirs=(/sys/fs/cgroup/*/peer-smoke/"$pod" /sys/fs/cgroup/peer-smoke/"$pod"
    "/run/containerd/custom/runsc/k8s.io/$pod")
  if [ -n "$CRI_WORK" ]; then
    dirs+=("$CRI_WORK"/{root,state}/io.containerd.grpc.v1.cri/sandboxes/"$pod"
      "$CRI_WORK"/{root,state}/io.containerd.sandbox.controller.v1.shim/k8s.io/"$pod"
      "$CRI_WORK"/{root,state}/io.containerd.runtime.v2.task/k8s.io/"$pod")
  fi
  for d in "${dirs[@]}"; do
    if [ -e "$d" ]; then echo "left: $d"; ls -la "$d"; bad=1; fi
  done
  [ $bad = 0 ] && echo "nothing of pod $pod left"
  return $bad
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
  step create-shm out "$d/shm" X create --no-pull "$POD" "$PEER/cri/ctr-busybox-shm.json" "$d/pod.json" || return 1
  local shm; shm=$(cat "$d/shm")
  step start-shm X start "$shm" || return 1
  local apps=("$cid" "$shm")
  if [ "$kind" = cni ]; then
    step create-web out "$d/web" X create --no-pull "$POD" "$PEER/cri/ctr-nginx.json" "$d/pod.json" || return 1
    step start-web X start "$(cat "$d/web")" || return 1
    apps+=("$(cat "$d/web")")
  fi
  case $h in *-sb|*-pool) step "no pause container in containerd's store" only_containers "${apps[@]}" ;; esac
  sleep 2
  step logs expect 'hello from' X logs "$cid"
  step exec expect '^exec-ok uid=0$' X exec "$cid" sh -c 'echo exec-ok uid=$(id -u)'
  step "DNS file from dns_config" expect '^nameserver 10\.233\.0\.53$' X exec "$cid" cat /etc/resolv.conf
  step "DNS search from dns_config" expect '^search smoke\.svc\.example$' X exec "$cid" cat /etc/resolv.conf
  step "shared /dev/shm (IPC) between containers" shared_shm "$shm" "$cid"
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
  step "nothing of the pod left" nothing_left "$(cat "$d/pod")" "$h"
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
