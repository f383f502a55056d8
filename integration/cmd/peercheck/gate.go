package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// comparison is one suite run of this shim against the baseline run of
// containerd's runc shim: the baseline's passes, less those the run's own
// skip list excludes, must all pass.
type comparison struct {
	name     string
	baseline []string // sorted, distinct
	ours     []string // sorted, distinct
	want     []string // baseline less the excluded
	missing  []string // in want, not passed by ours
	extra    []string // passed by ours, not in want
	both     int      // in want and passed by ours
}

// compare builds a comparison. A baseline test matching any of excluded is
// not expected (the backend skips it, for a reason in its script).
func compare(name string, baseline, ours []string, excluded []*regexp.Regexp) comparison {
	c := comparison{name: name, baseline: baseline, ours: ours}
	for _, t := range baseline {
		if !slices.ContainsFunc(excluded, func(re *regexp.Regexp) bool { return re.MatchString(t) }) {
			c.want = append(c.want, t)
		}
	}
	for _, t := range c.want {
		if _, found := slices.BinarySearch(ours, t); found {
			c.both++
		} else {
			c.missing = append(c.missing, t)
		}
	}
	for _, t := range ours {
		if _, found := slices.BinarySearch(c.want, t); !found {
			c.extra = append(c.extra, t)
		}
	}
	return c
}

// ok reports whether the run passed everything expected, and passed
// something at all (an empty run proves nothing).
func (c comparison) ok() bool { return len(c.missing) == 0 && len(c.ours) > 0 }

func (c comparison) write(w io.Writer) {
	if c.ok() {
		fmt.Fprintf(w, "ok    %-40s %d passed (baseline %d, %d excluded by the backend skip list)\n",
			c.name, len(c.ours), len(c.baseline), len(c.baseline)-len(c.want))
	} else {
		fmt.Fprintf(w, "FAIL  %-40s passes %d of the %d expected\n", c.name, c.both, len(c.want))
		for _, t := range c.missing {
			fmt.Fprintf(w, "        not passed: %s\n", t)
		}
	}
	for _, t := range c.extra {
		fmt.Fprintf(w, "        also passed (baseline did not): %s\n", t)
	}
}

// extraSkips compiles the entries of ours that base lacks (exact match):
// what a backend skips beyond what the baseline skipped too. anchored
// wraps each as ^(entry)$ (go test -skip names whole tests); otherwise an
// entry matches anywhere in a name (ginkgo's --ginkgo.skip).
func extraSkips(ours, base []string, anchored bool) ([]*regexp.Regexp, error) {
	var out []*regexp.Regexp
	for _, s := range ours {
		if slices.Contains(base, s) {
			continue
		}
		expr := s
		if anchored {
			expr = "^(?:" + s + ")$"
		}
		re, err := regexp.Compile(expr)
		if err != nil {
			return nil, fmt.Errorf("skip entry %q: %w", s, err)
		}
		out = append(out, re)
	}
	return out, nil
}

// report is the directory run-all.sh wrote (_output/peer) and the verdict
// so far.
type report struct {
	dir    string
	w      io.Writer
	failed bool
}

// read returns the contents of a report file, or reports it missing (absent
// or empty: the suite did not run) and returns false.
func (r *report) read(name string) (string, bool) {
	path := filepath.Join(r.dir, name)
	data, err := os.ReadFile(path)
	if err != nil || len(data) == 0 {
		fmt.Fprintf(r.w, "FAIL  missing %s (did run-all.sh run this suite?)\n", path)
		r.failed = true
		return "", false
	}
	return string(data), true
}

func (r *report) fail(format string, a ...any) {
	fmt.Fprintf(r.w, "FAIL  "+format+"\n", a...)
	r.failed = true
}

func (r *report) add(c comparison) {
	c.write(r.w)
	if !c.ok() {
		r.failed = true
	}
}

// gate writes the verdict over the run-all.sh report in dir to w, one line
// per comparison, and returns whether every one passed:
//
//   - containerd's client suite with this shim (runc and runsc backends)
//     passes every top-level test the runc shim passed, less the backend's
//     extra skips (containerd-suite.sh's "skip list:" line);
//   - critest with each of this shim's handlers (custom-runc, custom-runsc
//     on the pause path; custom-runc-sb, custom-runsc-sb with sandboxer =
//     "shim"; custom-runc-pool, sharing shims) passes every spec the runc handler passed, less the handler's
//     extra skips (critest.sh's "skip:" lines);
//   - the crictl smoke has no FAIL step.
func gate(dir string, w io.Writer) bool {
	r := &report{dir: dir, w: w}

	if log, ok := r.read("containerd-io.containerd.runc.v2.log"); ok {
		base, err := goPassed(log)
		if err != nil {
			r.fail("containerd suite baseline: %v", err)
		}
		baseSummary, _ := os.ReadFile(filepath.Join(dir, "containerd-io.containerd.runc.v2.txt"))
		for _, run := range []struct{ file, name string }{
			{"containerd-io.containerd.custom.v2", "containerd suite, custom-runc"},
			{"containerd-io.containerd.custom.v2-runsc", "containerd suite, custom-runsc"},
		} {
			name := run.name
			log, ok := r.read(run.file + ".log")
			if !ok {
				continue
			}
			ours, err := goPassed(log)
			if err != nil {
				r.fail("%s: %v", name, err)
				continue
			}
			summary, _ := os.ReadFile(filepath.Join(dir, run.file+".txt"))
			excl, err := extraSkips(skipList(string(summary)), skipList(string(baseSummary)), true)
			if err != nil {
				r.fail("%s: %v", name, err)
				continue
			}
			r.add(compare(name, base, ours, excl))
		}
	}

	if xml, ok := r.read("critest-runc.junit.xml"); ok {
		base, err := junitPassed(xml)
		if err != nil {
			r.fail("critest baseline: %v", err)
		}
		baseSummary, _ := os.ReadFile(filepath.Join(dir, "critest-runc.txt"))
		for _, h := range []string{"custom-runc", "custom-runsc", "custom-runc-sb", "custom-runsc-sb", "custom-runc-pool"} {
			name := "critest, " + h
			xml, ok := r.read("critest-" + h + ".junit.xml")
			if !ok {
				continue
			}
			ours, err := junitPassed(xml)
			if err != nil {
				r.fail("%s: %v", name, err)
				continue
			}
			summary, _ := os.ReadFile(filepath.Join(dir, "critest-"+h+".txt"))
			excl, err := extraSkips(skipLines(string(summary)), skipLines(string(baseSummary)), false)
			if err != nil {
				r.fail("%s: %v", name, err)
				continue
			}
			r.add(compare(name, base, ours, excl))
		}
	}

	if smoke, ok := r.read("crictl-smoke.txt"); ok {
		lines := strings.Split(strings.TrimSuffix(smoke, "\n"), "\n")
		var failed []string
		for _, l := range lines {
			if strings.HasPrefix(l, "FAIL ") {
				failed = append(failed, l)
			}
		}
		if len(failed) > 0 {
			r.fail("crictl smoke")
			for _, l := range failed {
				fmt.Fprintf(w, "        %s\n", l)
			}
		} else {
			fmt.Fprintf(w, "ok    %-40s %s\n", "crictl smoke", lines[len(lines)-1])
		}
	}
	return !r.failed
}

// goPassed returns the top-level tests a go test -v log shows passing.
func goPassed(log string) ([]string, error) {
	results, err := parseGoTestLog(strings.NewReader(log))
	if err != nil {
		return nil, err
	}
	return passed(results, "PASS"), nil
}

// junitPassed returns the test cases a JUnit report shows passing.
func junitPassed(report string) ([]string, error) {
	results, err := parseJUnit(strings.NewReader(report))
	if err != nil {
		return nil, err
	}
	return passed(results, "passed"), nil
}
