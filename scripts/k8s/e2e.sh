#!/usr/bin/env bash
# e2e.sh - what `make e2e-k8s` runs after `deps`, `build` and `image`: the
# Kubernetes binaries (scripts/k8s/build.sh, cached), a fresh single-node cluster
# on loopback (node.sh up), the RuntimeClass checks (test.sh), and node.sh down,
# which always runs; then the cluster install on two nodes (cluster.sh: the chart,
# labels and scheduling, upgrade and rollback with Pods running, uninstall).
# Each phase is timed; the outputs and the timings go to _output/k8s/ (test.txt,
# cluster.txt, timings.txt). Exit status: 0 when both passed.
# env: KEEP=1 leaves the node up afterwards (node.sh down / clean later);
#      everything node.sh and test.sh read (K8S_E2E_DIR, HANDLERS, ports...).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
k=$root/scripts/k8s
out=$root/_output/k8s
mkdir -p "$out"
: > "$out/timings.txt"

phase() { # phase NAME CMD...: run, time, record
  local name=$1 s rc; shift
  s=$(date +%s.%N)
  "$@"; rc=$?
  printf '%-6s %6.1fs  rc=%s\n' "$name" "$(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')" "$rc" | tee -a "$out/timings.txt"
  return $rc
}

phase build bash "$k/build.sh" || exit 1
# a node left by an interrupted run would keep stale state: start from scratch
# (the PKI and etcd data are kept, as by a plain down/up)
bash "$k/node.sh" down >/dev/null 2>&1
if ! phase up bash "$k/node.sh" up; then
  bash "$k/node.sh" down
  exit 1
fi
phase test bash -c "bash '$k/test.sh' 2>&1 | tee '$out/test.txt'; exit \${PIPESTATUS[0]}"
rc=$?
if [ "${KEEP:-0}" = 1 ]; then
  echo "KEEP=1: node left up; eval \"\$($k/node.sh env)\"; $k/node.sh down when done"
else
  phase down bash "$k/node.sh" down
  # the two-node cluster needs the ports and the host the single node had
  phase cluster bash -c "bash '$k/cluster.sh' 2>&1 | tee '$out/cluster.txt'; exit \${PIPESTATUS[0]}"
  crc=$?
  [ "$rc" = 0 ] && rc=$crc
fi
echo "--- timings"; cat "$out/timings.txt"
grep -h 'node_ready_seconds\|up_seconds' "${K8S_E2E_DIR:-/tmp/k8s-e2e}/run/startup" 2>/dev/null
exit $rc
