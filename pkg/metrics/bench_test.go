package metrics

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"
)

// The task path: what each lifecycle call costs the RPC that makes it.

func BenchmarkRecordCounter(b *testing.B) {
	r := New(Options{})
	r.OOM(runc)
	b.ReportAllocs()
	for b.Loop() {
		r.OOM(runc)
	}
}

func BenchmarkRecordTaskStarted(b *testing.B) {
	r := New(Options{})
	r.TaskCreated(runc, taskA)
	b.ReportAllocs()
	for b.Loop() {
		r.TaskStarted(runc, taskA, 30*time.Millisecond)
	}
}

func BenchmarkRecordTaskState(b *testing.B) {
	r := New(Options{})
	r.TaskCreated(runc, taskA)
	b.ReportAllocs()
	for b.Loop() {
		r.TaskState(runc, taskA, StatePaused)
	}
}

func BenchmarkRecordRPC(b *testing.B) {
	r := New(Options{})
	b.ReportAllocs()
	for b.Loop() {
		r.RPC("/containerd.task.v3.Task/State", "ok", 40*time.Microsecond)
	}
}

func BenchmarkRecordBackendCommand(b *testing.B) {
	r := New(Options{})
	b.ReportAllocs()
	for b.Loop() {
		r.BackendCommand(runc, "state", nil, 5*time.Millisecond)
	}
}

// Many RPCs at once, as when containerd starts a pod's containers.
func BenchmarkRecordRPCParallel(b *testing.B) {
	r := New(Options{})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.RPC("State", "ok", 40*time.Microsecond)
		}
	})
}

// Recording while the recorder is being scraped in a loop: the task path
// must not wait for scrapes.
func BenchmarkRecordDuringScrapes(b *testing.B) {
	r := withTasks(100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		h := r.Handler()
		for ctx.Err() == nil {
			h.ServeHTTP(discard{}, httptest.NewRequest("GET", "/metrics", nil))
		}
	}()
	t := Task{Namespace: "k8s.io", ID: "t0"}
	b.ReportAllocs()
	for b.Loop() {
		r.TaskState(runc, t, StateRunning)
		r.RPC("State", "ok", time.Microsecond)
	}
}

// withTasks is a shim with n tasks through a typical life.
func withTasks(n int) *Recorder {
	r := New(Options{})
	for i := range n {
		t := Task{Namespace: "k8s.io", ID: fmt.Sprintf("task-%03d", i), Pod: fmt.Sprintf("pod-%d", i/2), PodNamespace: "default", Container: "app"}
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

// One scrape of a shim with 100 tasks, handler to bytes.
func BenchmarkScrapeRecorder100Tasks(b *testing.B) {
	r := withTasks(100)
	h := r.Handler()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(discard{}, httptest.NewRequest("GET", "/metrics", nil))
	}
	// After the loop: b.Loop's first call resets reported metrics.
	b.ReportMetric(float64(w.Body.Len()), "bytes/scrape")
}

// The same in protobuf, which the aggregator asks for.
func BenchmarkScrapeRecorder100TasksProto(b *testing.B) {
	h := withTasks(100).Handler()
	req := httptest.NewRequest("GET", "/metrics", nil)
	req.Header.Set("Accept", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(discard{}, req)
	}
	b.ReportMetric(float64(w.Body.Len()), "bytes/scrape")
}

// The same over the unix socket, as the aggregator sees it.
func BenchmarkScrapeRecorder100TasksSocket(b *testing.B) {
	sock := SocketPath(shortDir(b), "s")
	stop, err := Serve(context.Background(), sock, withTasks(100))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { check(b, stop()) }()
	b.ReportAllocs()
	for b.Loop() {
		resp, _, err := unixGet(sock, "/metrics") //nolint:bodyclose // unixGet read and closed the body
		if err != nil || resp.StatusCode != 200 {
			b.Fatal(err)
		}
	}
}

// Heap held by a recorder with 100 tasks (series resolved, task map full).
func BenchmarkRecorderMemory100Tasks(b *testing.B) {
	keep := make([]*Recorder, 0, 64)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	n := 0
	for b.Loop() {
		keep = append(keep, withTasks(100))
		n++
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(n), "heap-B/recorder")
	runtime.KeepAlive(keep)
}
