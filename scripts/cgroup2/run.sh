#!/usr/bin/env bash
# run.sh - make test-cgroup2: the integration tests that touch cgroups and the task lifecycle, run on a pure
# cgroup v2 system (QEMU guests under TCG), on containerd 2.4.2 x runc and runsc, against bin/ (make build) or
# $SHIM_BINARY.
#
#   1. build.sh builds the guest into .tools/cgroup2 (Debian kernel, busybox initramfs; cached);
#   2. the integration suite is compiled on the host (go test -c) and the busybox image archive built;
#   3. one guest per backend, side by side (one vCPU each: TCG runs a vCPU on one host thread), boots with
#      vm.sh and runs the test binary there with guest-test.sh and -test.run CGROUP2_TESTS; their top-level
#      results show as they come;
#   4. each guest's go test -v output, the figures files and the timings are printed; the exit status is the
#      first failing guest's (each guest writes its status to _output/cgroup2/<backend>/status).
#
# env: CGROUP2_TESTS (regexp of top-level tests), CGROUP2_TIMEOUT (go test -timeout in a guest),
#      CGROUP2_COUNT (go test -count, to repeat a test that failed once), CGROUP2_BACKENDS ("runc runsc"),
#      CGROUP2_CONTAINERD (2.4.2), CGROUP2_TIME_SCALE (the suite's timeouts
#      x3: TEST_TIME_SCALE), MEM, SMP (see vm.sh).
# GUEST=systemd (scripts/systemd/run.sh, make test-systemd) boots the same kernel and initramfs with systemd
# as PID 1 instead (scripts/systemd/guest-init) and runs SYSTEMD_TESTS there; SYSTEMD_BACKENDS,
# SYSTEMD_TIMEOUT and SYSTEMD_COUNT stand for the CGROUP2_ ones.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$root/scripts/cgroup2
kind=${GUEST:-cgroup2}
out=$root/_output/$kind
guest=$root/.tools/cgroup2
cd "$root"
export PATH=/usr/local/go/bin:$PATH

# The subset: the tests that touch cgroups or the task lifecycle (README, "host setups").
tests=${CGROUP2_TESTS:-TestExitCodes|TestSignals|TestExec|TestTTY|TestPauseResume|TestStatsAndUpdate|TestOOM|TestPodOOM|TestPodContainerChurnKeepsShimFds|TestShimCgroupAndIOOwner|TestSharedParentCgroup|TestGrouping|TestContainerdRestart|TestMetrics|TestCRIStdoutWhileContainerdDown|TestEventCompleteness|TestChurn|TestCtrRun|TestSandboxedPod|TestSandboxedPodShimKilled|TestSandboxedPodProcessDies|TestCrun|TestCheckpointRestore|TestCRICheckpoint}
timeout=${CGROUP2_TIMEOUT:-20m}
backends=${CGROUP2_BACKENDS:-runc runsc}
label="cgroup v2"; vminit=; append=
if [ "$kind" = systemd ]; then
  # The systemd subset (README, "host setups"): every handler under the systemd cgroup driver, driven through
  # CRI as kubelet with cgroupDriver: systemd, and the lifecycle tests that touch cgroups.
  # (TestStatsAndUpdate and TestSandboxedPod, cgroupfs paths, run in the cgroup v2 guest: here they would
  # double the time.)
  tests=${SYSTEMD_TESTS:-TestSystemd.*|TestOOM}
  timeout=${SYSTEMD_TIMEOUT:-15m}
  backends=${SYSTEMD_BACKENDS:-runc runsc}
  CGROUP2_COUNT=${SYSTEMD_COUNT:-${CGROUP2_COUNT:-1}}
  label="systemd (cgroup v2)"; vminit=$root/scripts/systemd/guest-init
  append="systemd.unit=shim-test.target systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all systemd.show_status=error systemd.crash_reboot=1"
elif [ "$kind" != cgroup2 ]; then
  echo "run.sh: unknown GUEST=$kind (cgroup2 or systemd)" >&2; exit 2
fi

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
row() { printf '  %-62s %8ss%s\n' "$1" "$2" "${3:+  $3}"; }
t0=$(now)

shim=$(readlink -f "${SHIM_BINARY:-bin/containerd-shim-custom-v2}")
[ -x "$shim" ] || { echo "run.sh: $shim missing (make build)" >&2; exit 1; }
bash "$here/build.sh" "$guest"
t_guest=$(now)
rm -rf "$out"; mkdir -p "$out"
go test -c -o "$out/integration.test" ./integration/
bash scripts/mkimage.sh .tools/images >/dev/null
t_compile=$(now)

gotimeout=$(awk -v t="$timeout" 'BEGIN{n=t+0; if (t ~ /m$/) n*=60; else if (t ~ /h$/) n*=3600; print int(n)}')
echo "=== $label guests ($backends): tests ^($tests)\$, go test -timeout $timeout, timeouts x${CGROUP2_TIME_SCALE:-3}"
t_boot=$(now)
for b in $backends; do
  mkdir -p "$out/$b"
  printf '%s=%q\n' ROOT "$root" TEST_BINARY "$out/integration.test" TEST_RUN "^($tests)\$" TEST_TIMEOUT "$timeout" \
    SHIM_BINARY "$shim" TEST_REPORT /v2out/report.txt \
    CONTAINERD_VERSIONS "${CGROUP2_CONTAINERD:-2.4.2}" BACKENDS "$b" TEST_TIME_SCALE "${CGROUP2_TIME_SCALE:-3}" \
    RUNSC_BINARY "${RUNSC_BINARY:-$root/.tools/runsc/runsc}" BUSYBOX_IMAGE_TAR "$root/.tools/images/busybox.tar" \
    TEST_COUNT "${CGROUP2_COUNT:-1}" EVENT_LIFECYCLES "${EVENT_LIFECYCLES:-10}" CHURN_LIFECYCLES "${CHURN_LIFECYCLES:-10}" \
    CHURN_LIFECYCLES_GVISOR "${CHURN_LIFECYCLES_GVISOR:-5}" RESTART_TASKS "${RESTART_TASKS:-3}" > "$out/$b/env"
  # The guest's watchdog allows the go test timeout plus boot and teardown; the console goes to a file, its
  # milestones (boot, each test's result, watchdog, kernel trouble) to stdout as they come.
  (
    set +e
    TIMEOUT=$((gotimeout + 120)) KEEP="$root $(readlink -f .tools) $(dirname "$shim")" V2INIT=$vminit APPEND=$append \
      bash "$here/vm.sh" "$guest" "$root/scripts/$kind/guest-test.sh" "$out/$b" 2>&1 | {
      while IFS= read -r line; do
        printf '%s\n' "$line" >> "$out/$b/console.log"
        case $line in
          "[$kind-guest] ready at"*) now > "$out/$b/.ready"; echo "[$b] $line" ;;
          "--- "*|"[$kind-guest]"*|*WATCHDOG*|*"soft lockup"*|*"Kernel panic"*|*"rcu_sched"*) echo "[$b] $line" ;;
        esac
      done
    }
    echo "${PIPESTATUS[0]}" > "$out/$b/rc"
    now > "$out/$b/.end"
  ) &
done
wait
t_end=$(now)

rc=0
for b in $backends; do
  echo
  echo "=== go test -v output, $label, $b (guest console: $out/$b/console.log)"
  cat "$out/$b/test.log" 2>/dev/null || { echo "(no test output; the guest console's end:)"; tail -40 "$out/$b/console.log"; }
  r=$(cat "$out/$b/rc" 2>/dev/null || echo 125)
  [ "$rc" -ne 0 ] || rc=$r
done
echo "--- figures"
for b in $backends; do cat "$out/$b/report.txt" 2>/dev/null || true; done
echo "--- timings (TCG, one vCPU per guest, guests side by side)"
row "guest build (cached after the first run)" "$(secs "$t0" "$t_guest")"
row "compile the suite, busybox image" "$(secs "$t_guest" "$t_compile")"
for b in $backends; do
  [ -s "$out/$b/.ready" ] && row "$b guest: boot to the test script" "$(secs "$t_boot" "$(cat "$out/$b/.ready")")"
  # Each top-level test, from go test -v's summary lines.
  awk '/^--- (PASS|FAIL|SKIP): / { t = $4; gsub(/[()s]/, "", t); sub(/:$/, "", $2); printf "    %-60s %8ss  %s\n", $3, t, $2 }' \
    "$out/$b/test.log" 2>/dev/null || true
  [ -s "$out/$b/.end" ] && row "$b guest: boot, tests, power off" "$(secs "$t_boot" "$(cat "$out/$b/.end")")" \
    "$(case $(cat "$out/$b/rc" 2>/dev/null) in 0) echo PASS;; 124) echo "FAIL (timed out)";; 125) echo "FAIL (no test run)";; *) echo FAIL;; esac)"
done
row "make test-$kind total" "$(secs "$t0" "$t_end")"
for b in $backends; do bash scripts/failures.sh "$out/$b/test.log"; done
case $rc in
  0) echo "$label: PASS" ;;
  124) echo "$label: FAIL (timed out; the watchdog's process list is in the guest console)" ;;
  125) echo "$label: FAIL (a guest did not run the tests)" ;;
  *) echo "$label: FAIL (go test exit $rc)" ;;
esac
exit "$rc"
