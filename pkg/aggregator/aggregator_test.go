package aggregator

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
)

func TestAggregatorSumsLiveShims(t *testing.T) {
	a := newTestAggregator(t, nil)
	startFakeShim(t, a.sockets, "s1", "i1", counterBody(3))
	startFakeShim(t, a.sockets, "s2", "i2", counterBody(4))
	v := a.scrape(t)
	if got := v[startedKey]; got != 7 {
		t.Errorf("started = %v, want 7", got)
	}
	if got := v[`containerd_shim_custom_task_start_latency_seconds_bucket{backend="runc",le="0.1",runtime_handler=""}`]; got != 7 {
		t.Errorf("bucket = %v, want 7", got)
	}
	if got := v[`containerd_shim_custom_tasks{backend="runc",runtime_handler="",state="running"}`]; got != 2 {
		t.Errorf("tasks gauge = %v, want 2", got)
	}
}

// TestAggregatorFoldIn walks one shim through its exit in every order the
// aggregator can observe it, with another shim live throughout, and checks
// after every step that the total is exact: never backwards, never
// counted twice.
func TestAggregatorFoldIn(t *testing.T) {
	type step struct {
		do   string // shim action before the scrape
		want float64
	}
	// The other shim contributes 100 throughout.
	cases := map[string][]step{
		// The clean order: the final lands while the socket is still there.
		"final then socket removed": {
			{"live 5", 105}, {"count 7", 107}, {"count 8; final 8", 108}, {"remove socket", 108}, {"", 108},
		},
		// Increments after the last scrape are only in the final.
		"unscraped increments": {
			{"live 5", 105}, {"count 9; final 9; remove socket", 109}, {"", 109},
		},
		// A shim that lived between two scrapes: only its final is seen.
		"never scraped": {
			{"", 100}, {"final 4", 104}, {"", 104},
		},
		// SIGKILL: the socket is gone and there is no final; the last
		// scrape is kept, then kept for good after the grace period.
		"crash": {
			{"live 5", 105}, {"count 6; remove socket", 105}, {"wait grace", 105}, {"", 105},
		},
		// The final arrives after the socket went but within the grace.
		"late final within grace": {
			{"live 5", 105}, {"remove socket", 105}, {"count 7; final 7", 107}, {"wait grace", 107},
		},
		// The final arrives after the shim was retired as vanished: only
		// the difference is added.
		"late final after grace": {
			{"live 5", 105}, {"remove socket", 105}, {"wait grace", 105}, {"final 7", 107}, {"", 107},
		},
		// The socket lingers after the final was folded: not scraped again.
		"socket lingers": {
			{"live 5", 105}, {"final 5", 105}, {"", 105}, {"", 105}, {"remove socket", 105},
		},
		// The same final twice (the aggregator failed to remove it).
		"duplicate final": {
			{"live 5", 105}, {"final 7", 107}, {"final 7", 107}, {"remove socket", 107},
		},
		// A new process under the same name before the old final shows up.
		"name reused": {
			{"live 5", 105}, {"restart 2", 107}, {"count 3", 108}, {"old final 6", 109}, {"final 3", 109},
		},
	}
	for name, steps := range cases {
		t.Run(name, func(t *testing.T) {
			a := newTestAggregator(t, nil)
			startFakeShim(t, a.sockets, "other", "o", counterBody(100))
			var sh *fakeShim
			instance := "i1"
			prev := 0.0
			for i, s := range steps {
				for _, act := range strings.Split(s.do, "; ") {
					var n float64
					verb, _, _ := strings.Cut(act, " ")
					if f := strings.Fields(act); len(f) > 1 {
						_, _ = fmt.Sscan(f[len(f)-1], &n) // "remove socket" has no number: n stays 0
					}
					switch verb {
					case "":
					case "live":
						sh = startFakeShim(t, a.sockets, "s", instance, counterBody(n))
					case "count":
						sh.set(counterBody(n))
					case "final":
						writeFinalFile(t, a.state, "s", instance, counterBody(n))
					case "old":
						writeFinalFile(t, a.state, "s", "i1", counterBody(n))
					case "remove":
						sh.stop()
					case "restart":
						sh.stop()
						instance = "i2"
						sh = startFakeShim(t, a.sockets, "s", instance, counterBody(n))
					case "wait":
						a.clock = a.clock.Add(a.cfg.VanishGrace + time.Second)
					default:
						t.Fatalf("bad action %q", act)
					}
				}
				v := a.scrape(t)
				got := v[startedKey]
				if got != s.want {
					t.Fatalf("step %d (%q): started = %v, want %v", i, s.do, got, s.want)
				}
				if got < prev {
					t.Fatalf("step %d: went backwards %v -> %v", i, prev, got)
				}
				prev = got
				if a.regressed != 0 {
					t.Fatalf("step %d: %d regressions hidden by the clamp", i, a.regressed)
				}
				if left, _ := filepath.Glob(filepath.Join(a.state, "*.prom")); len(left) != 0 {
					t.Fatalf("step %d: finals not removed: %v", i, left)
				}
			}
		})
	}
}

// TestAggregatorRealShimsConcurrent runs real recorders behind real
// sockets that come, count, write their final and go, concurrently with a
// scraper that checks every total against what was recorded by then.
func TestAggregatorRealShimsConcurrent(t *testing.T) {
	a := newTestAggregator(t, nil)
	var recorded atomic.Int64
	var wg sync.WaitGroup
	const shims = 40
	for i := range shims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			// A few names are reused by later shims, as ctr users reuse
			// ids; a newcomer may even take the socket over from a
			// predecessor still running (containerd never does that).
			name := fmt.Sprintf("shim%d", i%(shims-5))
			time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond)
			r := metrics.New(metrics.Options{})
			stop, err := metrics.Serve(context.Background(), metrics.SocketPath(a.sockets, name), r)
			if err != nil {
				t.Error(err)
				return
			}
			for range 10 + rng.IntN(30) {
				recorded.Add(1) // before: the shim's count never exceeds it
				r.TaskCreated(metrics.Labels{Backend: "runc", Handler: fmt.Sprint("h", i%3)}, metrics.Task{ID: fmt.Sprint(i)})
				time.Sleep(time.Duration(rng.IntN(10)) * time.Millisecond)
			}
			if rng.IntN(2) == 0 {
				time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond)
			}
			// The integration order: final snapshot, then the socket goes.
			if err := r.WriteFinal(a.state, name); err != nil {
				t.Error(err)
			}
			if err := stop(); err != nil {
				t.Error(err)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	prev, scrapes := 0.0, 0
	check := func() float64 {
		got := sumOf(a.scrape(t), "containerd_shim_custom_tasks_created_total")
		scrapes++
		if upper := float64(recorded.Load()); got > upper {
			t.Fatalf("scrape %d: total %v exceeds the %v recorded: double counted", scrapes, got, upper)
		}
		if got < prev {
			t.Fatalf("scrape %d: total went backwards %v -> %v", scrapes, prev, got)
		}
		prev = got
		return got
	}
	for loop := true; loop; {
		select {
		case <-done:
			loop = false
		default:
			check()
			time.Sleep(2 * time.Millisecond)
		}
	}
	if got, want := check(), float64(recorded.Load()); got != want {
		t.Fatalf("after all shims exited: total %v, want exactly %v", got, want)
	}
	if a.regressed != 0 {
		t.Fatalf("%d regressions hidden by the clamp", a.regressed)
	}
	self := gatherFlat(t, a.reg)
	t.Logf("%d scrapes, %v tasks counted; finals folded %v, of shims scraped live %v",
		scrapes, prev, self[`containerd_shim_custom_aggregator_final_snapshots_folded_total{}`],
		self[`containerd_shim_custom_aggregator_shims_retired_total{how="exited"}`])
}

func TestAggregatorUntrustedInput(t *testing.T) {
	a := newTestAggregator(t, func(c *Config) {
		c.MaxScrapeBytes = 4096
		c.ScrapeTimeout = 200 * time.Millisecond
	})
	good := startFakeShim(t, a.sockets, "good", "g", counterBody(1))
	startFakeShim(t, a.sockets, "huge", "h", counterBody(1)+strings.Repeat("# padding\n", 1000))
	startFakeShim(t, a.sockets, "garbage", "x", "this is { not exposition\n")
	slow := startFakeShim(t, a.sockets, "slow", "s", counterBody(1))
	slow.setDelay(5 * time.Second)
	startFakeShim(t, a.sockets, "foreign", "f", `# TYPE go_goroutines gauge
go_goroutines 1e9
# TYPE containerd_shim_custom_aggregator_shims gauge
containerd_shim_custom_aggregator_shims 1e9
# TYPE containerd_shim_custom_weird untyped
containerd_shim_custom_weird 1
# TYPE containerd_shim_custom_tasks_started_total counter
containerd_shim_custom_tasks_started_total{backend="runc",runtime_handler=""} -5
containerd_shim_custom_tasks_started_total{backend="runc",runtime_handler="x"} NaN
containerd_shim_custom_tasks_started_total{backend="runc",runtime_handler="y"} 2
`)
	// A stale socket with nobody behind it.
	l, _ := net.Listen("unix", metrics.SocketPath(a.sockets, "dead"))
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	// A corrupt final and things that are not finals.
	writeFinalFile(t, a.state, "bad", "b", "garbage {{{\n")
	check(t, os.WriteFile(filepath.Join(a.state, ".tmp-not-final.prom"), []byte("x"), 0o600))
	check(t, os.Mkdir(filepath.Join(a.state, "dir.x.prom"), 0o700))

	start := time.Now()
	v := a.scrape(t)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("scrape took %v despite a 200ms per-shim timeout", took)
	}
	if got := v[startedKey]; got != 1 {
		t.Errorf("started = %v, want 1 (only the good shim)", got)
	}
	if got := v[`containerd_shim_custom_tasks_started_total{backend="runc",runtime_handler="y"}`]; got != 2 {
		t.Errorf("valid series of the foreign shim = %v, want 2", got)
	}
	for k := range v {
		if strings.HasPrefix(k, "go_goroutines") || strings.Contains(k, "weird") {
			t.Errorf("foreign family passed: %s", k)
		}
	}
	self := gatherFlat(t, a.reg)
	for reason, want := range map[string]float64{"too_large": 1, "parse": 1, "timeout": 1, "connect": 1} {
		if got := self[fmt.Sprintf(`containerd_shim_custom_aggregator_shim_scrape_errors_total{reason=%q}`, reason)]; got != want {
			t.Errorf("scrape errors %s = %v, want %v", reason, got, want)
		}
	}
	if got := self[`containerd_shim_custom_aggregator_final_snapshot_errors_total{}`]; got != 1 {
		t.Errorf("final errors = %v", got)
	}
	if got := self[`containerd_shim_custom_aggregator_dropped_series_total{}`]; got != 5 {
		t.Errorf("dropped = %v, want 5", got)
	}
	if got := self[`containerd_shim_custom_aggregator_shims{}`]; got != 6 {
		t.Errorf("shims = %v, want 6", got)
	}
	if _, err := os.Stat(filepath.Join(a.state, "bad.b.prom")); !os.IsNotExist(err) {
		t.Errorf("corrupt final kept: %v", err)
	}
	// A shim that fails keeps its counters (no dip) but not its gauges.
	good.set("broken {\n")
	v = a.scrape(t)
	if got := v[startedKey]; got != 1 {
		t.Errorf("after a failed scrape started = %v, want 1 kept", got)
	}
	if _, ok := v[`containerd_shim_custom_tasks{backend="runc",runtime_handler="",state="running"}`]; ok {
		t.Error("gauge of a failed scrape still exported")
	}
}

func TestAggregatorTypeConflict(t *testing.T) {
	a := newTestAggregator(t, nil)
	startFakeShim(t, a.sockets, "a", "a", counterBody(1))
	startFakeShim(t, a.sockets, "b", "b", `# TYPE containerd_shim_custom_tasks_started_total gauge
containerd_shim_custom_tasks_started_total{backend="runc",runtime_handler=""} 1000
`)
	if got := a.scrape(t)[startedKey]; got != 1 && got != 1000 {
		t.Fatalf("conflicting types summed: %v", got)
	}
}

func TestAddBucketsUnion(t *testing.T) {
	a := []bucket{{0.1, 1}, {1, 3}}
	b := []bucket{{0.5, 2}, {1, 4}, {10, 5}}
	got := addBuckets(a, b)
	want := []bucket{{0.1, 1}, {0.5, 1 + 2}, {1, 3 + 4}, {10, 3 + 5}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("union = %v, want %v", got, want)
	}
	same := addBuckets([]bucket{{1, 1}, {2, 2}}, []bucket{{1, 10}, {2, 20}})
	if fmt.Sprint(same) != fmt.Sprint([]bucket{{1, 11}, {2, 22}}) {
		t.Errorf("same layout = %v", same)
	}
	d := deltaSeries(&series{count: 10, sum: 5, buckets: []bucket{{1, 4}, {2, 10}}}, &series{count: 4, sum: 2, buckets: []bucket{{1, 3}, {2, 4}}})
	if d.count != 6 || d.sum != 3 || fmt.Sprint(d.buckets) != fmt.Sprint([]bucket{{1, 1}, {2, 6}}) {
		t.Errorf("delta = %+v", d)
	}
}

func TestAggregatorServesOverUnixAndTCP(t *testing.T) {
	for _, listen := range []string{"unix", "tcp"} {
		t.Run(listen, func(t *testing.T) {
			d := shortDir(t)
			addr := "unix://" + filepath.Join(d, "agg", "metrics.sock")
			if listen == "tcp" {
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				addr = l.Addr().String()
				l.Close()
			}
			cfg := Config{SocketDir: filepath.Join(d, "s"), StateDir: filepath.Join(d, "f"), Listen: []string{addr}}
			a, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			startFakeShim(t, cfg.SocketDir, "s1", "i", counterBody(2))
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() { errc <- a.Run(ctx) }()
			var body string
			deadline := time.Now().Add(5 * time.Second)
			for {
				var err error
				var resp *http.Response
				if listen == "unix" {
					resp, body, err = unixGet(strings.TrimPrefix(addr, "unix://"), "/metrics") //nolint:bodyclose // unixGet read and closed the body
				} else {
					resp, err = http.Get("http://" + addr + "/metrics")
					if err == nil {
						var b []byte
						b, err = io.ReadAll(resp.Body)
						resp.Body.Close()
						body = string(b)
					}
				}
				if err == nil && resp.StatusCode == 200 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("aggregator not serving: %v", err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			for _, want := range []string{
				startedKey + " 2",
				"process_start_time_seconds ",
				"containerd_shim_custom_aggregator_shim_scrapes_total 1",
				"containerd_shim_custom_aggregator_shims 1",
				"containerd_shim_custom_aggregator_build_info{",
			} {
				if !strings.Contains(body, want) {
					t.Errorf("output lacks %q", want)
				}
			}
			if listen == "unix" {
				if st, err := os.Stat(strings.TrimPrefix(addr, "unix://")); err != nil || st.Mode().Perm() != 0o660 {
					t.Errorf("listen socket mode: %v %v", st.Mode().Perm(), err)
				}
			}
			cancel()
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestAggregatorBackgroundFold(t *testing.T) {
	a := newTestAggregator(t, nil)
	writeFinalFile(t, a.state, "s", "i", counterBody(3))
	a.foldFinals(context.Background())
	if left, _ := filepath.Glob(filepath.Join(a.state, "*.prom")); len(left) != 0 {
		t.Fatalf("not folded: %v", left)
	}
	if got := a.scrape(t)[startedKey]; got != 3 {
		t.Fatalf("started = %v, want 3", got)
	}
}

func TestMainFlags(t *testing.T) {
	// Main writes usage and errors to stderr: keep the test output clean.
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	stderr := os.Stderr
	os.Stderr = null
	defer func() { os.Stderr = stderr; null.Close() }()
	if code := Main([]string{"--bogus"}, "dev", ""); code != 2 {
		t.Errorf("bad flag: exit %d", code)
	}
	if code := Main([]string{"--scrape-timeout=0s"}, "dev", ""); code != 2 {
		t.Errorf("zero timeout: exit %d", code)
	}
	if code := Main([]string{"extra"}, "dev", ""); code != 2 {
		t.Errorf("extra argument: exit %d", code)
	}
	if code := Main([]string{"--help"}, "dev", ""); code != 0 {
		t.Errorf("--help: exit %d", code)
	}
	if code := Main([]string{"--web.telemetry-path", "metrics"}, "dev", ""); code != 2 {
		t.Errorf("relative telemetry path: exit %d", code)
	}
	d := shortDir(t)
	dirs := []string{"--shim-socket-dir", d + "/s", "--state-dir", d + "/f"}
	for name, args := range map[string][]string{
		"bad listen address":      {"--listen", "256.0.0.1:1"},
		"bad web listen address":  {"--web.listen-address", "127.0.0.1:1", "--web.listen-address", "256.0.0.1:1"},
		"missing web config file": {"--web.listen-address", "127.0.0.1:0", "--web.config.file", d + "/none.yml"},
		"missing config file":     {"--web.listen-address", "127.0.0.1:0", "--config.file", d + "/none.yml"},
		"relative unix socket":    {"--web.listen-address", "unix://x.sock"},
	} {
		if code := Main(append(append([]string{}, dirs...), args...), "dev", ""); code != 1 {
			t.Errorf("%s: exit %d", name, code)
		}
	}
}

// TestAggregatorOutputIsValid checks what the registry would reject:
// the merged families must gather without error.
func TestAggregatorOutputIsValid(t *testing.T) {
	a := newTestAggregator(t, nil)
	for i := range 3 {
		r := metrics.New(metrics.Options{})
		r.TaskCreated(runc, metrics.Task{Namespace: "k8s.io", ID: fmt.Sprint("t", i)})
		r.TaskStarted(runc, metrics.Task{Namespace: "k8s.io", ID: fmt.Sprint("t", i)}, time.Duration(i)*time.Second)
		r.RPC("Create", "ok", time.Millisecond)
		stop, err := metrics.Serve(context.Background(), metrics.SocketPath(a.sockets, fmt.Sprint("s", i)), r)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { check(t, stop()) })
	}
	g := a.gatherer()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	v := flatten(mfs)
	if got := sumOf(v, "containerd_shim_custom_task_state"); got != 3 {
		t.Errorf("task_state series = %v, want 3", got)
	}
	if got := v[`containerd_shim_custom_build_info{goversion="`+runtime.Version()+`",revision="",version="dev"}`]; got != 3 {
		t.Errorf("build_info = %v, want 3 shims", got)
	}
}

func TestAggregatorUntrustedProtobuf(t *testing.T) {
	const ct = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
	a := newTestAggregator(t, func(c *Config) { c.MaxScrapeBytes = 1 << 16 })
	enc := func(mfs ...*dto.MetricFamily) string {
		var b strings.Builder
		for _, mf := range mfs {
			if _, err := protodelim.MarshalTo(&b, mf); err != nil {
				t.Fatal(err)
			}
		}
		return b.String()
	}
	counter := func(name, label string, v float64) *dto.MetricFamily {
		return &dto.MetricFamily{Name: proto.String(name), Type: dto.MetricType_COUNTER.Enum(), Metric: []*dto.Metric{{
			Label:   []*dto.LabelPair{{Name: proto.String(label), Value: proto.String("runc")}},
			Counter: &dto.Counter{Value: proto.Float64(v)},
		}}}
	}
	good := startFakeShim(t, a.sockets, "good", "g", enc(counter("containerd_shim_custom_tasks_started_total", "backend", 3)))
	good.setContentType(ct)
	// A length prefix of 1 TiB: must fail without allocating it.
	huge := startFakeShim(t, a.sockets, "huge", "h", "\x80\x80\x80\x80\x80\x20rest")
	huge.setContentType(ct)
	junk := startFakeShim(t, a.sockets, "junk", "j", "\x05\xff\xff\xff\xff\xff")
	junk.setContentType(ct)
	bad := startFakeShim(t, a.sockets, "bad", "b", enc(
		counter("containerd_shim_custom_tasks_started_total", "bad-label", 1), // invalid label name
		counter("containerd_shim_custom_tasks_started_total", "backend", 1),   // duplicate family
		counter("not_ours_total", "backend", 1),
		counter("containerd_shim_custom_oom_events_total", "backend", 4),
	))
	bad.setContentType(ct)

	v := a.scrape(t)
	if got := v[`containerd_shim_custom_tasks_started_total{backend="runc"}`]; got != 3 {
		t.Errorf("started = %v, want 3 from the good shim only", got)
	}
	if got := v[`containerd_shim_custom_oom_events_total{backend="runc"}`]; got != 4 {
		t.Errorf("valid family of the bad shim = %v, want 4", got)
	}
	self := gatherFlat(t, a.reg)
	errs := self[`containerd_shim_custom_aggregator_shim_scrape_errors_total{reason="parse"}`] +
		self[`containerd_shim_custom_aggregator_shim_scrape_errors_total{reason="too_large"}`]
	if errs != 2 {
		t.Errorf("scrape errors = %v, want 2 (huge, junk)", errs)
	}
	if got := self[`containerd_shim_custom_aggregator_dropped_series_total{}`]; got != 3 {
		t.Errorf("dropped = %v, want 3", got)
	}
}

func TestAggregatorForgetsExitedShims(t *testing.T) {
	a := newTestAggregator(t, nil)
	sh := startFakeShim(t, a.sockets, "s", "i", counterBody(5))
	a.scrape(t)
	writeFinalFile(t, a.state, "s", "i", counterBody(6))
	a.scrape(t)
	a.clock = a.clock.Add(a.cfg.TombstoneTTL + time.Second)
	a.scrape(t)
	if len(a.tombs) != 1 {
		t.Fatalf("tomb dropped while the socket lingers: %d", len(a.tombs))
	}
	sh.stop()
	a.scrape(t)
	if len(a.tombs) != 0 || len(a.live) != 0 {
		t.Fatalf("state kept for a gone shim: %d tombs, %d live", len(a.tombs), len(a.live))
	}
	if got := a.scrape(t)[startedKey]; got != 6 {
		t.Fatalf("started = %v, want 6", got)
	}
}

// A socket nobody listens on (its shim was SIGKILLed with containerd away)
// is removed once it is old enough; a young one and a live shim's stay.
func TestAggregatorRemovesDeadSockets(t *testing.T) {
	a := newTestAggregator(t, nil)
	live := startFakeShim(t, a.sockets, "live", "i", counterBody(1))
	dead := func(name string, age time.Duration) string {
		path := metrics.SocketPath(a.sockets, name)
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
		mt := a.clock.Add(-age)
		if err := os.Chtimes(path, mt, mt); err != nil {
			t.Fatal(err)
		}
		return path
	}
	old, young := dead("old", 2*staleSocketAge), dead("young", staleSocketAge/2)
	mt := a.clock.Add(-time.Hour)
	if err := os.Chtimes(live.path, mt, mt); err != nil {
		t.Fatal(err)
	}
	if got := a.scrape(t)[startedKey]; got != 1 {
		t.Fatalf("started = %v, want 1", got)
	}
	if _, err := os.Lstat(old); !os.IsNotExist(err) {
		t.Errorf("dead socket older than %s kept: %v", staleSocketAge, err)
	}
	for _, p := range []string{young, live.path} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s removed: %v", p, err)
		}
	}
}
