package harness

import (
	"fmt"
	"os"
	"testing"
)

// InCI reports whether the tests run in CI: $CI is set (non-empty; .ci/run
// exports CI=1). There a missing dependency fails the test instead of
// skipping it, so that a green CI run means the tests ran.
func InCI() bool { return os.Getenv("CI") != "" }

// RequireDep ends the test when a dependency is missing (err != nil): it
// skips the test, or fails it under CI (InCI). what names the dependency
// and where it comes from, e.g. "crun (scripts/deps.sh installs it)".
//
// Only for what the test needs and the machine may lack (root, a binary,
// a tool build); a test that does not apply to a backend, or that the
// host's kernel cannot run, skips with its own reason.
func RequireDep(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if InCI() {
		t.Fatalf("missing dependency: %s: %v (CI is set: a missing dependency fails instead of skipping)", what, err)
	}
	t.Skipf("missing dependency: %s: %v", what, err)
}

// NeedRoot returns an error unless the process runs as root, for
// RequireDep and TestMain.
func NeedRoot() error {
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Errorf("running as uid %d, the tests need root", uid)
	}
	return nil
}

// NeedExecutable returns an error unless path is an executable file.
func NeedExecutable(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st.IsDir() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}
