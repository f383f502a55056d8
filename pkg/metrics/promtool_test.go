package metrics

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// promtoolVersion is the Prometheus module whose promtool lints our output
// (Prometheus 3.x tags its Go module v0.3xx).
const promtoolVersion = "v0.316.0"

// noPromtool skips the test for want of promtool, or fails it when $CI is
// set: CI builds promtool (scripts/deps.sh), and a green run must mean the
// exposition was linted (the integration suite's harness.RequireDep does
// the same; pkg/ does not import integration/).
func noPromtool(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("missing dependency: "+format+" (CI is set: a missing dependency fails instead of skipping)", args...)
	}
	t.Skipf("missing dependency: "+format, args...)
}

// promtool returns a promtool binary, built from the module proxy into
// <repo>/.tools/bin on first use (a few minutes), or skips the test.
func promtool(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PROMTOOL"); p != "" {
		return p
	}
	root, err := moduleRoot()
	if err != nil {
		noPromtool(t, "promtool: %v", err)
	}
	dir := filepath.Join(root, ".tools", "bin")
	bin := filepath.Join(dir, "promtool")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if testing.Short() {
		t.Skip("promtool not built yet and -short is set")
	}
	t.Logf("building promtool %s into %s (cached; a few minutes the first time)", promtoolVersion, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "install", "github.com/prometheus/prometheus/cmd/promtool@"+promtoolVersion)
	cmd.Dir = os.TempDir() // outside our module: go install pkg@version must not touch go.mod
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-buildvcs=false")
	if out, err := cmd.CombinedOutput(); err != nil {
		noPromtool(t, "cannot build promtool %s (offline, or no module proxy?): %v\n%s", promtoolVersion, err, tail(out))
	}
	return bin
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

// lint runs promtool check metrics on text and fails on any finding.
func lint(t *testing.T, bin, what, text string) {
	t.Helper()
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("promtool check metrics on %s: %v\n%s", what, err, out)
	}
}

// populated is a recorder with every family and label in use.
func populated(opts Options) *Recorder {
	r := New(opts)
	for i, l := range []Labels{runc, runsc} {
		for j := range 3 {
			tk := Task{Namespace: "k8s.io", ID: fmt.Sprintf("t%d%d", i, j), Pod: "p", PodNamespace: "ns", Container: "c"}
			r.TaskCreated(l, tk)
			r.TaskStarted(l, tk, 50*time.Millisecond)
			r.TaskState(l, tk, StatePaused)
		}
		r.TaskExited(l, Task{ID: "t00"}, ExitSignaled, time.Minute)
		r.OOM(l)
		r.ExecStarted(l)
		r.ExecExited(l, ExitCompleted)
		r.BackendCommand(l, "create", errors.New("x"), time.Second)
	}
	r.RPC("Create", "ok", time.Millisecond)
	r.RPC("Wait", "ok", time.Minute)
	return r
}

func TestPromtoolCheckMetrics(t *testing.T) {
	bin := promtool(t)
	scrape := func(r *Recorder) string {
		w := httptest.NewRecorder()
		r.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
		return w.Body.String()
	}
	lint(t, bin, "a shim", scrape(populated(Options{})))
	lint(t, bin, "a shim with Go and process metrics", scrape(populated(Options{GoMetrics: true, ProcessMetrics: true})))

	// The final snapshot file.
	dir := shortDir(t)
	if err := populated(Options{}).WriteFinal(dir, "s"); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.prom"))
	final, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	lint(t, bin, "a final snapshot", string(final))

	// The aggregator: live shims, a folded final, its own metrics.
	a := newTestAggregator(t, nil)
	for i := range 2 {
		stop, err := Serve(context.Background(), SocketPath(a.sockets, fmt.Sprint("s", i)), populated(Options{}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stopServing(t, stop) })
	}
	if err := populated(Options{}).WriteFinal(a.state, "gone"); err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	a.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	out := w.Body.String()
	if !strings.Contains(out, "containerd_shim_custom_tasks_created_total") || !strings.Contains(out, "process_start_time_seconds") {
		t.Fatalf("aggregator output incomplete:\n%s", out)
	}
	lint(t, bin, "the aggregator", out)
}
