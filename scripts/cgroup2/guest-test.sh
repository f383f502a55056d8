#!/bin/bash
# guest-test.sh - runs in the cgroup v2 guest (guest-init runs it): the integration test binary run.sh
# compiled, with the settings run.sh wrote to /v2out/env (ROOT, TEST_BINARY, TEST_RUN, TEST_TIMEOUT and the
# suite's own variables). go test -v output goes to the console and /v2out/test.log; the exit status is the
# test binary's.
set -u
set -a; . /v2out/env; set +a
up() { cut -d' ' -f1 /proc/uptime; }
echo "[cgroup2-guest] $(uname -r), $(nproc) vCPU, $(free -m | awk '/^Mem:/{print $2}') MiB; /proc/self/cgroup: $(cat /proc/self/cgroup)"
echo "[cgroup2-guest] runc: $(runc --version | head -1); runsc: $("$RUNSC_BINARY" --version 2>/dev/null | head -1)"
# As on a node, containerd (started by the test binary) runs in a cgroup of its own beside the containers',
# not in the root cgroup.
mkdir -p /sys/fs/cgroup/test.slice && echo $$ > /sys/fs/cgroup/test.slice/cgroup.procs
cd "$ROOT/integration" || exit 125
echo "[cgroup2-guest] go test -run '$TEST_RUN' at $(up)s"
"$TEST_BINARY" -test.v -test.count="${TEST_COUNT:-1}" -test.timeout "$TEST_TIMEOUT" -test.run "$TEST_RUN" 2>&1 | tee /v2out/test.log
rc=${PIPESTATUS[0]}
echo "[cgroup2-guest] go test exit $rc at $(up)s"
# Container cgroups (/<namespace>/<id>) a run left behind show here, for the reader of a failed run; the
# namespaces' parent cgroups stay, as with containerd's runc shim.
left=$(find /sys/fs/cgroup -mindepth 2 -type d | head -20)
[ -z "$left" ] || { echo "[cgroup2-guest] cgroups left:"; echo "$left"; }
exit $rc
