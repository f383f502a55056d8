#!/usr/bin/env bash
# run.sh - make test-systemd: the guest of make test-cgroup2 (same kernel and initramfs, .tools/cgroup2) with
# systemd as PID 1 on pure cgroup v2 (guest-init), one guest per backend side by side, running the compiled
# integration suite's systemd subset (SYSTEMD_TESTS) from shim-test.service, a unit with Delegate=yes as
# containerd.service has. Same report and exit status as make test-cgroup2 (scripts/cgroup2/run.sh, whose
# SYSTEMD_* knobs apply); output in _output/systemd/<backend>.
exec env GUEST=systemd bash "$(dirname "${BASH_SOURCE[0]}")/../cgroup2/run.sh" "$@"
