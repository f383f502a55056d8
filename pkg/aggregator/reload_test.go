package aggregator

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// writeAtomic replaces path's content the way editors and config
// management do: a new file renamed over the old one.
func writeAtomic(t testing.TB, path, body string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// newConfigAggregator is a test aggregator with a configuration file.
func newConfigAggregator(t *testing.T, body string) (*testAggregator, string) {
	t.Helper()
	path := filepath.Join(shortDir(t), "config.yml")
	writeAtomic(t, path, body)
	return newTestAggregator(t, func(c *Config) { c.ConfigFile = path }), path
}

func TestReloadRefusesBadFileKeepsOld(t *testing.T) {
	a, path := newConfigAggregator(t, "const_labels: {node: a}\n")
	startFakeShim(t, a.sockets, "s", "i", counterBody(3))
	self := func() (ok, ts float64) {
		v := gatherFlat(t, a.reg)
		return v[`containerd_shim_custom_aggregator_config_last_reload_successful{}`],
			v[`containerd_shim_custom_aggregator_config_last_reload_success_timestamp_seconds{}`]
	}
	ok, ts0 := self()
	if ok != 1 || ts0 < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Fatalf("after start: successful %v, timestamp %v", ok, ts0)
	}
	for name, body := range map[string]string{
		"malformed": "const_labels: {node: b\n",
		"unknown":   "const_labels: {node: b}\nscrape_timeut: 1s\n",
		"bad value": "scrape_timeout: -1s\n",
	} {
		writeAtomic(t, path, body)
		err := a.Reload(context.Background())
		if err == nil || !strings.HasPrefix(err.Error(), path+":") {
			t.Errorf("%s: reload error %v, want one naming %s", name, err, path)
		}
		if ok, ts := self(); ok != 0 || ts != ts0 {
			t.Errorf("%s: successful %v, timestamp %v -> %v", name, ok, ts0, ts)
		}
		if got := a.set.Load().labels; len(got) != 1 || got[0].value != "a" {
			t.Errorf("%s: settings in force changed: %v", name, got)
		}
	}
	os.Remove(path)
	if err := a.Reload(context.Background()); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: %v", err)
	}
	// The good reload's timestamp must be later than ts0: wait for the
	// clock to pass it (a coarse clock may still read ts0).
	for float64(time.Now().UnixNano())/1e9 <= ts0 {
		time.Sleep(time.Millisecond)
	}
	writeAtomic(t, path, "const_labels: {node: b}\n")
	if err := a.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ok, ts := self(); ok != 1 || ts <= ts0 {
		t.Errorf("after a good reload: successful %v, timestamp %v (was %v)", ok, ts, ts0)
	}
	w := httptest.NewRecorder()
	a.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(w.Body.String(), `containerd_shim_custom_tasks_started_total{backend="runc",node="b",runtime_handler=""} 3`) {
		t.Errorf("new label not applied:\n%s", w.Body.String())
	}

	// Excluded families, the shims' and the aggregator's own, go; the
	// rest stays.
	writeAtomic(t, path, "exclude_families: [tasks, aggregator_shims]\n")
	if err := a.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	w = httptest.NewRecorder()
	a.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	for _, gone := range []string{"containerd_shim_custom_tasks{", "containerd_shim_custom_aggregator_shims "} {
		if strings.Contains(w.Body.String(), gone) {
			t.Errorf("%s still exported", gone)
		}
	}
	for _, kept := range []string{startedKey + " 3", "containerd_shim_custom_aggregator_shim_scrapes_total "} {
		if !strings.Contains(w.Body.String(), kept) {
			t.Errorf("%s missing", kept)
		}
	}
}

// TestReloadUnderConcurrentScrapes changes the configuration (timeouts,
// labels, excluded families, refused files) as fast as it can while
// scrapers scrape and shims count: no scrape may fail, and no counter may
// go backwards, whatever labels it carries at the time.
func TestReloadUnderConcurrentScrapes(t *testing.T) {
	a, path := newConfigAggregator(t, "")
	var count atomic.Int64
	var shims []*fakeShim
	for i := range 4 {
		shims = append(shims, startFakeShim(t, a.sockets, fmt.Sprint("s", i), "i", counterBody(0)))
	}
	srv := httptest.NewServer(a.mux())
	defer srv.Close()

	configs := []string{
		"",
		"scrape_timeout: 1s\nconst_labels: {node: n1}\n",
		"exclude_families: [task_state, tasks]\n",
		"const_labels: {node: n2, zone: z}\nscrape_timeout: 3s\n",
		"scrape_timeout: [\n", // refused
		"exclude_families: [tasks_started_total]\n",
		"bogus: 1\n", // refused
	}
	// The run ends once enough happened, not after a time: a busy machine
	// only makes it longer. The timeout is for a run that stalls.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	var reloads, refused atomic.Int64
	var scrapes, seen atomic.Int64
	enough := func() bool {
		return scrapes.Load() >= 20 && reloads.Load() >= 20 && refused.Load() > 0 && seen.Load() > 0
	}
	wg.Add(1)
	go func() { // the operator
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			if err := os.WriteFile(path+".new", []byte(configs[i%len(configs)]), 0o600); err != nil {
				t.Error(err)
				return
			}
			if err := os.Rename(path+".new", path); err != nil {
				t.Error(err)
				return
			}
			if err := a.Reload(ctx); err != nil {
				refused.Add(1)
			}
			reloads.Add(1)
		}
	}()
	wg.Add(1)
	go func() { // the shims
		defer wg.Done()
		for ctx.Err() == nil {
			n := count.Add(1)
			for _, sh := range shims {
				sh.set(counterBody(float64(n)))
			}
			time.Sleep(time.Millisecond)
		}
	}()
	for range 4 { // the Prometheus servers
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := map[string]float64{}
			for ctx.Err() == nil {
				resp, err := http.Get(srv.URL + "/metrics")
				if err != nil {
					t.Errorf("scrape: %v", err)
					return
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					t.Errorf("scrape: %v, status %d", err, resp.StatusCode)
					return
				}
				p := expfmt.NewTextParser(model.LegacyValidation)
				fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
				if err != nil {
					t.Errorf("parse: %v", err)
					return
				}
				scrapes.Add(1)
				// Every counter, summed over its series whatever their
				// constant labels: the totals never go backwards.
				for name, f := range fams {
					if f.GetType().String() != "COUNTER" {
						continue
					}
					var sum float64
					for _, m := range f.GetMetric() {
						sum += m.GetCounter().GetValue()
					}
					if sum < last[name] {
						t.Errorf("%s went backwards: %v -> %v", name, last[name], sum)
					}
					last[name] = sum
					if name == "containerd_shim_custom_tasks_started_total" && sum > 0 {
						seen.Add(1)
					}
				}
				if enough() {
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	if !enough() {
		t.Fatalf("too little happened in 2 minutes: %d scrapes, %d reloads (%d refused), started seen %d times", scrapes.Load(), reloads.Load(), refused.Load(), seen.Load())
	}
	if a.regressed != 0 {
		t.Errorf("%d regressions hidden by the clamp", a.regressed)
	}
	t.Logf("%d scrapes, %d reloads (%d refused), shims counted to %d", scrapes.Load(), reloads.Load(), refused.Load(), count.Load())
}

// TestWatchReloads changes the file as an editor does and as Kubernetes
// updates a mounted ConfigMap (a symlink swap in the directory), and sends
// SIGHUP (on the channel run reads signals from).
func TestWatchReloads(t *testing.T) {
	dir := shortDir(t)
	// The ConfigMap layout: config.yml -> ..data/config.yml, ..data ->
	// ..v1, swapped to ..v2 by renaming a new symlink over ..data.
	for _, v := range []string{"..v1", "..v2"} {
		if err := os.Mkdir(filepath.Join(dir, v), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	check(t, os.WriteFile(filepath.Join(dir, "..v1", "config.yml"), []byte("const_labels: {node: v1}\n"), 0o644))
	check(t, os.WriteFile(filepath.Join(dir, "..v2", "config.yml"), []byte("const_labels: {node: v2}\n"), 0o644))
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "config.yml")
	if err := os.Symlink("..data/config.yml", path); err != nil {
		t.Fatal(err)
	}
	a := newTestAggregator(t, func(c *Config) { c.ConfigFile = path })
	label := func() string {
		if ls := a.set.Load().labels; len(ls) == 1 {
			return ls[0].value
		}
		return fmt.Sprint(a.set.Load().labels)
	}
	if got := label(); got != "v1" {
		t.Fatalf("label %q at start", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	hup := make(chan os.Signal) // unbuffered: a send returns once the loop runs
	done := make(chan struct{})
	go func() { defer close(done); a.watch(ctx, hup) }()
	defer func() { cancel(); <-done }()
	waitFor := func(what, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for label() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: label %q, want %q", what, label(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// watch receives from hup only in its loop, after it added the
	// watches: this send is the marker that the watch is set up (the
	// reload it causes reads the same file).
	hup <- os.Interrupt

	// The ConfigMap update.
	if err := os.Symlink("..v2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	waitFor("symlink swap", "v2")

	// An editor: the link replaced by a file.
	writeAtomic(t, path, "const_labels: {node: edited}\n")
	waitFor("rename over the file", "edited")

	// A file written in place, then a bad one: refused, the old one stays.
	if err := os.WriteFile(path, []byte("const_labels: {node: in-place}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor("write in place", "in-place")
	if err := os.WriteFile(path, []byte("const_labels: {node: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for gatherFlat(t, a.reg)[`containerd_shim_custom_aggregator_config_last_reload_successful{}`] != 0 {
		if time.Now().After(deadline) {
			t.Fatal("bad file not noticed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := label(); got != "in-place" {
		t.Fatalf("bad file replaced the settings: %q", got)
	}

	// SIGHUP reloads even when no file event came (here: the variable a
	// label refers to changed).
	t.Setenv("AGG_TEST_NODE", "from-env")
	if err := os.WriteFile(path+".tmp", []byte("const_labels:\n  node: ${AGG_TEST_NODE}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	check(t, os.Rename(path+".tmp", path))
	waitFor("env label", "from-env")
	t.Setenv("AGG_TEST_NODE", "after-hup")
	hup <- os.Interrupt // any signal value: run delivers SIGHUP there
	waitFor("SIGHUP", "after-hup")
}
