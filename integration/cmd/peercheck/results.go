package main

import (
	"bufio"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
)

// result is one test's outcome in a report.
type result struct {
	Name   string
	Status string // go test: PASS, FAIL, SKIP; JUnit: passed, failed, skipped, ...
	// Depth is a go test result's nesting: 0 for a top-level test, 1 for
	// its subtests, ... (always 0 in JUnit).
	Depth int
}

// goTestLine is go test -v's result line, "--- PASS: TestX (0.01s)",
// indented by four spaces per subtest level.
var goTestLine = regexp.MustCompile(`^((?:    )*)--- (PASS|FAIL|SKIP): (\S+)`)

// parseGoTestLog reads the result lines of a `go test -v` log. Output a
// test printed is ignored, and so is a result line it did not start (a
// test's output that lacked its last newline).
func parseGoTestLog(r io.Reader) ([]result, error) {
	var out []result
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024) // daemons log long lines
	for sc.Scan() {
		m := goTestLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		out = append(out, result{Name: m[3], Status: m[2], Depth: len(m[1]) / 4})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read go test log: %w", err)
	}
	return out, nil
}

// junitCase is a <testcase> of a JUnit report. Ginkgo (critest) gives its
// outcome in a status attribute; other producers only by child elements.
type junitCase struct {
	Name    string    `xml:"name,attr"`
	Status  string    `xml:"status,attr"`
	Failure *struct{} `xml:"failure"`
	Error   *struct{} `xml:"error"`
	Skipped *struct{} `xml:"skipped"`
}

func (c junitCase) status() string {
	switch {
	case c.Status != "":
		return c.Status
	case c.Failure != nil:
		return "failed"
	case c.Error != nil:
		return "error"
	case c.Skipped != nil:
		return "skipped"
	}
	return "passed"
}

// parseJUnit reads every <testcase> of a JUnit XML report, wherever it is
// nested (<testsuites><testsuite> or a lone <testsuite>). Names come back
// with their XML entities decoded.
func parseJUnit(r io.Reader) ([]result, error) {
	var out []result
	d := xml.NewDecoder(r)
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("parse junit report: %w", err)
		}
		se, ok := tok.(xml.StartElement)
		if !ok || se.Name.Local != "testcase" {
			continue
		}
		var c junitCase
		if err := d.DecodeElement(&c, &se); err != nil {
			return nil, fmt.Errorf("parse junit report: %w", err)
		}
		out = append(out, result{Name: c.Name, Status: c.status()})
	}
	return out, nil
}

// passed returns the sorted, distinct names of the results at depth 0 with
// one of the given statuses.
func passed(results []result, statuses ...string) []string {
	set := map[string]bool{}
	for _, r := range results {
		if r.Depth != 0 {
			continue
		}
		for _, s := range statuses {
			if r.Status == s {
				set[r.Name] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// skipList returns the entries of a suite summary's "skip list: a b c"
// line (containerd-suite.sh writes one; entries hold no spaces).
func skipList(summary string) []string {
	var out []string
	for _, line := range strings.Split(summary, "\n") {
		if rest, ok := strings.CutPrefix(line, "skip list: "); ok {
			out = append(out, strings.Fields(rest)...)
		}
	}
	return out
}

// skipLines returns the values of a summary's "skip: REGEXP" lines
// (critest.sh writes one per ginkgo skip; they hold spaces).
func skipLines(summary string) []string {
	var out []string
	for _, line := range strings.Split(summary, "\n") {
		if rest, ok := strings.CutPrefix(line, "skip: "); ok {
			out = append(out, rest)
		}
	}
	return out
}
