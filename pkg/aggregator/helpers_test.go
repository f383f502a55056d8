package aggregator

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
)

// check fails the test on a setup step's error.
func check(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// shortDir is a private temporary directory with a short path: unix
// socket paths must fit in 108 bytes, and t.TempDir's embed the test name.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "m")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// flatten renders gathered families as "name{l="v",...}" -> value, with
// histograms as their _count, _sum and _bucket samples.
func flatten(mfs []*dto.MetricFamily) map[string]float64 {
	out := make(map[string]float64)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			key := func(suffix string, extra ...string) string {
				all := append(append([]string{}, ls...), extra...)
				sort.Strings(all)
				return mf.GetName() + suffix + "{" + strings.Join(all, ",") + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key("")] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key("")] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				out[key("_count")] = float64(h.GetSampleCount())
				out[key("_sum")] = h.GetSampleSum()
				for _, b := range h.GetBucket() {
					out[key("_bucket", fmt.Sprintf("le=%q", fmt.Sprint(b.GetUpperBound())))] = float64(b.GetCumulativeCount())
				}
			}
		}
	}
	return out
}

// sumOf adds the samples of one flattened name (any labels).
func sumOf(vals map[string]float64, name string) float64 {
	var s float64
	for k, v := range vals {
		if strings.HasPrefix(k, name+"{") {
			s += v
		}
	}
	return s
}

func gatherFlat(t testing.TB, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	return flatten(mfs)
}

// unixGet fetches http://x/path over the unix socket at sock. It reads and
// closes the body, returned as a string: callers use only the response's
// status and header.
func unixGet(sock, path string) (*http.Response, string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}}
	resp, err := c.Get("http://x" + path)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

// fakeShim serves fixed exposition text on a real unix socket, like a
// shim would, with whatever body and delay the test sets.
type fakeShim struct {
	path, instance string
	srv            *http.Server
	mu             sync.Mutex
	body           string
	contentType    string
	delay          time.Duration
}

func startFakeShim(t testing.TB, dir, name, instance, body string) *fakeShim {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	f := &fakeShim{path: metrics.SocketPath(dir, name), instance: instance, body: body}
	l, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		body, delay, ct := f.body, f.delay, f.contentType
		f.mu.Unlock()
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set(metrics.InstanceHeader, f.instance)
		if ct != "" {
			w.Header().Set("Content-Type", ct)
		}
		_, _ = io.WriteString(w, body) // a scraper that gave up is what some tests want
	})}
	go func() { _ = f.srv.Serve(l) }() // ErrServerClosed once stopped
	t.Cleanup(f.stop)
	return f
}

func (f *fakeShim) set(body string) {
	f.mu.Lock()
	f.body = body
	f.mu.Unlock()
}

func (f *fakeShim) setContentType(ct string) {
	f.mu.Lock()
	f.contentType = ct
	f.mu.Unlock()
}

func (f *fakeShim) setDelay(d time.Duration) {
	f.mu.Lock()
	f.delay = d
	f.mu.Unlock()
}

// stop closes the server, which unlinks the socket.
func (f *fakeShim) stop() {
	f.srv.Close()
	os.Remove(f.path)
}

// counterBody is exposition text of the started counter with value v,
// plus one histogram and one gauge, as a shim would send them.
func counterBody(v float64) string {
	return fmt.Sprintf(`# HELP containerd_shim_custom_tasks_started_total Tasks started.
# TYPE containerd_shim_custom_tasks_started_total counter
containerd_shim_custom_tasks_started_total{backend="runc",runtime_handler=""} %[1]g
# HELP containerd_shim_custom_task_start_latency_seconds Start latency.
# TYPE containerd_shim_custom_task_start_latency_seconds histogram
containerd_shim_custom_task_start_latency_seconds_bucket{backend="runc",runtime_handler="",le="0.1"} %[1]g
containerd_shim_custom_task_start_latency_seconds_bucket{backend="runc",runtime_handler="",le="1"} %[1]g
containerd_shim_custom_task_start_latency_seconds_bucket{backend="runc",runtime_handler="",le="+Inf"} %[1]g
containerd_shim_custom_task_start_latency_seconds_sum{backend="runc",runtime_handler=""} %[2]g
containerd_shim_custom_task_start_latency_seconds_count{backend="runc",runtime_handler=""} %[1]g
# HELP containerd_shim_custom_tasks Tasks.
# TYPE containerd_shim_custom_tasks gauge
containerd_shim_custom_tasks{backend="runc",runtime_handler="",state="running"} 1
`, v, v*0.05)
}

// writeFinalFile writes a final snapshot the way WriteFinal does.
func writeFinalFile(t testing.TB, dir, name, instance, body string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, metrics.FinalFileName(name, instance))); err != nil {
		t.Fatal(err)
	}
}

// testAggregator is an aggregator over fresh directories with a clock the
// test moves.
type testAggregator struct {
	*Aggregator
	sockets, state string
	clock          time.Time
}

func newTestAggregator(t testing.TB, tweak func(*Config)) *testAggregator {
	t.Helper()
	d := shortDir(t)
	cfg := Config{SocketDir: filepath.Join(d, "s"), StateDir: filepath.Join(d, "f"), ScrapeTimeout: 2 * time.Second}
	if tweak != nil {
		tweak(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ta := &testAggregator{Aggregator: a, sockets: cfg.SocketDir, state: cfg.StateDir, clock: time.Unix(1_000_000, 0)}
	a.now = func() time.Time { return ta.clock }
	return ta
}

// scrape runs one aggregator scrape and returns the shims' part.
func (a *testAggregator) scrape(t testing.TB) map[string]float64 {
	t.Helper()
	return flatten(a.gather(a.set.Load()))
}

const startedKey = `containerd_shim_custom_tasks_started_total{backend="runc",runtime_handler=""}`

var runc = metrics.Labels{Backend: "runc", Handler: "custom-runc"}
