package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/pkg/oci"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

const metricPrefix = "containerd_shim_custom_"

// scrape GETs /metrics over a unix socket.
func scrape(t *testing.T, sock string) (string, map[string]*dto.MetricFamily) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := c.Get("http://unix/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", sock, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse %s: %v\n%s", sock, err, body)
	}
	return string(body), fams
}

// value sums the samples of a counter (or a histogram's count, or a gauge)
// whose labels include all of want.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[metricPrefix+name]
	if f == nil {
		return 0
	}
	var sum float64
outer:
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue outer
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

func promtoolLint(t *testing.T, what, text string) {
	t.Helper()
	bin := filepath.Join(rootDir, ".tools", "bin", "promtool")
	if _, err := os.Stat(bin); err != nil {
		t.Errorf("promtool missing (scripts/deps.sh builds it): %v", err)
		return
	}
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics on %s: %v\n%s", what, err, out)
	}
}

// TestMetrics runs known lifecycles (completed, error, OOM-killed,
// signaled, execs) under a runtime handler of their own, scrapes a shim and
// the node aggregator, checks exact counter values, then lets every shim
// exit and checks that nothing went backwards or vanished.
func TestMetrics(t *testing.T) {
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		dir, err := os.MkdirTemp("/tmp", "shim-metrics-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		e := ownDaemon(t, like, func(c *harness.Config) {
			c.Env = append(c.Env, "CONTAINERD_SHIM_CUSTOM_METRICS_DIR="+dir)
		})
		aggSock := filepath.Join(dir, "aggregator.sock")
		agg := exec.Command(aggregatorBinary(t), "--web.listen-address", "unix://"+aggSock,
			"--shim-socket-dir", filepath.Join(dir, "metrics"), "--state-dir", filepath.Join(dir, "metrics-final"))
		agg.Stderr = os.Stderr
		if err := agg.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = agg.Process.Signal(syscall.SIGTERM); _ = agg.Wait() }() // its exit status is not under test
		eventually(t, 30*time.Second, "aggregator up", func() error {
			_, err := os.Stat(aggSock)
			return err
		})

		handler := "handler-" + runID
		opts := &runtimeoptions.Options{ConfigBody: []byte(fmt.Sprintf("backend = %q\nruntime_handler = %q\n", e.backend, handler))}
		if e.backend == "runsc" {
			opts.ConfigBody = append(opts.ConfigBody, []byte(fmt.Sprintf("[runsc]\nbinary_name = %q\n", runscBin))...)
		}
		run := func(name string, args []string, extra ...oci.SpecOpts) uint32 {
			c := newContainer(t, e, containerID(t, name), opts, append([]oci.SpecOpts{oci.WithProcessArgs(args...)}, extra...)...)
			st, _ := runToExit(t, c)
			return st
		}
		run("ok1", []string{"true"})
		run("ok2", []string{"true"})
		if st := run("err", []string{"sh", "-c", "exit 3"}); st != 3 {
			t.Fatalf("exit %d", st)
		}
		limit := uint64(16 << 20)
		if e.backend == "runsc" {
			limit = 128 << 20
		}
		if st := run("oom", []string{"sh", "-c", "x=a; while :; do x=$x$x; done"}, oci.WithMemoryLimit(limit)); st != 137 {
			t.Fatalf("oom exit %d", st)
		}

		// A running task with two execs, scraped at its own shim.
		ctx := testContext(t)
		id := containerID(t, "execs")
		c := newContainer(t, e, id, opts, oci.WithProcessArgs("sleep", "1000"), oci.WithAnnotations(map[string]string{
			"io.kubernetes.cri.sandbox-name":      "web-0",
			"io.kubernetes.cri.sandbox-namespace": "shop",
			"io.kubernetes.cri.container-name":    "app",
		}))
		task, statusC := startTask(t, c, nil)
		for i, code := range []int{0, 5} {
			if got := execToExit(t, c, task, fmt.Sprintf("x%d", i), nil, "sh", "-c", fmt.Sprintf("exit %d", code)); got != uint32(code) {
				t.Fatalf("exec exit %d, want %d", got, code)
			}
		}
		// The other tasks' shims may still be on their way out.
		var shimSock string
		eventually(t, 30*time.Second, "one live shim socket", func() error {
			entries, _ := os.ReadDir(filepath.Join(dir, "metrics"))
			if len(entries) != 1 {
				return fmt.Errorf("%d sockets", len(entries))
			}
			shimSock = filepath.Join(dir, "metrics", entries[0].Name())
			return nil
		})
		text, fams := scrape(t, shimSock)
		promtoolLint(t, "a shim", text)
		l := map[string]string{"runtime_handler": handler, "backend": e.backend}
		if v := value(fams, "execs_started_total", l); v != 2 {
			t.Errorf("shim execs_started_total %v, want 2", v)
		}
		if v := value(fams, "task_state", map[string]string{"pod": "web-0", "namespace": "shop", "container": "app", "state": "running"}); v != 1 {
			t.Errorf("task_state for the running task %v, want 1:\n%s", v, text)
		}
		task.Kill(ctx, syscall.SIGKILL)
		waitExit(t, statusC, 30*time.Second)
		if _, err := task.Delete(ctx); err != nil {
			t.Fatal(err)
		}

		// Every shim has exited; the aggregator must hold their figures.
		want := map[string]float64{
			"tasks_created_total": 5, "tasks_started_total": 5, "tasks_deleted_total": 5,
			"execs_started_total": 2, "oom_events_total": 1,
		}
		reasons := map[string]float64{"completed": 2, "error": 1, "oom_killed": 1, "signaled": 1}
		check := func(fams map[string]*dto.MetricFamily) error {
			for name, w := range want {
				if v := value(fams, name, l); v != w {
					return fmt.Errorf("%s = %v, want %v", name, v, w)
				}
			}
			for r, w := range reasons {
				if v := value(fams, "tasks_exited_total", map[string]string{"runtime_handler": handler, "reason": r}); v != w {
					return fmt.Errorf("tasks_exited_total{reason=%q} = %v, want %v", r, v, w)
				}
			}
			for r, w := range map[string]float64{"completed": 1, "error": 1} {
				if v := value(fams, "execs_exited_total", map[string]string{"runtime_handler": handler, "reason": r}); v != w {
					return fmt.Errorf("execs_exited_total{reason=%q} = %v, want %v", r, v, w)
				}
			}
			if v := value(fams, "task_start_latency_seconds", l); v != 5 {
				return fmt.Errorf("task_start_latency_seconds count = %v, want 5", v)
			}
			if v := value(fams, "task_rpc_requests_total", map[string]string{"method": "Create", "result": "ok"}); v < 5 {
				return fmt.Errorf("Create RPCs = %v, want >= 5", v)
			}
			if v := value(fams, "backend_command_duration_seconds", map[string]string{"runtime_handler": handler, "command": "create"}); v != 5 {
				return fmt.Errorf("backend create commands = %v, want 5", v)
			}
			return nil
		}
		var last string
		eventually(t, 20*time.Second, "aggregator figures", func() error {
			entries, _ := os.ReadDir(filepath.Join(dir, "metrics"))
			if len(entries) != 0 {
				return fmt.Errorf("%d shim sockets still there", len(entries))
			}
			text, fams := scrape(t, aggSock)
			last = text
			return check(fams)
		})
		promtoolLint(t, "the aggregator", last)
		// Later scrapes do not go backwards.
		time.Sleep(time.Second)
		_, fams = scrape(t, aggSock)
		if err := check(fams); err != nil {
			t.Fatalf("after the shims exited: %v", err)
		}
		report(t, fmt.Sprintf("metrics %s: 5 tasks, 2 execs counted exactly at the shim and, after every shim exited, at the aggregator", e.name()))
	})
}
