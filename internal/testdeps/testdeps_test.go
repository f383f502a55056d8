package testdeps

import (
	"errors"
	"testing"
)

// recorder is a testing.TB that records how the test ended instead of
// ending the caller.
type recorder struct {
	testing.TB
	failed, skipped bool
}

func (r *recorder) Helper()               {}
func (r *recorder) Fatalf(string, ...any) { r.failed = true }
func (r *recorder) Skipf(string, ...any)  { r.skipped = true }

func TestRequire(t *testing.T) {
	for _, tc := range []struct {
		name          string
		ci            string
		err           error
		fail, skipped bool
	}{
		{name: "present", ci: "1"},
		{name: "missing outside CI", err: errors.New("no"), skipped: true},
		{name: "missing under CI", ci: "1", err: errors.New("no"), fail: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			r := &recorder{TB: t}
			Require(r, "thing", tc.err)
			if r.failed != tc.fail || r.skipped != tc.skipped {
				t.Fatalf("failed=%v skipped=%v, want %v %v", r.failed, r.skipped, tc.fail, tc.skipped)
			}
		})
	}
}
