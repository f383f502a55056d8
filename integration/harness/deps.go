package harness

import (
	"testing"

	"github.com/custom-runtime/containerd-shim-custom-v2/internal/testdeps"
)

// InCI reports whether the tests run in CI: $CI is set (non-empty; .ci/run
// exports CI=1). There a missing dependency fails the test instead of
// skipping it, so that a green CI run means the tests ran.
func InCI() bool { return testdeps.InCI() }

// RequireDep ends the test when a dependency is missing (err != nil): it
// skips the test, or fails it under CI (InCI). what names the dependency
// and where it comes from, e.g. "crun (scripts/deps.sh installs it)".
//
// Only for what the test needs and the machine may lack (root, a binary,
// a tool build); a test that does not apply to a backend, or that the
// host's kernel cannot run, skips with its own reason.
func RequireDep(t testing.TB, what string, err error) {
	t.Helper()
	testdeps.Require(t, what, err)
}

// NeedRoot returns an error unless the process runs as root, for
// RequireDep and TestMain.
func NeedRoot() error { return testdeps.NeedRoot() }

// NeedExecutable returns an error unless path is an executable file.
func NeedExecutable(path string) error { return testdeps.NeedExecutable(path) }
