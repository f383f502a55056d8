package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func TestCompare(t *testing.T) {
	anchored := func(exprs ...string) []*regexp.Regexp {
		var out []*regexp.Regexp
		for _, e := range exprs {
			out = append(out, regexp.MustCompile("^(?:"+e+")$"))
		}
		return out
	}
	cases := []struct {
		name     string
		base     []string
		ours     []string
		excluded []*regexp.Regexp
		want     string
		ok       bool
	}{
		{
			name: "everything the baseline passed",
			base: []string{"TestA", "TestB"}, ours: []string{"TestA", "TestB"},
			want: "ok    x                                        2 passed (baseline 2, 0 excluded by the backend skip list)\n",
			ok:   true,
		},
		{
			name: "missing tests are listed, sorted",
			base: []string{"TestA", "TestB", "TestC"}, ours: []string{"TestB"},
			want: "FAIL  x                                        passes 1 of the 3 expected\n" +
				"        not passed: TestA\n        not passed: TestC\n",
		},
		{
			name: "extra passes are reported, and do not fail",
			base: []string{"TestA"}, ours: []string{"TestA", "TestZ"},
			want: "ok    x                                        2 passed (baseline 1, 0 excluded by the backend skip list)\n" +
				"        also passed (baseline did not): TestZ\n",
			ok: true,
		},
		{
			name: "extra passes are reported under a failure too",
			base: []string{"TestA"}, ours: []string{"TestZ"},
			want: "FAIL  x                                        passes 0 of the 1 expected\n" +
				"        not passed: TestA\n        also passed (baseline did not): TestZ\n",
		},
		{
			name: "tests the backend skips are not expected",
			base: []string{"TestA", "TestBind", "TestBindOther", "TestCheckpointX"}, ours: []string{"TestA", "TestBindOther"},
			excluded: anchored("TestBind", "TestCheckpoint.*"),
			want:     "ok    x                                        2 passed (baseline 4, 2 excluded by the backend skip list)\n",
			ok:       true,
		},
		{
			name: "an excluded test that passed anyway is an extra",
			base: []string{"TestA", "TestB"}, ours: []string{"TestA", "TestB"},
			excluded: anchored("TestB"),
			want: "ok    x                                        2 passed (baseline 2, 1 excluded by the backend skip list)\n" +
				"        also passed (baseline did not): TestB\n",
			ok: true,
		},
		{
			name: "a run that passed nothing fails even when nothing is expected",
			base: nil, ours: nil,
			want: "FAIL  x                                        passes 0 of the 0 expected\n",
		},
		{
			name: "a run that passed nothing of a baseline",
			base: []string{"TestA"}, ours: nil,
			want: "FAIL  x                                        passes 0 of the 1 expected\n        not passed: TestA\n",
		},
		{
			name: "empty baseline, something passed",
			base: nil, ours: []string{"TestA"},
			want: "ok    x                                        1 passed (baseline 0, 0 excluded by the backend skip list)\n" +
				"        also passed (baseline did not): TestA\n",
			ok: true,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := compare("x", tc.base, tc.ours, tc.excluded)
			var b strings.Builder
			c.write(&b)
			if b.String() != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", b.String(), tc.want)
			}
			if c.ok() != tc.ok {
				t.Errorf("ok = %v, want %v", c.ok(), tc.ok)
			}
		})
	}
}

func TestExtraSkips(t *testing.T) {
	ours := []string{"TestA", "TestCheckpoint.*", "TestRuntimeInfo"}
	base := []string{"TestA", "TestCheckpoint.*"}
	res, err := extraSkips(ours, base, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || !res[0].MatchString("TestRuntimeInfo") || res[0].MatchString("TestRuntimeInfoX") || res[0].MatchString("XTestRuntimeInfo") {
		t.Errorf("anchored extra skips %v: want TestRuntimeInfo only, whole names", res)
	}
	res, err = extraSkips([]string{`should support portforward \[Conformance\]`, "port mapping"}, []string{"port mapping"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || !res[0].MatchString("[It] [sig-node] Streaming runtime should support portforward [Conformance]") {
		t.Errorf("unanchored extra skips %v: want a match anywhere in the spec name", res)
	}
	if _, err := extraSkips([]string{"(unclosed"}, nil, true); err == nil {
		t.Error("a skip entry that is not a regexp: no error")
	}
	if res, err := extraSkips(nil, base, true); err != nil || len(res) != 0 {
		t.Errorf("no skips of its own: %v %v", res, err)
	}
}

// TestGateFixtures runs the gate over reports in the formats run-all.sh's
// suites write. The .want files are what scripts/peer/gate.sh (the bash
// gate this replaced) printed for the same directories, plus the lines of
// the sandboxed handlers (custom-runc-sb, custom-runsc-sb) added since.
func TestGateFixtures(t *testing.T) {
	for _, tc := range []struct {
		dir string
		ok  bool
	}{{"pass", true}, {"fail", false}} {
		t.Run(tc.dir, func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join("testdata", tc.dir+".want"))
			if err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			if ok := gate(filepath.Join("testdata", tc.dir), &b); ok != tc.ok {
				t.Errorf("gate = %v, want %v", ok, tc.ok)
			}
			if b.String() != string(want) {
				t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
			}
		})
	}
}

// copyDir copies the files of a fixture directory into a temporary one.
func copyDir(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

func TestGateReports(t *testing.T) {
	cases := []struct {
		name  string
		edit  func(t *testing.T, dir string)
		lines []string // lines that must be in the output
		ok    bool
	}{
		{
			name: "nothing ran",
			edit: func(t *testing.T, dir string) {
				entries, _ := os.ReadDir(dir)
				for _, e := range entries {
					if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
						t.Fatal(err)
					}
				}
			},
			lines: []string{
				"FAIL  missing DIR/containerd-io.containerd.runc.v2.log (did run-all.sh run this suite?)",
				"FAIL  missing DIR/critest-runc.junit.xml (did run-all.sh run this suite?)",
				"FAIL  missing DIR/crictl-smoke.txt (did run-all.sh run this suite?)",
			},
		},
		{
			// The bash gate stopped at the first such log (grep found no
			// PASS line and set -e ended it): the remaining comparisons
			// were never printed.
			name: "a run that passed nothing",
			edit: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "containerd-io.containerd.custom.v2.log"), "--- FAIL: TestContainerList (0.01s)\nFAIL\n")
			},
			lines: []string{
				"FAIL  containerd suite, custom-runc            passes 0 of the 5 expected",
				"        not passed: TestContainerList",
				"ok    containerd suite, custom-runsc           3 passed (baseline 5, 2 excluded by the backend skip list)",
				"ok    crictl smoke                             SMOKE OK",
			},
		},
		{
			name: "an empty report counts as missing",
			edit: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "critest-custom-runc.junit.xml"), "")
			},
			lines: []string{
				"FAIL  missing DIR/critest-custom-runc.junit.xml (did run-all.sh run this suite?)",
				"ok    critest, custom-runsc                    2 passed (baseline 4, 2 excluded by the backend skip list)",
			},
		},
		{
			name: "a sandboxed handler that did not run fails the gate",
			edit: func(t *testing.T, dir string) {
				if err := os.Remove(filepath.Join(dir, "critest-custom-runsc-sb.junit.xml")); err != nil {
					t.Fatal(err)
				}
			},
			lines: []string{
				"ok    critest, custom-runc-sb                  3 passed (baseline 4, 1 excluded by the backend skip list)",
				"FAIL  missing DIR/critest-custom-runsc-sb.junit.xml (did run-all.sh run this suite?)",
			},
		},
		{
			// custom-runc-sb excludes the portforward spec; custom-runc
			// must still pass it
			name: "one handler's exclusion does not excuse another",
			edit: func(t *testing.T, dir string) {
				data, err := os.ReadFile(filepath.Join(dir, "critest-custom-runc-sb.junit.xml"))
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(dir, "critest-custom-runc.junit.xml"), string(data))
			},
			lines: []string{
				"FAIL  critest, custom-runc                     passes 3 of the 4 expected",
				"        not passed: [It] [sig-node] Streaming runtime should support portforward [Conformance]",
				"ok    critest, custom-runc-sb                  3 passed (baseline 4, 1 excluded by the backend skip list)",
			},
		},
		{
			name: "a broken JUnit report fails its comparison",
			edit: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "critest-custom-runsc.junit.xml"), "<testsuites><testsuite>")
			},
			lines: []string{"FAIL  critest, custom-runsc: parse junit report: XML syntax error on line 1: unexpected EOF"},
		},
		{
			name: "a skip entry that is not a regexp fails its comparison",
			edit: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "critest-custom-runc.txt"), "skip: (unclosed\n")
			},
			lines: []string{"FAIL  critest, custom-runc: skip entry \"(unclosed\": error parsing regexp: missing closing ): `(unclosed`"},
		},
		{
			name: "a skip the baseline had too does not excuse a test",
			edit: func(t *testing.T, dir string) {
				// the runsc run skips TestRuntimeInfo, and now so did the
				// baseline: the baseline passed it anyway (a self-skip
				// list entry that did not apply), so runsc must pass it
				writeFile(t, filepath.Join(dir, "containerd-io.containerd.runc.v2.txt"), "skip list: TestImagePullAllPlatforms TestMigration TestCheckpoint.* TestDaemonRuntimeRoot TestRuntimeInfo\n")
			},
			lines: []string{
				"FAIL  containerd suite, custom-runsc           passes 3 of the 4 expected",
				"        not passed: TestRuntimeInfo",
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyDir(t, filepath.Join("testdata", "pass"))
			tc.edit(t, dir)
			var b strings.Builder
			if ok := gate(dir, &b); ok != tc.ok {
				t.Errorf("gate = %v, want %v", ok, tc.ok)
			}
			got := strings.Split(b.String(), "\n")
			for _, l := range tc.lines {
				l = strings.ReplaceAll(l, "DIR", dir)
				if !slices.Contains(got, l) {
					t.Errorf("output lacks %q:\n%s", l, b.String())
				}
			}
		})
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestRun(t *testing.T) {
	cases := []struct {
		name string
		args []string
		rc   int
		out  string // a line of stdout
		err  string // a line of stderr
	}{
		{name: "no command", args: nil, rc: 2, err: "usage: peercheck leftovers [-runsc PATH] DIR... | pids STRING | gate [DIR]"},
		{name: "unknown command", args: []string{"frob"}, rc: 2, err: `peercheck: unknown command "frob"`},
		{name: "gate passes", args: []string{"gate", "testdata/pass"}, rc: 0, out: "ok    crictl smoke                             SMOKE OK"},
		{name: "gate fails", args: []string{"gate", "testdata/fail"}, rc: 1, out: "FAIL  crictl smoke"},
		{name: "gate takes one directory", args: []string{"gate", "a", "b"}, rc: 2, err: "usage: peercheck gate [DIR]"},
		{name: "leftovers needs a directory", args: []string{"leftovers"}, rc: 2, err: "usage: peercheck leftovers [-runsc PATH] DIR..."},
		{name: "leftovers refuses /", args: []string{"leftovers", "/"}, rc: 1},
		{name: "pids needs a string", args: []string{"pids", ""}, rc: 2, err: "usage: peercheck pids STRING"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			if rc := run(tc.args, &stdout, &stderr); rc != tc.rc {
				t.Errorf("exit %d, want %d; stderr:\n%s", rc, tc.rc, stderr.String())
			}
			for _, c := range []struct{ got, want string }{{stdout.String(), tc.out}, {stderr.String(), tc.err}} {
				if c.want != "" && !slices.Contains(strings.Split(c.got, "\n"), c.want) {
					t.Errorf("output lacks %q:\n%s", c.want, c.got)
				}
			}
		})
	}
}
