#!/usr/bin/env bash
# failures.sh LOG... - the assertions of the failing tests in go test -v output, printed last by make
# integration and make test-cgroup2 so that the end of a long failed run names what failed (a failing
# test's daemon log dump otherwise buries it): each failing top-level test and the file:line messages
# logged under it (the last 30), the long ones cut.
set -euo pipefail
for log in "$@"; do
  [ -s "$log" ] || continue
  awk -v src="$log" '
    /^=== RUN   Test[^\/]*$/ { n = 0 }
    /^ +[A-Za-z0-9_]+_test\.go:[0-9]+: / {
      line = $0; sub(/^ +/, "", line)
      if (length(line) > 400) line = substr(line, 1, 400) " [...]"
      buf[n++ % 30] = line
    }
    /^--- FAIL: Test/ {
      if (!header++) print "--- failures (" src ")"
      print $3 ":"
      for (i = (n > 30 ? n - 30 : 0); i < n; i++) print "    " buf[i % 30]
      n = 0
    }
  ' "$log"
done
