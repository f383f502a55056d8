// Package tig is a build-only stand-in for nerdctl's test helper module
// github.com/containerd/nerdctl/mod/tigron, which is not published on the
// module proxy (nerdctl's own go.mod points at it with a local replace).
// nerdctl's non-test code (pkg/testutil/compose.go, v2.1+) only needs the
// tig.T interface.
package tig

// T is the subset of testing.TB that tigron's helpers use.
type T interface {
	Helper()
	FailNow()
	Fail()
	Log(args ...any)
	Name() string
	TempDir() string
	Skip(args ...any)
}
