# shellcheck shell=bash
# cri-lib.sh - a private containerd 2.4.2 with CRI for critest.sh and
# crictl-smoke.sh (sourced after lib.sh).
#
#   cri_start WORK LOG [registry]   render templates/*.in into WORK, start
#                                   containerd (debug log to LOG), import the
#                                   CRI images into k8s.io; with "registry" also
#                                   start the local registry and push every image
#   cri_stop                        remove every pod, stop containerd and the
#                                   registry, kill shims the daemon left, unmount
#                                   what is left under WORK, delete the bridge
#
# After cri_start: CRI_SOCK, CRI_EP (unix://...), CRI_WORK; X runs crictl
# against it. Runtime handlers: runc (io.containerd.runc.v2), custom-runc and
# custom-runsc (io.containerd.custom.v2 with backend runc / runsc).

# RUNSC_FLAGS: extra runsc flags for the custom-runsc handler, as TOML
# inline-table pairs, e.g. RUNSC_FLAGS='oci-seccomp = "true"'
CRI_BRIDGE=${CRI_BRIDGE:-peercri0}
CRI_SUBNET=${CRI_SUBNET:-10.233.0.0/24}
CRI_WORK='' CRI_SOCK='' CRI_EP='' CRI_PID=''

# (--config /dev/null: no /etc/crictl.yaml lookup, no warning on every call)
X() { "$PEER_TOOLS/bin/crictl" --config /dev/null --runtime-endpoint "$CRI_EP" --image-endpoint "$CRI_EP" --timeout 60s "$@"; }
ctr_k8s() { "$CTRD_BIN/ctr" -a "$CRI_SOCK" -n k8s.io "$@"; }

# render TEMPLATE OUT NAME=VALUE...: replace @NAME@ with VALUE
render() {
  local in=$1 out=$2 kv expr=()
  shift 2
  for kv in "$@"; do expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  sed "${expr[@]}" "$in" > "$out"
  ! grep -n '@[A-Z_]*@' "$out" >&2 || die "unreplaced placeholder in $out"
}

cri_start() {
  local work=$1 logf=$2 with_registry=${3:-} h up
  CRI_WORK=$work CRI_SOCK=$work/containerd.sock CRI_EP=unix://$work/containerd.sock
  # One CRI run at a time: the bridge name and subnet are fixed.
  exec 7> /run/lock/containerd-peer-cri.lock
  flock -n 7 || die "another critest/crictl-smoke run holds /run/lock/containerd-peer-cri.lock"
  ip link show "$CRI_BRIDGE" >/dev/null 2>&1 && die "bridge $CRI_BRIDGE exists (left over? ip link del $CRI_BRIDGE)"
  [ -x "$CNI_BIN/bridge" ] || die "$CNI_BIN/bridge missing: apt-get install containernetworking-plugins"

  mkdir -p "$work"/{cni/net.d,certs.d}
  render "$PEER/templates/containerd-cri.toml.in" "$work/config.toml" \
    WORK="$work" SOCK="$CRI_SOCK" RUNSC_BIN="$RUNSC_BIN" CNI_BIN="$CNI_BIN" RUNSC_FLAGS="${RUNSC_FLAGS:-}"
  render "$PEER/templates/cni-bridge.conflist.in" "$work/cni/net.d/10-peer.conflist" \
    BRIDGE="$CRI_BRIDGE" SUBNET="$CRI_SUBNET" WORK="$work"
  # CRI pulls by the original names; hosts.toml sends them to the registry.
  for h in gcr.io registry.k8s.io ghcr.io docker.io; do
    up=https://$h; [ "$h" = docker.io ] && up=https://registry-1.docker.io
    mkdir -p "$work/certs.d/$h"
    render "$PEER/templates/hosts.toml.in" "$work/certs.d/$h/hosts.toml" HOST="$h" UPSTREAM="$up" REG="$REG"
  done

  if [ "$with_registry" = registry ]; then
    start_registry "$work/registry"
    push_images "$PEER_TOOLS"/images/*.tar
  fi

  # PATH: containerd-shim-runc-v2 2.4.2, our shim, then runc & co from the system
  PATH=$CTRD_BIN:$SHIM_BIN_DIR:$PATH "$CTRD_BIN/containerd" --config "$work/config.toml" > "$logf" 2>&1 &
  CRI_PID=$!
  STARTED_PIDS+=("$CRI_PID")
  wait_containerd "$CRI_SOCK" "$CRI_PID" "$logf"
  log "containerd $CONTAINERD_VERSION pid $CRI_PID on $CRI_SOCK (log $logf)"
  # Images containers are created from: CRI checks ImageStatus first and does
  # not pull what is there. pause must be there before the first sandbox.
  for h in pause busybox nginx hostnet-nginx httpd; do
    ctr_k8s images import "$PEER_TOOLS/images/$h.tar" >/dev/null 2>&1 || die "import $h.tar failed"
  done
  local _
  for _ in $(seq 1 50); do   # CNI config is picked up asynchronously
    X info 2>/dev/null | tr -d ' \n' | grep -q '"status":true,"type":"NetworkReady"' && return 0
    sleep 0.2
  done
  X info >&2 || true
  die "CRI NetworkReady never became true"
}

cri_stop() {
  set +e
  if [ -n "$CRI_PID" ] && kill -0 "$CRI_PID" 2>/dev/null; then
    # Pods first, so the shims exit and unmount by themselves.
    X rmp --all --force >/dev/null 2>&1
    local id
    for id in $(ctr_k8s tasks ls -q 2>/dev/null); do
      log "leftover task $id: killing"
      ctr_k8s tasks kill -s KILL "$id" >/dev/null 2>&1; sleep 0.5
      ctr_k8s tasks delete -f "$id" >/dev/null 2>&1
    done
  fi
  stop_started                            # containerd, registry
  # Containers of killed shims, shims (-address <our socket>), runsc
  # sandboxes/gofers (bundle path), mounts: all name or live below CRI_WORK.
  [ -n "$CRI_WORK" ] && peercheck leftovers "$CRI_WORK"
  ip link del "$CRI_BRIDGE" >/dev/null 2>&1
  [ -n "$CRI_WORK" ] && rm -rf "$CRI_WORK"
  set -e
}

# shim_pids_for POD_ID HANDLER: pids of the shim *server* processes (not the
# short-lived "start" ones) of our daemon whose arguments name POD_ID. Both
# shims are started as `<binary> -namespace k8s.io -id <first container's id>
# -address <containerd socket> ...`, and a pod's first container is its sandbox.
shim_pids_for() {
  local pod=$1 bin=containerd-shim-custom-v2 p cmd
  [ "$2" = runc ] && bin=containerd-shim-runc-v2
  for p in $(peercheck pids "$CRI_SOCK"); do
    cmd=$(tr '\0' ' ' 2>/dev/null < "/proc/$p/cmdline") || continue
    case "$cmd" in *"$bin "*"-id $pod"*) case "$cmd" in *" start"*) ;; *) echo "$p";; esac;; esac
  done
}
