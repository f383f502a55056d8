package metrics

import (
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/custom-runtime/containerd-shim-custom-v2/internal/promtooltest"
)

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
	r.EventDropped("/tasks/exit", EventRefused)
	r.Panic("/containerd.task.v3.Task/Pause")
	return r
}

// The aggregator's output is linted in pkg/aggregator.
func TestPromtoolCheckMetrics(t *testing.T) {
	bin := promtooltest.Binary(t)
	scrape := func(r *Recorder) string {
		w := httptest.NewRecorder()
		r.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
		return w.Body.String()
	}
	promtooltest.Lint(t, bin, "a shim", scrape(populated(Options{})))
	promtooltest.Lint(t, bin, "a shim with Go and process metrics", scrape(populated(Options{GoMetrics: true, ProcessMetrics: true})))

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
	promtooltest.Lint(t, bin, "a final snapshot", string(final))
}
