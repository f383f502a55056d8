// Package promtooltest lints exposition text with promtool in tests.
package promtooltest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Version is the Prometheus module whose promtool lints our output
// (Prometheus 3.x tags its Go module v0.3xx).
const Version = "v0.316.0"

// Binary returns a promtool binary: $PROMTOOL, or one built from the module
// proxy into <repo>/.tools/bin on first use (a few minutes); it skips the
// test when neither can be had.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("PROMTOOL"); p != "" {
		return p
	}
	root, err := moduleRoot()
	if err != nil {
		t.Skipf("promtool: %v", err)
	}
	dir := filepath.Join(root, ".tools", "bin")
	bin := filepath.Join(dir, "promtool")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if testing.Short() {
		t.Skip("promtool not built yet and -short is set")
	}
	t.Logf("building promtool %s into %s (cached; a few minutes the first time)", Version, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "install", "github.com/prometheus/prometheus/cmd/promtool@"+Version)
	cmd.Dir = os.TempDir() // outside our module: go install pkg@version must not touch go.mod
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-buildvcs=false")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("cannot build promtool %s (offline, or no module proxy?): %v\n%s", Version, err, tail(out))
	}
	return bin
}

// Lint runs promtool check metrics on text and fails the test on any
// finding.
func Lint(t testing.TB, bin, what, text string) {
	t.Helper()
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("promtool check metrics on %s: %v\n%s", what, err, out)
	}
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the test's directory")
		}
		dir = parent
	}
}

func tail(b []byte) string {
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
