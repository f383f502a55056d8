#!/usr/bin/env bash
# run-all.sh - every peer suite, for this shim (runc and runsc backends, on
# the pause path and, for critest and the crictl smoke, with sandboxer =
# 'shim') and for containerd's own runc shim, one after the other, then a
# side-by-side table in _output/peer/summary.txt. A suite that fails does not
# stop the others. The scripts run from a copy taken at the start, so editing
# scripts/peer/ meanwhile cannot change a run in flight.
#
# env: SUITES (default "containerd critest smoke"), plus what each script takes
# (SHIM_BIN_DIR, REG_PORT, ...).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SUITES=${SUITES:-containerd critest smoke}

snap=$(mktemp -d /tmp/peer-scripts-XXXXXX)
trap 'rm -rf "$snap"' EXIT
cp -r "$PEER/." "$snap/"
# lib.sh derives the repository root from its own location; keep pointing at
# this checkout.
export PEER_TOOLS SHIM_BIN_DIR CTRD_BIN RUNSC_BIN OUT
sed -i "s|^ROOT=.*|ROOT=$ROOT|; s|^PEER=.*|PEER=$snap|" "$snap/lib.sh"

"$snap/build-tools.sh"
# One peercheck binary for the whole run, built from this checkout now.
build_peercheck
export PEERCHECK
mkdir -p "$OUT"
timings=$OUT/timings.txt
: > "$timings"
run() { # run NAME CMD...: run a suite, record its wall time and exit status
  local name=$1 s rc=0; shift
  s=$(date +%s)
  "$@" || rc=$?
  printf '%-40s %5ss  exit %s\n' "$name" $(( $(date +%s) - s )) "$rc" | tee -a "$timings"
}
for suite in $SUITES; do
  case $suite in
  containerd)
    run "containerd io.containerd.runc.v2" "$snap/containerd-suite.sh" io.containerd.runc.v2
    run "containerd io.containerd.custom.v2" "$snap/containerd-suite.sh" io.containerd.custom.v2
    run "containerd io.containerd.custom.v2 runsc" "$snap/containerd-suite.sh" io.containerd.custom.v2 runsc ;;
  critest)
    run "critest runc (containerd runc shim)" "$snap/critest.sh" runc-shim
    run "critest custom-runc" "$snap/critest.sh" runc
    run "critest custom-runsc" "$snap/critest.sh" runsc
    run "critest custom-runc-sb" "$snap/critest.sh" runc-sb
    run "critest custom-runsc-sb" "$snap/critest.sh" runsc-sb
    run "critest custom-runc-pool" "$snap/critest.sh" runc-pool ;;
  smoke)
    run "crictl-smoke" "$snap/crictl-smoke.sh" ;;
  *) die "unknown suite $suite" ;;
  esac
done

# ---- side by side ------------------------------------------------------------------
line() { grep -m1 "$1" "$2" 2>/dev/null || echo "(not run)"; }
{
  echo "peer suites, $(date -u +%FT%TZ), shim $("$SHIM_BIN_DIR/containerd-shim-custom-v2" --version 2>/dev/null | sed -n 's/^ *Version: *//p')"
  echo
  echo "containerd $CLIENT_TEST_VERSION integration/client (top-level tests)"
  printf '  %-32s %s\n' "io.containerd.runc.v2" "$(line '^PASS ' "$OUT/containerd-io.containerd.runc.v2.txt")"
  printf '  %-32s %s\n' "io.containerd.custom.v2 (runc)" "$(line '^PASS ' "$OUT/containerd-io.containerd.custom.v2.txt")"
  printf '  %-32s %s\n' "io.containerd.custom.v2 (runsc)" "$(line '^PASS ' "$OUT/containerd-io.containerd.custom.v2-runsc.txt")"
  echo
  echo "critest $CRI_TOOLS_VERSION"
  printf '  %-32s %s\n' "runc (containerd runc shim)" "$(line '^passed ' "$OUT/critest-runc.txt")"
  printf '  %-32s %s\n' "custom-runc" "$(line '^passed ' "$OUT/critest-custom-runc.txt")"
  printf '  %-32s %s\n' "custom-runsc" "$(line '^passed ' "$OUT/critest-custom-runsc.txt")"
  printf '  %-32s %s\n' "custom-runc-sb (sandboxer shim)" "$(line '^passed ' "$OUT/critest-custom-runc-sb.txt")"
  printf '  %-32s %s\n' "custom-runsc-sb (sandboxer shim)" "$(line '^passed ' "$OUT/critest-custom-runsc-sb.txt")"
  printf '  %-32s %s\n' "custom-runc-pool (shared shim)" "$(line '^passed ' "$OUT/critest-custom-runc-pool.txt")"
  echo
  echo "crictl smoke: $(tail -1 "$OUT/crictl-smoke.txt" 2>/dev/null || echo '(not run)')"
  grep '^FAIL ' "$OUT/crictl-smoke.txt" 2>/dev/null | sed 's/^/  /' || true
  echo
  echo "timings:"; sed 's/^/  /' "$timings"
} > "$OUT/summary.txt"
cat "$OUT/summary.txt"
