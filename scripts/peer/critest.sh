#!/usr/bin/env bash
# critest.sh HANDLER_BACKEND - run cri-tools' critest v1.34.0 (CRI validation
# suite) offline against a private containerd 2.4.2 with CRI, through one
# runtime handler:
#
#   runc       handler custom-runc   io.containerd.custom.v2, backend = "runc"
#   runsc      handler custom-runsc  io.containerd.custom.v2, backend = "runsc"
#   runc-sb    handler custom-runc-sb   the same, sandboxer = 'shim' (containerd's
#   runsc-sb   handler custom-runsc-sb  Sandbox API: no pause container)
#   runc-pool  handler custom-runc-pool custom-runc-sb with pods_per_shim = 10
#   runc-shim  handler runc          io.containerd.runc.v2 (containerd's own shim, baseline)
#
# The daemon (cri-lib.sh, templates/containerd-cri.toml.in): its own root,
# state and socket in a temp dir, restrict_oom_score_adj = true, a CNI bridge
# with Debian's plugins, hosts.toml mirrors to a local registry holding every
# test image (critest's image tests always pull), the CRI images imported
# into k8s.io.
#
# Output in _output/peer/:
#   critest-<handler>.txt            passed/failed/skipped, failing spec names
#   critest-<handler>.junit.xml      ginkgo's JUnit report
#   critest-<handler>.log            critest output (-ginkgo.v)
#   critest-<handler>.containerd.log containerd's debug log (shim log lines included)
# env: FOCUS (a ginkgo focus regexp), SKIP_EXTRA (one more skip regexp),
#      REG_PORT (5000), RUNSC_FLAGS (extra runsc flags for custom-runsc, e.g.
#      'oci-seccomp = "true"'), OUT (report directory)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$PEER/cri-lib.sh"

case "${1:-}" in
  runc) handler=custom-runc ;;
  runsc) handler=custom-runsc ;;
  runc-sb) handler=custom-runc-sb ;;
  runsc-sb) handler=custom-runsc-sb ;;
  runc-pool) handler=custom-runc-pool ;;
  runc-shim) handler=runc ;;
  *) die "usage: critest.sh runc|runsc|runc-sb|runsc-sb|runc-pool|runc-shim" ;;
esac
[ "$(id -u)" = 0 ] || die "needs root"
need_tools
case $handler in custom-runsc*) [ -x "$RUNSC_BIN" ] ;; esac || die "$RUNSC_BIN missing: run scripts/deps.sh"
mkdir -p "$OUT"
base=$OUT/critest-$handler
rm -f "$base".{txt,junit.xml,log,containerd.log}

work=$(mktemp -d /tmp/peer-cri-XXXXXX)
# containerd's state dir below it: a user-namespaced Pod's root (host uid
# 1000 in critest's mappings) must traverse it to reach the bundle's rootfs,
# as it traverses /run/containerd on a node (runc's own CI: runc#3259)
chmod 0711 "$work"
shm_before=$(awk 'NR > 1 {print $2}' /proc/sysvipc/shm | sort)
cleanup() {
  local rc=$?
  cri_stop
  # critest's two HostIpc specs run `ipcmk -M 1M` in host-IPC containers and
  # never remove the segments: drop the unattached ones created during this run.
  local id
  for id in $(comm -13 <(echo "$shm_before") <(awk 'NR > 1 && $7 == 0 {print $2}' /proc/sysvipc/shm | sort)); do
    ipcrm -m "$id" 2>/dev/null || true
  done
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cri_start "$work" "$base.containerd.log" registry

# ---- skip list ------------------------------------------------------------------------
skips=(
  # hostPort mappings need the CNI portmap plugin and iptables rules; the
  # bridge config here has neither
  'port mapping'
  # pulls an upstream image by its pinned digest; a rebuilt image cannot match
  'public image with digest'
  # needs registry.k8s.io/e2e-test-images/nonewprivs (a setuid test binary), not rebuilt
  'NoNewPrivs'
  # neither AppArmor nor SELinux is enabled on these VMs
  'AppArmor' 'SELinux'
  # masks /bin/ls and expects `sh -c ls` to fail; Debian's busybox-static runs
  # applets in-process (FEATURE_SH_STANDALONE) and never execs /bin/ls
  'MaskedPaths'
)
if [ "$handler" = custom-runsc ] || [ "$handler" = custom-runsc-sb ]; then
  # What gVisor does not do (the specs fail the same way whatever the shim:
  # each failure names the missing kernel surface or runsc's own refusal).
  skips+=(
    # gVisor applies a read-only bind mount to its submounts too
    'should support non-recursive readonly mounts'
    # runsc's features offer no "rro" mount option, so these specs skip
    # themselves; listed so that the gate does not expect them to pass
    'recursive readonly mount with' 'should support recursive readonly mounts'
    # runsc: "root mount propagation option must specify private or slave"
    "mount with 'rshared'"
    # memory limits are enforced on the sandbox (pod) cgroup only; a
    # container's own limit inside a pod never triggers an OOM kill
    'should terminate with exitCode 137 and reason OOMKilled'
    # CRI's port-forward dials into the pod's network namespace; gVisor's
    # netstack listens inside the sandbox, not there
    'should support portforward \[Conformance\]'
    # gVisor's /proc has no sysvipc/ (ipcs), no kernel.shm_rmid_forced, no
    # fs/mqueue sysctls; its sysfs has no class/net (brctl)
    'should support HostIpc is' 'should support (un)?safe sysctls'
    'should support Privileged is true' 'should support adding capability'
    # with network=host, gVisor's /proc/net/tcp lists the sandbox's sockets,
    # not the host's listeners the spec looks for
    'should support HostNetwork is true'
    # runsc ignores linux.readonlyPaths
    'should support ReadonlyPaths'
  )
fi
if [ "$handler" = custom-runc-pool ]; then
  # pods_per_shim needs the handler's options table, and containerd's client
  # cannot start a user-namespaced Pod's containers on a handler with one (it
  # needs runc's options type for IoUid/IoGid; README "User namespaces").
  # CONTAINER and TARGET modes are refused as on the other handlers, and
  # those specs run.
  skips+=('UserNamespaces when Host idmap mount support is needed runtime should support NamespaceMode_POD')
fi
[ -n "${SKIP_EXTRA:-}" ] && skips+=("$SKIP_EXTRA")
args=(--runtime-endpoint "$CRI_EP" --image-endpoint "$CRI_EP" --runtime-handler "$handler"
      --ginkgo.no-color --ginkgo.v --ginkgo.junit-report "$base.junit.xml")
for s in "${skips[@]}"; do args+=(--ginkgo.skip "$s"); done
[ -n "${FOCUS:-}" ] && args+=(--ginkgo.focus "$FOCUS")

log "critest $CRI_TOOLS_VERSION --runtime-handler $handler (log $base.log)"
start=$(date +%s)
rc=0
# critest writes temp files (pod log dirs) relative to its cwd / TMPDIR
(cd "$work" && TMPDIR=$work exec "$PEER_TOOLS/bin/critest" "${args[@]}") > "$base.log" 2>&1 || rc=$?
secs=$(( $(date +%s) - start ))

# ---- summary ---------------------------------------------------------------------------------
# ginkgo's last lines: "Ran 87 of 113 Specs in 92.1 seconds" and
# "SUCCESS! -- 87 Passed | 0 Failed | 0 Pending | 26 Skipped" (or FAIL!).
ran=$(grep -m1 -oE 'Ran [0-9]+ of [0-9]+ Specs in [0-9.]+ seconds' "$base.log" || echo "Ran ? of ? Specs")
verdict=$(grep -m1 -oE '(SUCCESS|FAIL)! -- [0-9]+ Passed \| [0-9]+ Failed \| [0-9]+ Pending \| [0-9]+ Skipped' "$base.log" || echo "no ginkgo summary (exit $rc)")
num() { sed -nE "s/.* ([0-9]+) $1.*/\\1/p" <<< "$verdict"; }
{
  echo "critest $CRI_TOOLS_VERSION, handler $handler, containerd $CONTAINERD_VERSION"
  if [ "$handler" = runc ]; then echo "shim: $CTRD_BIN/containerd-shim-runc-v2"
  else echo "shim: containerd-shim-custom-v2 $("$SHIM_BIN_DIR/containerd-shim-custom-v2" --version 2>/dev/null | sed -n 's/^ *Version: *//p') ($SHIM_BIN_DIR)"; fi
  echo "date $(date -u +%FT%TZ)  duration ${secs}s  exit $rc"
  echo "passed $(num Passed) failed $(num Failed) skipped $(num Skipped)   ($ran; $verdict)"
  echo "failing specs:"
  # the junit report has one <testcase ... status="failed"> per failure
  grep -oE '<testcase name="[^"]*" classname="[^"]*" status="(failed|panicked|timedout)"' "$base.junit.xml" 2>/dev/null |
    sed -E 's/<testcase name="\[It\] ([^"]*)".*status="([a-z]*)"/  \1  [\2]/; s/&#39;/'"'"'/g; s/&#34;/"/g; s/&amp;/\&/g' || true
  grep -qE 'status="(failed|panicked|timedout)"' "$base.junit.xml" 2>/dev/null || echo "  (none)"
  echo "skip list: ${skips[*]}"
  printf 'skip: %s\n' "${skips[@]}"   # one per line, for gate.sh
  echo "logs: $base.log $base.containerd.log $base.junit.xml"
} > "$base.txt"
cat "$base.txt"
exit $rc
