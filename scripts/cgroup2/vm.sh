#!/usr/bin/env bash
# vm.sh OUT SCRIPT RESULTS - boots the guest build.sh built in OUT and runs SCRIPT (a host path: the host's / is
# the guest's read-only lower layer) as root on a pure cgroup v2 system, then powers it off. RESULTS (a host
# directory) is the guest's writable /v2out; the guest writes SCRIPT's exit status to RESULTS/status. The
# serial console is stdout. Exit status: SCRIPT's, 124 when the guest watchdog or the host timeout ended it,
# 125 when the guest never ran it.
# env: MEM (MiB, 3072), SMP (1: with two vCPUs the guest kernel soft-locked under TCG in one container run of
# two), TIMEOUT (guest watchdog, s; the host allows 120 s more), KEEP (host paths under /tmp the guest must
# still see once its own tmpfs is on /tmp, space-separated), KVM=1 to try -accel kvm (it cannot boot a stock
# kernel on this machine's para-virtualised KVM), V2INIT (the guest's PID 1 after the initramfs: guest-init;
# scripts/systemd/guest-init hands over to systemd), APPEND (more kernel command line words).
set -uo pipefail
OUT=$(cd "${1:?usage: vm.sh OUT SCRIPT RESULTS}" && pwd)
SCRIPT=$(readlink -f "${2:?usage: vm.sh OUT SCRIPT RESULTS}")
RESULTS=${3:?usage: vm.sh OUT SCRIPT RESULTS}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$RESULTS"; RESULTS=$(cd "$RESULTS" && pwd)
rm -f "$RESULTS/status"
timeout=${TIMEOUT:-1800}
# no_timer_check: on a loaded host the TCG vCPU gets too little time for the kernel's IO-APIC timer check,
# which then panics at boot ("IO-APIC + timer doesn't work!").
accel="tcg,thread=multi,tb-size=512"
[ "${KVM:-0}" = 1 ] && accel=kvm
timeout --foreground -k 10 $((timeout + 120)) qemu-system-x86_64 -M q35 -accel "$accel" -cpu max \
  -smp "${SMP:-1}" -m "${MEM:-3072}" -nodefaults -no-user-config -display none -vga none -monitor none \
  -serial stdio -no-reboot -nic none -kernel "$OUT/vmlinux" -initrd "$OUT/initrd.cpio.gz" \
  -append "console=ttyS0 panic=-1 quiet loglevel=4 no_timer_check rdinit=/init v2init=${V2INIT:-$HERE/guest-init} v2script=$SCRIPT v2timeout=$timeout v2keep=$(tr ' ' : <<< "${KEEP:-}") ${APPEND:-}" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap,id=hostroot \
  -virtfs local,path="$RESULTS",mount_tag=v2out,security_model=none,id=v2out </dev/null
qrc=$?
if [ -s "$RESULTS/status" ]; then
  exit "$(cat "$RESULTS/status")"
fi
echo "vm.sh: the guest left no status (qemu exit $qrc)" >&2
[ $qrc -eq 124 ] && exit 124
exit 125
