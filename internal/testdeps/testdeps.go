// Package testdeps ends a test whose privilege or tool is missing: it
// skips on a developer's machine and fails under CI, so that a green CI run
// means the tests ran. Tests in pkg/ and integration/ use it for every
// missing privilege or tool; a test that does not apply (another backend,
// a kernel that cannot do it) skips with its own reason instead.
package testdeps

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run in CI: $CI is set (non-empty; .ci/run
// exports CI=1).
func InCI() bool { return os.Getenv("CI") != "" }

// Require ends the test when a dependency is missing (err != nil): it
// skips the test, or fails it under CI (InCI). what names the dependency
// and where it comes from, e.g. "crun (scripts/deps.sh installs it)".
func Require(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if InCI() {
		t.Fatalf("missing dependency: %s: %v (CI is set: a missing dependency fails instead of skipping)", what, err)
		return
	}
	t.Skipf("missing dependency: %s: %v", what, err)
}

// RequireRoot ends the test (Require) unless it runs as root; why says
// what needs it.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	Require(t, "root ("+why+")", NeedRoot())
}

// RequireCommand ends the test (Require) unless name is on $PATH, and
// returns its path. from says where it comes from.
func RequireCommand(t testing.TB, name, from string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	Require(t, name+" ("+from+")", err)
	return path
}

// NeedRoot returns an error unless the process runs as root.
func NeedRoot() error {
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Errorf("running as uid %d, the test needs root", uid)
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
