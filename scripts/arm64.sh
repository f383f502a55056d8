#!/usr/bin/env bash
# arm64.sh - cross-build and unit-test the arm64 binaries on an amd64 Debian host
# (idempotent, fast when cached; the image tool takes the output as -arch arm64=...).
#
#   arm64.sh deps         install what the cross build needs, only what is missing
#                         (root): gcc-aarch64-linux-gnu, libseccomp-dev:arm64,
#                         qemu-user-static; extract Debian's arm64 static busybox
#                         into .tools/arm64/busybox.
#   arm64.sh check OUTDIR what `make arm64` built into OUTDIR (make build with
#                         GOARCH=arm64 and the cross CC) checked with file(1):
#                         static aarch64 executables; plus OUTDIR/busybox (arm64).
#   arm64.sh unit         go test -c the pure-logic packages for arm64 and run the
#                         test binaries under qemu-user; one summary line a package.
#
# .tools/ lives at the repository root (gitignored); the script works from any cwd.
# env: TOOLS_DIR, GO
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=${TOOLS_DIR:-$root/.tools}/arm64
go=${GO:-go}
cc=aarch64-linux-gnu-gcc
busybox=$tools/busybox
log() { printf 'arm64.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
cd "$root"

deps() {
  # libc6-dev-arm64-cross is only a Recommends of the cross gcc. busybox-static
  # is not Multi-Arch: busybox-static:arm64 would replace the amd64 /bin/busybox
  # the integration suite runs, so its .deb is only unpacked into .tools/arm64.
  local pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross libseccomp-dev:arm64 qemu-user-static file) missing=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})) || [ ! -x "$busybox" ]; then
    [ "$(id -u)" -eq 0 ] || die "missing: ${missing[*]} $busybox (run as root)"
    export DEBIAN_FRONTEND=noninteractive
    # apt knows arm64 packages only once the architecture is added and its lists fetched.
    dpkg --print-foreign-architectures | grep -qx arm64 || { log "adding the arm64 architecture"; dpkg --add-architecture arm64; }
    apt-get update
  fi
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get install -y --no-install-recommends "${missing[@]}"
  fi
  if [ ! -x "$busybox" ]; then
    local work; work=$(mktemp -d); chown _apt "$work" 2>/dev/null || true  # apt downloads as _apt
    (cd "$work" && apt-get download busybox-static:arm64) || { rm -rf "$work"; die "apt-get download busybox-static:arm64 failed"; }
    dpkg-deb -x "$work"/busybox-static_*_arm64.deb "$work/x"
    mkdir -p "$tools" && install -m 0755 "$work/x/bin/busybox" "$busybox.tmp" && mv "$busybox.tmp" "$busybox"
    rm -rf "$work"
  fi
  echo "cc:      $(command -v $cc) ($($cc -dumpversion)); $(ls /usr/lib/aarch64-linux-gnu/libseccomp.a)"
  echo "qemu:    $(qemu_bin) ($("$(qemu_bin)" --version | head -n1))"
  echo "busybox: $busybox ($(file -b "$busybox" | cut -d, -f2,4 | cut -c2-))"
}

qemu_bin() { command -v qemu-aarch64-static || command -v qemu-aarch64 || die "qemu-user missing: arm64.sh deps"; }

# check_bin FILE: an aarch64 static executable (what the image's scratch-like
# layer and a node without a matching libc need).
check_bin() {
  local d; d=$(file -b "$1")
  [[ $d == *"ARM aarch64"* && $d == *"statically linked"* ]] || die "$1 is not a static arm64 executable: $d"
  printf '%-34s %9s bytes  %s\n' "${1##*/}" "$(stat -c %s "$1")" "$(cut -d, -f2,4 <<< "$d" | cut -c2-)"
}

check() {
  local out=${1:?usage: arm64.sh check OUTDIR}
  [ -x "$busybox" ] || die "the arm64 busybox is missing: bash scripts/arm64.sh deps"
  install -m 0755 "$busybox" "$out/busybox"
  local b
  for b in containerd-shim-custom-v2 containerd-shim-custom-metrics containerd-shim-custom-install busybox; do check_bin "$out/$b"; done
}

# Packages whose tests are pure logic (files, parsing, state machines with fake
# backends, HTTP on loopback) and pass under qemu-user; PKG:REGEX skips tests.
# qemu-user has no binfmt_misc here, so an arm64 child the test binary execs
# (itself re-executed) fails with "exec format error".
#   pkg/metrics  TestPeerCheckOtherUser re-executes the test binary as another uid.
#   pkg/shim     TestStartFailureAfterServerStarted: root, the host's cgroup
#                hierarchy, and a re-executed shim.
# Left out:
#   pkg/reaper            TestMain: prctl(PR_SET_CHILD_SUBREAPER) is EINVAL under
#                         qemu-user 7.2 (qemu-user reason).
#   pkg/runtime/nsholder  clones /proc/self/exe into new namespaces (root);
#                         qemu-user refuses those clone flags (EINVAL).
#   pkg/runtime/runc      libcontainer starts real containers (root, mounts,
#                         cgroups) by re-executing the test binary.
#   pkg/runtime/runsc     runs the host's runsc (root).
#   pkg/runtime/cgroup    creates and kills cgroups as root.
#   pkg/containerdversion(/versiontest), pkg/runtime/clilog/internal/capture,
#   pkg/shim/recovery     no test files.
UNIT_PKGS=(pkg/aggregator pkg/bundle pkg/events pkg/install 'pkg/metrics:^TestPeerCheckOtherUser$'
  pkg/oci pkg/runtime pkg/runtime/clilog pkg/runtime/pidfd pkg/sandbox
  'pkg/shim:^TestStartFailureAfterServerStarted$' pkg/shim/pool pkg/task pkg/task/procio)

# run_pkg PKG BIN SKIP RUN: the test binary under qemu, from the package
# directory (tests read testdata/ relative to it, as `go test` runs them).
run_pkg() {
  (cd "$1" && "$qemu" "$2" -test.v -test.short -test.count=1 -test.timeout=10m ${3:+-test.skip "$3"} ${4:+-test.run "$4"})
}

# show_failures LOG: what a failed run printed, less the passing tests' lines.
show_failures() {
  grep -vE '^ *(=== (RUN|PAUSE|CONT|NAME)|--- PASS)' "$1" | tail -n 60 | sed 's/^/      /'
}

unit() {
  qemu=$(qemu_bin)
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  local e p skip bin fails=0 t0 s note failed
  for e in "${UNIT_PKGS[@]}"; do
    p=${e%%:*}; skip=; [[ $e == *:* ]] && skip=${e#*:}
    bin=$work/${p//\//_}.test
    # cgo only where a package needs it: runc's specconv (pkg/runtime, pkg/shim)
    # does not build without; such a test binary is dynamic, and qemu finds
    # its loader in libc6:arm64 (installed with libseccomp-dev:arm64).
    if ! CGO_ENABLED=0 GOARCH=arm64 $go test -c -o "$bin" "./$p" 2>"$work/build.log" &&
       ! CGO_ENABLED=1 CC=$cc GOARCH=arm64 $go test -c -o "$bin" "./$p" 2>"$work/build.log"; then
      printf 'FAIL  %-22s build\n' "$p"; sed 's/^/      /' "$work/build.log"; fails=$((fails+1)); continue
    fi
    [ -f "$bin" ] || { printf 'skip  %-22s no test files\n' "$p"; continue; }
    t0=$SECONDS note=
    if run_pkg "$p" "$bin" "$skip" "" > "$work/out.log" 2>&1; then
      s=ok
    else
      # The failures' own output (not the passing tests' lines), then the
      # failed tests once more: a test that fails only under emulation's
      # timing is reported by name; a failure that repeats fails the run.
      failed=$(grep -oP '^--- FAIL: \K\S+' "$work/out.log" | paste -sd'|' || true)
      show_failures "$work/out.log"
      if [ -n "$failed" ] && run_pkg "$p" "$bin" "$skip" "^($failed)\$" > "$work/rerun.log" 2>&1; then
        s=ok note="(failed once, passed when run again: ${failed//|/ })"
      else
        s=FAIL; fails=$((fails+1))
        [ -z "$failed" ] || { echo "      --- run again: ${failed//|/ }"; show_failures "$work/rerun.log"; }
      fi
    fi
    printf '%-4s  %-22s %3ss  %3s passed %2s skipped %s\n' "$s" "$p" $((SECONDS-t0)) "$(grep -c '^--- PASS' "$work/out.log")" \
      "$(grep -c '^--- SKIP' "$work/out.log")" "${skip:+(not run: $skip) }$note"
  done
  ((fails == 0)) || die "$fails package(s) failed under qemu"
}

case ${1:-} in
  deps) deps ;;
  check) shift; check "$@" ;;
  unit) unit ;;
  *) die "usage: arm64.sh deps | check OUTDIR | unit" ;;
esac
