package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseGoTestLog(t *testing.T) {
	long := strings.Repeat("x", 200*1024) // a daemon log line longer than bufio's default
	cases := []struct {
		name string
		log  string
		want []result
	}{
		{
			name: "top-level results",
			log:  "=== RUN   TestA\n--- PASS: TestA (0.01s)\n=== RUN   TestB\n--- FAIL: TestB (1.00s)\n=== RUN   TestC\n    c_test.go:9: no\n--- SKIP: TestC (0.00s)\nFAIL\n",
			want: []result{{"TestA", "PASS", 0}, {"TestB", "FAIL", 0}, {"TestC", "SKIP", 0}},
		},
		{
			name: "subtests are indented four spaces a level",
			log:  "=== RUN   TestA\n=== RUN   TestA/x\n=== RUN   TestA/x/y\n        --- SKIP: TestA/x/y (0.00s)\n    --- PASS: TestA/x (0.00s)\n--- PASS: TestA (0.00s)\n",
			want: []result{{"TestA/x/y", "SKIP", 2}, {"TestA/x", "PASS", 1}, {"TestA", "PASS", 0}},
		},
		{
			name: "a result line must start the line",
			log:  "level=info msg=\"--- PASS: TestFake\"\nno newline before it--- PASS: TestGlued (0.00s)\n--- PASS: TestReal (0.00s)\n",
			want: []result{{"TestReal", "PASS", 0}},
		},
		{
			name: "other statuses and odd indents are not results",
			log:  "--- BENCH: BenchmarkX\n  --- PASS: TestTwoSpaces (0.00s)\n--- PASS: TestOK (0.00s)\n",
			want: []result{{"TestOK", "PASS", 0}},
		},
		{
			name: "long lines",
			log:  long + "\n--- PASS: TestAfterLongLine (0.00s)\n",
			want: []result{{"TestAfterLongLine", "PASS", 0}},
		},
		{name: "empty", log: "", want: nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseGoTestLog(strings.NewReader(tc.log))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseJUnit(t *testing.T) {
	cases := []struct {
		name    string
		xml     string
		want    []result
		wantErr bool
	}{
		{
			name: "ginkgo statuses",
			xml: `<?xml version="1.0" encoding="UTF-8"?>
<testsuites><testsuite name="CRI validation">
  <testcase name="[It] a" classname="CRI validation" status="passed" time="1"></testcase>
  <testcase name="[It] b" classname="CRI validation" status="failed" time="1"><failure message="x" type="failed">boom</failure></testcase>
  <testcase name="[It] c" classname="CRI validation" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
  <testcase name="[It] d" classname="CRI validation" status="timedout" time="9"></testcase>
</testsuite></testsuites>`,
			want: []result{{"[It] a", "passed", 0}, {"[It] b", "failed", 0}, {"[It] c", "skipped", 0}, {"[It] d", "timedout", 0}},
		},
		{
			name: "plain JUnit: the outcome from child elements",
			xml: `<testsuite name="s">
  <testcase name="ok" classname="c" time="1"/>
  <testcase name="bad" classname="c"><failure message="m">trace</failure></testcase>
  <testcase name="broken" classname="c"><error message="m"/></testcase>
  <testcase name="later" classname="c"><skipped/></testcase>
</testsuite>`,
			want: []result{{"ok", "passed", 0}, {"bad", "failed", 0}, {"broken", "error", 0}, {"later", "skipped", 0}},
		},
		{
			name: "entities in names are decoded",
			xml: `<testsuites><testsuite><testcase name="mount with &#39;rshared&#39; &amp; &quot;x&quot; &lt;y&gt; &#34;z&#34;" status="passed"></testcase>
<testcase name="caf&#xE9;" status="passed"></testcase></testsuite></testsuites>`,
			want: []result{{`mount with 'rshared' & "x" <y> "z"`, "passed", 0}, {"café", "passed", 0}},
		},
		{
			name: "output inside a test case is not a test case",
			xml:  `<testsuite><testcase name="a" status="passed"><system-err>&lt;testcase name="fake" status="passed"&gt;</system-err></testcase></testsuite>`,
			want: []result{{"a", "passed", 0}},
		},
		{name: "no test cases", xml: `<testsuites></testsuites>`, want: nil},
		{name: "malformed", xml: `<testsuites><testsuite><testcase name="a" status="passed"></testsuite>`, wantErr: true},
		{name: "not XML", xml: `PASS`, want: nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseJUnit(strings.NewReader(tc.xml))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error: %v", err, tc.wantErr)
			}
			if !tc.wantErr && !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestPassed(t *testing.T) {
	results := []result{
		{"TestB", "PASS", 0}, {"TestA", "PASS", 0}, {"TestA/sub", "PASS", 1}, {"TestC", "FAIL", 0},
		{"TestD", "SKIP", 0}, {"TestA", "PASS", 0}, // -count=2 repeats a test
	}
	if got, want := passed(results, "PASS"), []string{"TestA", "TestB"}; !reflect.DeepEqual(got, want) {
		t.Errorf("passed = %v, want %v", got, want)
	}
	if got := passed(nil, "PASS"); len(got) != 0 {
		t.Errorf("passed(nil) = %v", got)
	}
}

func TestSkipEntries(t *testing.T) {
	summary := "containerd v2.4.2 integration/client\nPASS 3 FAIL 0 SKIP 1\nskip list: TestA  TestCheckpoint.* TestB\nskip: port mapping\nskip: mount with 'rshared'\nlogs: x\n"
	if got, want := skipList(summary), []string{"TestA", "TestCheckpoint.*", "TestB"}; !reflect.DeepEqual(got, want) {
		t.Errorf("skipList = %q, want %q", got, want)
	}
	if got, want := skipLines(summary), []string{"port mapping", "mount with 'rshared'"}; !reflect.DeepEqual(got, want) {
		t.Errorf("skipLines = %q, want %q", got, want)
	}
	if got := skipList("no skips\n"); got != nil {
		t.Errorf("skipList without the line = %q", got)
	}
}
