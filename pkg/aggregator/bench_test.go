package aggregator

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
)

// withTasks is a shim with n tasks through a typical life.
func withTasks(n int) *metrics.Recorder {
	r := metrics.New(metrics.Options{})
	for i := range n {
		t := metrics.Task{Namespace: "k8s.io", ID: fmt.Sprintf("task-%03d", i), Pod: fmt.Sprintf("pod-%d", i/2), PodNamespace: "default", Container: "app"}
		r.TaskCreated(runc, t)
		r.TaskStarted(runc, t, 40*time.Millisecond)
		for _, m := range []string{"Create", "Start", "State", "Wait", "Stats", "Pids"} {
			r.RPC(m, "ok", time.Millisecond)
		}
		r.RPC("Kill", "not_found", time.Millisecond)
		for _, c := range []string{"create", "start", "state", "kill", "delete"} {
			r.BackendCommand(runc, c, nil, 10*time.Millisecond)
		}
	}
	return r
}

type discard struct{}

func (discard) Header() http.Header         { return http.Header{} }
func (discard) Write(p []byte) (int, error) { return len(p), nil }
func (discard) WriteHeader(int)             {}

// One aggregator scrape over 100 live shims (real recorders behind real
// sockets, 10 tasks each) plus their self metrics.
func BenchmarkAggregator100Shims(b *testing.B) {
	a := newTestAggregator(b, nil)
	for i := range 100 {
		r := withTasks(10)
		stop, err := metrics.Serve(context.Background(), metrics.SocketPath(a.sockets, fmt.Sprintf("shim%03d", i)), r)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { check(b, stop()) })
	}
	h := a.Handler()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	if w.Code != 200 {
		b.Fatalf("status %d", w.Code)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(discard{}, httptest.NewRequest("GET", "/metrics", nil))
	}
	b.StopTimer()
	// What the aggregator keeps between scrapes: 100 live views, totals.
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc), "retained-heap-B")
	b.ReportMetric(float64(w.Body.Len()), "bytes/scrape")
	if errs := sumOf(gatherFlat(b, a.reg), "containerd_shim_custom_aggregator_shim_scrape_errors_total"); errs != 0 {
		b.Fatalf("%v scrape errors", errs)
	}
}

// Folding 100 final snapshots (of 100 shims that exited at once).
func BenchmarkAggregatorFold100Finals(b *testing.B) {
	a := newTestAggregator(b, nil)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		r := withTasks(10) // a new instance each round: no tombstone shortcuts
		for i := range 100 {
			if err := r.WriteFinal(a.state, fmt.Sprintf("shim%03d", i)); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		a.foldFinals(context.Background())
	}
}
