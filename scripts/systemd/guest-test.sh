#!/bin/bash
# guest-test.sh - ExecStart of shim-test.service in the systemd guest: waits for the boot to settle, says how
# it went, then runs the integration test binary run.sh compiled with the settings in /v2out/env (as
# scripts/cgroup2/guest-test.sh does). SYSTEMD_GUEST=1 makes the systemd tests fail instead of skipping when
# the guest is not what they need. The status goes to /v2out/status; the unit's exit powers the guest off.
set -u
up() { cut -d' ' -f1 /proc/uptime; }
finish() { echo "$1" > /v2out/status; echo "[systemd-guest] status=$1 at $(up)s"; sync; exit 0; }
echo "[systemd-guest] test unit started at $(up)s"
timeout 300 systemctl is-system-running --wait >/dev/null 2>&1; st=$(systemctl is-system-running 2>&1)
echo "[systemd-guest] ready at $(up)s: system $st; $(systemd-analyze 2>&1 | head -1)"
[ "$st" = running ] || systemctl --failed --no-legend --plain 2>&1 | sed 's/^/[systemd-guest] failed unit: /'
echo "[systemd-guest] PID 1 $(cat /proc/1/comm) $(systemctl --version | head -1), /sys/fs/cgroup $(stat -fc %T /sys/fs/cgroup) ($(cat /sys/fs/cgroup/cgroup.subtree_control)), dbus $(systemctl is-active dbus.service), this unit's cgroup $(cut -d: -f3 /proc/self/cgroup)"
set -a; . /v2out/env; set +a
echo "[systemd-guest] $(uname -r), $(nproc) vCPU, $(free -m | awk '/^Mem:/{print $2}') MiB; runc: $(runc --version | head -1); runsc: $("$RUNSC_BINARY" --version 2>/dev/null | head -1)"
cd "$ROOT/integration" || finish 125
echo "[systemd-guest] go test -run '$TEST_RUN' at $(up)s"
SYSTEMD_GUEST=1 "$TEST_BINARY" -test.v -test.count="${TEST_COUNT:-1}" -test.timeout "$TEST_TIMEOUT" -test.run "$TEST_RUN" 2>&1 | tee /v2out/test.log
rc=${PIPESTATUS[0]}
echo "[systemd-guest] go test exit $rc at $(up)s"
# What a run left behind, for the reader of a failed run: container scopes and Pod slices (kubepods.slice
# and kubepods-burstable.slice, which systemd made for the tests' Pod slices, stay, as on a node).
left=$(systemctl list-units --all --no-legend --plain 'cri-containerd-*' 'kubepods-*-pod*' 2>/dev/null | head -20)
[ -z "$left" ] || { echo "[systemd-guest] units left:"; echo "$left"; }
finish "$rc"
