#!/usr/bin/env bash
# gate.sh - pass/fail verdict over a run-all.sh run (_output/peer): this shim
# must pass exactly what containerd's runc shim passes on the same daemon and
# images, minus the tests a backend's skip list names (each with its reason in
# containerd-suite.sh / critest.sh), and the crictl smoke must pass.
# Prints each comparison; exit 1 if any differs. CI runs it after run-all.sh.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
rc=0

# passed_go LOG: top-level tests that passed in a `go test -v` log
passed_go() { grep -oE '^--- PASS: [^ ]+' "$1" | awk '{print $3}' | sort -u; }
# passed_junit XML: ginkgo specs that passed
passed_junit() {
  grep -oE '<testcase name="[^"]*"[^>]*status="passed"' "$1" |
    sed -E 's/^<testcase name="([^"]*)".*/\1/; s/&#39;/'"'"'/g; s/&#34;/"/g; s/&quot;/"/g; s/&amp;/\&/g' | sort -u
}
# skiplist TXT: the "skip list:" line of a suite summary, one entry per line
skiplist() { sed -n 's/^skip list: //p' "$1" | tr ' ' '\n' | sed '/^$/d'; }

# compare NAME BASELINE_SET OURS_SET EXCLUDED_REGEX_FILE
compare() {
  local name=$1 base=$2 ours=$3 excl=$4 want
  want=$(mktemp)
  if [ -s "$excl" ]; then grep -vEf "$excl" "$base" > "$want" || true; else cp "$base" "$want"; fi
  local missing extra
  missing=$(comm -23 "$want" "$ours"); extra=$(comm -13 "$want" "$ours")
  if [ -z "$missing" ] && [ "$(wc -l < "$ours")" -gt 0 ]; then
    printf 'ok    %-40s %s passed (baseline %s, %s excluded by the backend skip list)\n' \
      "$name" "$(wc -l < "$ours")" "$(wc -l < "$base")" "$(( $(wc -l < "$base") - $(wc -l < "$want") ))"
  else
    printf 'FAIL  %-40s passes %s of the %s expected\n' "$name" "$(comm -12 "$want" "$ours" | wc -l)" "$(wc -l < "$want")"
    [ -n "$missing" ] && sed 's/^/        not passed: /' <<< "$missing"
    rc=1
  fi
  [ -n "$extra" ] && sed 's/^/        also passed (baseline did not): /' <<< "$extra"
  rm -f "$want"
}

t=$(mktemp -d); trap 'rm -rf "$t"' EXIT
need() { [ -s "$1" ] || { echo "FAIL  missing $1 (did run-all.sh run this suite?)"; rc=1; return 1; }; }

# containerd's client suite
if need "$OUT/containerd-io.containerd.runc.v2.log"; then
  passed_go "$OUT/containerd-io.containerd.runc.v2.log" > "$t/c-base"
  skiplist "$OUT/containerd-io.containerd.runc.v2.txt" > "$t/c-base-skip"
  for v in "" -runsc; do
    f=$OUT/containerd-io.containerd.custom.v2$v
    need "$f.log" || continue
    passed_go "$f.log" > "$t/c-ours"
    # exclude what this run skipped beyond the baseline's own skips (anchored)
    skiplist "$f.txt" | grep -vxFf "$t/c-base-skip" | sed 's/.*/^&$/' > "$t/c-excl" || true
    compare "containerd suite, custom${v:-"-runc"}" "$t/c-base" "$t/c-ours" "$t/c-excl"
  done
fi

# critest
if need "$OUT/critest-runc.junit.xml"; then
  passed_junit "$OUT/critest-runc.junit.xml" > "$t/k-base"
  for h in custom-runc custom-runsc; do
    need "$OUT/critest-$h.junit.xml" || continue
    passed_junit "$OUT/critest-$h.junit.xml" > "$t/k-ours"
    # critest.sh writes its skips one per "skip:" line (they contain spaces)
    sed -n 's/^skip: //p' "$OUT/critest-$h.txt" | grep -vxFf <(sed -n 's/^skip: //p' "$OUT/critest-runc.txt") > "$t/k-excl" || true
    compare "critest, $h" "$t/k-base" "$t/k-ours" "$t/k-excl"
  done
fi

# crictl smoke
if need "$OUT/crictl-smoke.txt"; then
  if grep -q '^FAIL ' "$OUT/crictl-smoke.txt"; then
    echo "FAIL  crictl smoke"; grep '^FAIL ' "$OUT/crictl-smoke.txt" | sed 's/^/        /'; rc=1
  else
    echo "ok    crictl smoke                             $(tail -1 "$OUT/crictl-smoke.txt")"
  fi
fi
exit $rc
