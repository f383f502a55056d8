#!/usr/bin/env bash
# gate.sh - pass/fail verdict over a run-all.sh run (_output/peer): this shim
# must pass exactly what containerd's runc shim passes on the same daemon and
# images, minus the tests a backend's skip list names (each with its reason in
# containerd-suite.sh / critest.sh), and the crictl smoke must pass.
# Prints each comparison; exit 1 if any differs. CI runs it after run-all.sh.
#
# The comparison is integration/cmd/peercheck's `gate` (go test -v logs and
# critest's JUnit XML parsed in Go, unit-tested there).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
peercheck gate "$OUT"
