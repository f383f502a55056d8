#!/usr/bin/env bash
# demo.sh - the main job, end to end: a private containerd (own root, state
# and socket under /tmp/custom-shim-demo) with bin/containerd-shim-custom-v2
# on its PATH, a busybox image built offline, and containers run through
# the shim with ctr. Everything is stopped and removed at the end.
#
# Run through `make demo` (which installs dependencies and builds first).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=${CONTAINERD_VERSION:-2.4.2}
bin=$root/.tools/containerd/$version/bin
work=/tmp/custom-shim-demo
sock=$work/containerd.sock
runtime=io.containerd.custom.v2
image=ghcr.io/containerd/busybox:1.36

[ -x "$root/bin/containerd-shim-custom-v2" ] || { echo "run 'make demo' (it builds the shim first)" >&2; exit 1; }
[ -x "$bin/containerd" ] || { echo "containerd $version missing: run scripts/deps.sh" >&2; exit 1; }

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ctr() { "$bin/ctr" -a "$sock" -n demo "$@" 2> >(grep -v 'DEPRECATION: The support for cgroup v1' >&2); }

cleanup() {
  set +e
  if [ -n "${pid:-}" ]; then
    for c in $(ctr containers ls -q 2>/dev/null); do
      ctr task kill -s SIGKILL "$c" >/dev/null 2>&1; sleep 0.2
      ctr task rm -f "$c" >/dev/null 2>&1; ctr containers rm "$c" >/dev/null 2>&1
    done
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  fi
  [ -n "${agg:-}" ] && { kill "$agg" 2>/dev/null; wait "$agg" 2>/dev/null; }
  grep -qs " $work/" /proc/mounts && awk -v w="$work/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount -l
  rm -rf "$work"
}
trap cleanup EXIT
cleanup
mkdir -p "$work"

cat > "$work/config.toml" <<TOML
version = 3
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.podsandbox.controller.v1.cri", "io.containerd.nri.v1.nri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
TOML

step "containerd $version with $root/bin/containerd-shim-custom-v2 on its PATH"
# The shims' metrics sockets and final snapshots go under $work (private to
# this demo); the node aggregator serves their sum on loopback.
export CONTAINERD_SHIM_CUSTOM_METRICS_DIR=$work/metrics
metrics_port=${METRICS_PORT:-19325}
"$root/bin/containerd-shim-custom-metrics" --web.listen-address "127.0.0.1:$metrics_port" >"$work/metrics-server.log" 2>&1 &
agg=$!
PATH=$root/bin:$bin:$PATH "$bin/containerd" --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
ctr version | sed 's/^/  /'
"$root/bin/containerd-shim-custom-v2" --version | sed 's/^/  /'

step "busybox image, built offline from Debian's busybox-static"
bash "$root/scripts/mkimage.sh" "$root/.tools/images" >/dev/null
ctr images import "$root/.tools/images/busybox.tar" >/dev/null
ctr images ls -q

step "ctr run --runtime $runtime (runc backend)"
ctr run --rm --runtime "$runtime" "$image" demo-runc sh -c 'echo "hello from $(hostname), kernel $(uname -r), pid $$"; exit 3' || echo "  exit status $? (the container's)"

step "a long-running task: exec, ps, metrics, pause/resume"
ctr run -d --runtime "$runtime" --memory-limit 67108864 "$image" demo-app sh -c 'while :; do sleep 1; done'
ctr task exec --exec-id hello demo-app sh -c 'echo "exec says: $(cat /proc/1/cmdline | tr "\0" " ")"'
ctr task ps demo-app
ctr task metrics demo-app | grep -E 'METRIC|memory.usage_in_bytes|memory.limit_in_bytes|pids.current|memory.current|memory.max' || true
ctr task pause demo-app && ctr task ls && ctr task resume demo-app
ctr task kill -s SIGKILL demo-app; sleep 0.3
ctr task ls
ctr task rm demo-app >/dev/null && ctr containers rm demo-app

step "the same binary, gVisor backend (ctr --runtime-config-path, runsc from .tools)"
printf 'backend = "runsc"\n[runsc]\nbinary_name = "%s"\n' "$root/.tools/runsc/runsc" > "$work/runsc.toml"
cat "$work/runsc.toml" | sed 's/^/  /'
ctr run --rm --runtime "$runtime" --runtime-config-path "$work/runsc.toml" "$image" demo-gvisor \
  sh -c 'echo "hello from $(uname -r)"; dmesg | head -2'

step "shim processes left: $(pgrep -fc 'containerd-shim-custom-v2 -namespace demo' || true)"

step "task lifecycle metrics, summed by the node aggregator after every shim exited (127.0.0.1:$metrics_port/metrics)"
# plain bash HTTP: no curl needed
scrape() {
  exec 3<>"/dev/tcp/127.0.0.1/$metrics_port" || return 1
  printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  cat <&3; exec 3<&-
}
scrape | grep -E '^containerd_shim_custom_(tasks_(created|started|deleted)_total|tasks_exited_total|execs_started_total|oom_events_total)' | sed 's/^/  /'
echo "  (every family: contrib/metrics/README.md; one shim's own /metrics is a unix socket under \$CONTAINERD_SHIM_CUSTOM_METRICS_DIR/metrics)"
