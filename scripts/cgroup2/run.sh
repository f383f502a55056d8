#!/usr/bin/env bash
# run.sh - make test-cgroup2: the integration tests that touch cgroups and the task lifecycle, run on a pure
# cgroup v2 system (a QEMU guest, TCG), on containerd 2.4.2 x runc and runsc, against bin/ (make build).
#
#   1. build.sh builds the guest into .tools/cgroup2 (Debian kernel, busybox initramfs; cached);
#   2. the integration suite is compiled on the host (go test -c) and the busybox image archive built;
#   3. vm.sh boots the guest, guest-test.sh runs the test binary there with -test.run CGROUP2_TESTS;
#   4. the go test -v output (streamed from the console), the figures file and the timings are printed; the
#      exit status is the guest test run's (the guest writes it to _output/cgroup2/status).
#
# env: CGROUP2_TESTS (regexp of top-level tests), CGROUP2_TIMEOUT (go test -timeout in the guest),
#      CGROUP2_BACKENDS ("runc runsc"), CGROUP2_CONTAINERD (2.4.2), MEM, SMP (see vm.sh).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$root/scripts/cgroup2
out=$root/_output/cgroup2
guest=$root/.tools/cgroup2
cd "$root"
export PATH=/usr/local/go/bin:$PATH

# The subset: every test that touches cgroups or the task lifecycle (see README, "cgroup versions").
tests=${CGROUP2_TESTS:-TestExitCodes|TestSignals|TestExec|TestTTY|TestPauseResume|TestStatsAndUpdate|TestOOM|TestShimCgroupAndIOOwner|TestGrouping|TestContainerdRestart|TestMetrics|TestCRIStdoutWhileContainerdDown|TestEventCompleteness|TestChurn|TestCtrRun}
timeout=${CGROUP2_TIMEOUT:-25m}

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
t0=$(now)

[ -x bin/containerd-shim-custom-v2 ] || { echo "run.sh: bin/containerd-shim-custom-v2 missing (make build)" >&2; exit 1; }
bash "$here/build.sh" "$guest"
t_guest=$(now)
rm -rf "$out"; mkdir -p "$out"
go test -c -o "$out/integration.test" ./integration/
bash scripts/mkimage.sh .tools/images >/dev/null
t_compile=$(now)

{
  printf '%s=%q\n' ROOT "$root" TEST_BINARY "$out/integration.test" TEST_RUN "^($tests)\$" TEST_TIMEOUT "$timeout" \
    SHIM_BINARY "$root/bin/containerd-shim-custom-v2" TEST_REPORT /v2out/report.txt \
    CONTAINERD_VERSIONS "${CGROUP2_CONTAINERD:-2.4.2}" BACKENDS "${CGROUP2_BACKENDS:-runc runsc}" \
    RUNSC_BINARY "${RUNSC_BINARY:-$root/.tools/runsc/runsc}" BUSYBOX_IMAGE_TAR "$root/.tools/images/busybox.tar" \
    EVENT_LIFECYCLES "${EVENT_LIFECYCLES:-20}" CHURN_LIFECYCLES "${CHURN_LIFECYCLES:-20}" \
    CHURN_LIFECYCLES_GVISOR "${CHURN_LIFECYCLES_GVISOR:-10}" RESTART_TASKS "${RESTART_TASKS:-3}"
} > "$out/env"

# The guest's watchdog allows the go test timeout plus boot and teardown.
gotimeout=$(awk -v t="$timeout" 'BEGIN{n=t+0; if (t ~ /m$/) n*=60; else if (t ~ /h$/) n*=3600; print int(n)}')
echo "=== cgroup v2 guest: tests ^($tests)\$, go test -timeout $timeout"
t_boot=$(now)
set +e
TIMEOUT=$((gotimeout + 120)) bash "$here/vm.sh" "$guest" "$here/guest-test.sh" "$out" | {
  ready=
  while IFS= read -r line; do
    printf '%s\n' "$line"
    if [ -z "$ready" ] && [[ $line == "[cgroup2-guest] ready at"* ]]; then
      ready=1; echo "$(now)" > "$out/.ready"
    fi
  done
}
rc=${PIPESTATUS[0]}
set -e
t_end=$(now)

echo "--- figures"
cat "$out/report.txt" 2>/dev/null || true
echo "--- timings (TCG, ${SMP:-1} vCPU)"
printf '  %-58s %8ss\n' "guest build (cached after the first run)" "$(secs "$t0" "$t_guest")"
printf '  %-58s %8ss\n' "compile the suite, busybox image" "$(secs "$t_guest" "$t_compile")"
if [ -s "$out/.ready" ]; then
  printf '  %-58s %8ss\n' "boot to the test script" "$(secs "$t_boot" "$(cat "$out/.ready")")"
fi
# Each top-level test and its runs per containerd line and backend, from go test -v's summary lines.
awk '/^(    )?--- (PASS|FAIL|SKIP): / {
  ind = ($0 ~ /^    /) ? "    " : "  "; name = $3; t = $4; gsub(/[()s]/, "", t); res = $2; sub(/:$/, "", res)
  printf "%s%-*s %8ss  %s\n", ind, 60 - length(ind), name, t, res
}' "$out/test.log" 2>/dev/null || true
printf '  %-58s %8ss\n' "guest run (boot, tests, power off)" "$(secs "$t_boot" "$t_end")"
printf '  %-58s %8ss\n' "make test-cgroup2 total" "$(secs "$t0" "$t_end")"
case $rc in
  0) echo "cgroup v2: PASS" ;;
  124) echo "cgroup v2: FAIL (timed out; the watchdog's process list is above)" ;;
  125) echo "cgroup v2: FAIL (the guest did not run the tests)" ;;
  *) echo "cgroup v2: FAIL (go test exit $rc)" ;;
esac
exit $rc
