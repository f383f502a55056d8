package aggregator

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/custom-runtime/containerd-shim-custom-v2/internal/promtooltest"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
)

// populated is a real shim recorder with every family and label in use.
func populated() *metrics.Recorder {
	r := metrics.New(metrics.Options{})
	for i, l := range []metrics.Labels{runc, {Backend: "runsc", Handler: "custom-runsc"}} {
		for j := range 3 {
			tk := metrics.Task{Namespace: "k8s.io", ID: fmt.Sprintf("t%d%d", i, j), Pod: "p", PodNamespace: "ns", Container: "c"}
			r.TaskCreated(l, tk)
			r.TaskStarted(l, tk, 50*time.Millisecond)
			r.TaskState(l, tk, metrics.StatePaused)
		}
		r.TaskExited(l, metrics.Task{ID: "t00"}, metrics.ExitSignaled, time.Minute)
		r.OOM(l)
		r.ExecStarted(l)
		r.ExecExited(l, metrics.ExitCompleted)
		r.BackendCommand(l, "create", errors.New("x"), time.Second)
	}
	r.RPC("Create", "ok", time.Millisecond)
	r.RPC("Wait", "ok", time.Minute)
	return r
}

// The aggregator's output: live shims, a folded final, its own metrics.
func TestPromtoolCheckMetrics(t *testing.T) {
	bin := promtooltest.Binary(t)
	a := newTestAggregator(t, nil)
	for i := range 2 {
		stop, err := metrics.Serve(context.Background(), metrics.SocketPath(a.sockets, fmt.Sprint("s", i)), populated())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { check(t, stop()) })
	}
	if err := populated().WriteFinal(a.state, "gone"); err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	a.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	out := w.Body.String()
	if !strings.Contains(out, "containerd_shim_custom_tasks_created_total") || !strings.Contains(out, "process_start_time_seconds") {
		t.Fatalf("aggregator output incomplete:\n%s", out)
	}
	promtooltest.Lint(t, bin, "the aggregator", out)

	// With constant labels and an excluded family.
	st, err := parseSettings("c.yml", []byte("exclude_families: [task_state]\nconst_labels: {node: n1, cluster: c}\n"), a.set.Load(), nil)
	if err != nil {
		t.Fatal(err)
	}
	a.set.Store(st)
	w = httptest.NewRecorder()
	a.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	out = w.Body.String()
	if !strings.Contains(out, `process_start_time_seconds{cluster="c",node="n1"}`) || strings.Contains(out, "containerd_shim_custom_task_state{") {
		t.Fatalf("labels or exclusion not applied:\n%s", out)
	}
	promtooltest.Lint(t, bin, "the aggregator with constant labels", out)
}
