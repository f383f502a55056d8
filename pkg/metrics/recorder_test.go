package metrics

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

var (
	runc    = Labels{Backend: "runc", Handler: "custom-runc"}
	runsc   = Labels{Backend: "runsc", Handler: "custom-runsc"}
	taskA   = Task{Namespace: "k8s.io", ID: "aaa", Pod: "web-0", PodNamespace: "prod", Container: "app"}
	taskB   = Task{Namespace: "k8s.io", ID: "bbb", Pod: "web-0", PodNamespace: "prod", Container: "sidecar"}
	taskG   = Task{Namespace: "default", ID: "g1"}
	errBoom = errors.New("boom")
)

func TestRecorderExactValues(t *testing.T) {
	r := New(Options{Version: "v1.2.3", Revision: "abc"})
	r.TaskCreated(runc, taskA)
	r.TaskCreated(runc, taskB)
	r.TaskCreated(runsc, taskG)
	r.TaskStarted(runc, taskA, 30*time.Millisecond)
	r.TaskStarted(runc, taskB, 2*time.Second)
	r.TaskStarted(runsc, taskG, 400*time.Millisecond)
	r.TaskState(runc, taskB, StatePaused)
	r.OOM(runsc)
	r.TaskExited(runsc, taskG, ExitReasonOf(137, true), 90*time.Second)
	r.TaskDeleted(runsc, taskG)
	r.ExecStarted(runc)
	r.ExecExited(runc, ExitReasonOf(1, false))
	r.RPC("/containerd.task.v3.Task/Create", "ok", 20*time.Millisecond)
	r.RPC("Create", Result(fmt.Errorf("x: %w", errdefs.ErrAlreadyExists)), time.Millisecond)
	r.RPC("Wait", "ok", time.Hour)
	r.BackendCommand(runc, "create", nil, 40*time.Millisecond)
	r.BackendCommand(runc, "create", errBoom, 3*time.Second)

	err := testutil.GatherAndCompare(r.Gatherer(), strings.NewReader(`
# HELP containerd_shim_custom_tasks_created_total Tasks created (init process created, not yet started).
# TYPE containerd_shim_custom_tasks_created_total counter
containerd_shim_custom_tasks_created_total{backend="runc",runtime_handler="custom-runc"} 2
containerd_shim_custom_tasks_created_total{backend="runsc",runtime_handler="custom-runsc"} 1
# HELP containerd_shim_custom_tasks_exited_total Task init processes that exited, by reason: completed (status 0), error (other status), signaled (128+n), oom_killed.
# TYPE containerd_shim_custom_tasks_exited_total counter
containerd_shim_custom_tasks_exited_total{backend="runc",reason="completed",runtime_handler="custom-runc"} 0
containerd_shim_custom_tasks_exited_total{backend="runc",reason="error",runtime_handler="custom-runc"} 0
containerd_shim_custom_tasks_exited_total{backend="runc",reason="oom_killed",runtime_handler="custom-runc"} 0
containerd_shim_custom_tasks_exited_total{backend="runc",reason="signaled",runtime_handler="custom-runc"} 0
containerd_shim_custom_tasks_exited_total{backend="runsc",reason="completed",runtime_handler="custom-runsc"} 0
containerd_shim_custom_tasks_exited_total{backend="runsc",reason="error",runtime_handler="custom-runsc"} 0
containerd_shim_custom_tasks_exited_total{backend="runsc",reason="oom_killed",runtime_handler="custom-runsc"} 1
containerd_shim_custom_tasks_exited_total{backend="runsc",reason="signaled",runtime_handler="custom-runsc"} 0
# HELP containerd_shim_custom_oom_events_total OOM kills seen in task cgroups.
# TYPE containerd_shim_custom_oom_events_total counter
containerd_shim_custom_oom_events_total{backend="runc",runtime_handler="custom-runc"} 0
containerd_shim_custom_oom_events_total{backend="runsc",runtime_handler="custom-runsc"} 1
# HELP containerd_shim_custom_task_rpc_requests_total Task API requests served, by method and result (ok or the error kind).
# TYPE containerd_shim_custom_task_rpc_requests_total counter
containerd_shim_custom_task_rpc_requests_total{method="Create",result="already_exists"} 1
containerd_shim_custom_task_rpc_requests_total{method="Create",result="ok"} 1
containerd_shim_custom_task_rpc_requests_total{method="Wait",result="ok"} 1
# HELP containerd_shim_custom_backend_command_failures_total Backend commands that failed.
# TYPE containerd_shim_custom_backend_command_failures_total counter
containerd_shim_custom_backend_command_failures_total{backend="runc",command="create",runtime_handler="custom-runc"} 1
# HELP containerd_shim_custom_tasks Tasks in the shim, by state.
# TYPE containerd_shim_custom_tasks gauge
containerd_shim_custom_tasks{backend="runc",runtime_handler="custom-runc",state="created"} 0
containerd_shim_custom_tasks{backend="runc",runtime_handler="custom-runc",state="paused"} 1
containerd_shim_custom_tasks{backend="runc",runtime_handler="custom-runc",state="running"} 1
containerd_shim_custom_tasks{backend="runc",runtime_handler="custom-runc",state="stopped"} 0
containerd_shim_custom_tasks{backend="runsc",runtime_handler="custom-runsc",state="created"} 0
containerd_shim_custom_tasks{backend="runsc",runtime_handler="custom-runsc",state="paused"} 0
containerd_shim_custom_tasks{backend="runsc",runtime_handler="custom-runsc",state="running"} 0
containerd_shim_custom_tasks{backend="runsc",runtime_handler="custom-runsc",state="stopped"} 0
# HELP containerd_shim_custom_task_state One series per task, value 1, labelled with the task's identity and current state; gone once the task is deleted.
# TYPE containerd_shim_custom_task_state gauge
containerd_shim_custom_task_state{backend="runc",container="app",containerd_namespace="k8s.io",namespace="prod",pod="web-0",runtime_handler="custom-runc",state="running",task_id="aaa"} 1
containerd_shim_custom_task_state{backend="runc",container="sidecar",containerd_namespace="k8s.io",namespace="prod",pod="web-0",runtime_handler="custom-runc",state="paused",task_id="bbb"} 1
# HELP containerd_shim_custom_build_info Shim build; the value is the number of shim processes of that build (1 per shim, summed by the aggregator).
# TYPE containerd_shim_custom_build_info gauge
containerd_shim_custom_build_info{goversion="`+runtime.Version()+`",revision="abc",version="v1.2.3"} 1
`), "containerd_shim_custom_tasks_created_total", "containerd_shim_custom_tasks_exited_total",
		"containerd_shim_custom_oom_events_total", "containerd_shim_custom_task_rpc_requests_total",
		"containerd_shim_custom_backend_command_failures_total", "containerd_shim_custom_tasks",
		"containerd_shim_custom_task_state", "containerd_shim_custom_build_info")
	if err != nil {
		t.Fatal(err)
	}

	v := gatherFlat(t, r.Gatherer())
	for key, want := range map[string]float64{
		`containerd_shim_custom_task_start_latency_seconds_count{backend="runc",runtime_handler="custom-runc"}`:                        2,
		`containerd_shim_custom_task_start_latency_seconds_bucket{backend="runc",le="0.05",runtime_handler="custom-runc"}`:             1,
		`containerd_shim_custom_task_start_latency_seconds_bucket{backend="runc",le="2.5",runtime_handler="custom-runc"}`:              2,
		`containerd_shim_custom_task_run_duration_seconds_bucket{backend="runsc",le="60",runtime_handler="custom-runsc"}`:              0,
		`containerd_shim_custom_task_run_duration_seconds_bucket{backend="runsc",le="300",runtime_handler="custom-runsc"}`:             1,
		`containerd_shim_custom_task_rpc_duration_seconds_count{method="Create"}`:                                                      2,
		`containerd_shim_custom_backend_command_duration_seconds_count{backend="runc",command="create",runtime_handler="custom-runc"}`: 2,
		`containerd_shim_custom_execs_exited_total{backend="runc",reason="error",runtime_handler="custom-runc"}`:                       1,
		`containerd_shim_custom_tasks_deleted_total{backend="runsc",runtime_handler="custom-runsc"}`:                                   1,
	} {
		if got, ok := v[key]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", key, got, ok, want)
		}
	}
	// Wait lasts as long as the process: counted, not timed.
	if _, ok := v[`containerd_shim_custom_task_rpc_duration_seconds_count{method="Wait"}`]; ok {
		t.Error("Wait has a duration histogram")
	}
	if _, ok := v[`process_start_time_seconds{}`]; !ok {
		t.Error("process_start_time_seconds missing")
	}
}

func TestExitReasonOf(t *testing.T) {
	for _, c := range []struct {
		status uint32
		oom    bool
		want   ExitReason
	}{
		{0, false, ExitCompleted},
		{0, true, ExitCompleted},
		{1, false, ExitError},
		{127, false, ExitError},
		{128, false, ExitError},
		{130, false, ExitSignaled},
		{137, false, ExitSignaled},
		{137, true, ExitOOMKilled},
		{192, false, ExitSignaled},
		{193, false, ExitError},
		{255, false, ExitError},
	} {
		if got := ExitReasonOf(c.status, c.oom); got != c.want {
			t.Errorf("ExitReasonOf(%d, %v) = %v, want %v", c.status, c.oom, got, c.want)
		}
	}
	if ExitReason(200).String() != "error" || State(9).String() != "unknown" {
		t.Error("out-of-range enums")
	}
}

func TestResult(t *testing.T) {
	for err, want := range map[error]string{
		nil:                                      "ok",
		fmt.Errorf("a: %w", errdefs.ErrNotFound): "not_found",
		errdefs.ErrFailedPrecondition:            "failed_precondition",
		errdefs.ErrNotImplemented:                "not_implemented",
		context.DeadlineExceeded:                 "deadline_exceeded",
		context.Canceled:                         "canceled",
		errors.New("plain"):                      "unknown",
	} {
		if got := Result(err); got != want {
			t.Errorf("Result(%v) = %q, want %q", err, got, want)
		}
	}
}

func TestTaskGaugeLifecycle(t *testing.T) {
	r := New(Options{})
	stateOf := func() map[string]float64 {
		out := map[string]float64{}
		for k, v := range gatherFlat(t, r.Gatherer()) {
			if strings.HasPrefix(k, "containerd_shim_custom_task_state{") {
				out[k] = v
			}
		}
		return out
	}
	r.TaskState(runc, taskA, StateRunning) // unknown task: ignored
	if n := len(stateOf()); n != 0 {
		t.Fatalf("TaskState created a task: %d series", n)
	}
	r.TaskCreated(runc, taskA)
	r.TaskStarted(runc, taskA, time.Millisecond)
	r.TaskExited(runc, taskA, ExitCompleted, -1) // never observed
	got := stateOf()
	if len(got) != 1 {
		t.Fatalf("series: %v", got)
	}
	for k := range got {
		if !strings.Contains(k, `state="stopped"`) {
			t.Errorf("state after exit: %s", k)
		}
	}
	if n := gatherFlat(t, r.Gatherer())[`containerd_shim_custom_task_run_duration_seconds_count{backend="runc",runtime_handler="custom-runc"}`]; n != 0 {
		t.Errorf("negative ran observed: count %v", n)
	}
	r.TaskDeleted(runc, taskA)
	r.TaskState(runc, taskA, StatePaused) // late: must not resurrect
	if got := stateOf(); len(got) != 0 {
		t.Fatalf("task_state after delete: %v", got)
	}
}

func TestCardinalityBounded(t *testing.T) {
	r := New(Options{})
	for i := range 200 {
		r.TaskCreated(Labels{Backend: "runc", Handler: fmt.Sprintf("h%d", i)}, Task{ID: fmt.Sprint(i)})
		r.BackendCommand(runc, fmt.Sprintf("cmd%d", i), nil, time.Millisecond)
	}
	r.TaskCreated(Labels{Backend: "\xff\xfe", Handler: "x"}, Task{ID: "bad\xff"})
	r.RPC("\xff", "ok", time.Millisecond)

	if n := testutil.CollectAndCount(r.tasksCreated); n != maxLabelSets+1 {
		t.Errorf("tasks_created series = %d, want %d (cap + overflow)", n, maxLabelSets+1)
	}
	v := gatherFlat(t, r.Gatherer())
	if got := v[`containerd_shim_custom_tasks_created_total{backend="other",runtime_handler="other"}`]; got != 200-maxLabelSets+1 {
		t.Errorf("overflow count = %v, want %d", got, 200-maxLabelSets+1)
	}
	if got := v[`containerd_shim_custom_task_rpc_requests_total{method="other",result="other"}`]; got != 1 {
		t.Errorf("invalid UTF-8 method not folded into other: %v", got)
	}
	if n := testutil.CollectAndCount(r.commandDuration); n > maxCommands+1 {
		t.Errorf("command series = %d", n)
	}
	// Identity labels are cleaned, not dropped.
	if got := v[`containerd_shim_custom_tasks{backend="other",runtime_handler="other",state="created"}`]; got != 200-maxLabelSets+1 {
		t.Errorf("tasks gauge overflow = %v", got)
	}
}

func TestRecordingDoesNotAllocate(t *testing.T) {
	r := New(Options{})
	r.TaskCreated(runc, taskA)
	r.RPC("State", "ok", 0)
	r.BackendCommand(runc, "state", nil, 0)
	for name, f := range map[string]func(){
		"TaskStarted":    func() { r.TaskStarted(runc, taskA, time.Millisecond) },
		"TaskState":      func() { r.TaskState(runc, taskA, StatePaused) },
		"TaskExited":     func() { r.TaskExited(runc, taskA, ExitSignaled, time.Second) },
		"OOM":            func() { r.OOM(runc) },
		"ExecStarted":    func() { r.ExecStarted(runc) },
		"ExecExited":     func() { r.ExecExited(runc, ExitCompleted) },
		"RPC":            func() { r.RPC("/containerd.task.v3.Task/State", "ok", time.Microsecond) },
		"BackendCommand": func() { r.BackendCommand(runc, "state", nil, time.Millisecond) },
	} {
		if n := testing.AllocsPerRun(1000, f); n != 0 {
			t.Errorf("%s allocates %v times per call", name, n)
		}
	}
}

func TestWriteFinal(t *testing.T) {
	dir := filepath.Join(shortDir(t), "final")
	r := New(Options{ProcessMetrics: true})
	// No directory, no aggregator: nothing is written.
	if err := r.WriteFinal(dir, "shim1"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing dir: %v, want fs.ErrNotExist", err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r.TaskCreated(runc, taskA)
	r.TaskStarted(runc, taskA, 10*time.Millisecond)
	r.RPC("Start", "ok", 5*time.Millisecond)
	if err := r.WriteFinal(dir, "shim1"); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "shim1."+r.Instance()+".prom" {
		t.Fatalf("entries: %v", entries)
	}
	fi, _ := entries[0].Info()
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("final mode %v", fi.Mode().Perm())
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v", st.Mode().Perm())
	}
	f, err := os.Open(filepath.Join(dir, entries[0].Name()))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The aggregator's own parser reads it in pkg/aggregator
	// (TestFinalSnapshotFormat); here, the text format and its content.
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(f)
	if err != nil {
		t.Fatal(err)
	}
	for name, fam := range fams {
		if !strings.HasPrefix(name, Prefix) {
			t.Errorf("foreign family %s in final snapshot", name)
		}
		if fam.GetType() == dto.MetricType_GAUGE {
			t.Errorf("gauge %s in final snapshot", name)
		}
	}
	if got := flatten([]*dto.MetricFamily{fams["containerd_shim_custom_tasks_started_total"]})[`containerd_shim_custom_tasks_started_total{backend="runc",runtime_handler="custom-runc"}`]; got != 1 {
		t.Errorf("started counter = %v, want 1", got)
	}
	if fams["containerd_shim_custom_task_rpc_duration_seconds"] == nil {
		t.Error("histogram missing")
	}
	if err := r.WriteFinal(dir, "../x"); err == nil {
		t.Error("accepted a name with a slash")
	}
}

func TestWriteFinalBounded(t *testing.T) {
	dir := shortDir(t)
	for i := range MaxPendingFinals {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("s%d.x.prom", i)), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := New(Options{}).WriteFinal(dir, "one-too-many"); !errors.Is(err, ErrTooManyFinals) {
		t.Fatalf("err = %v, want ErrTooManyFinals", err)
	}
}

func TestTaskFromAnnotations(t *testing.T) {
	got := TaskFromAnnotations("k8s.io", "c1", map[string]string{
		"io.kubernetes.cri.sandbox-name": "web-0", "io.kubernetes.cri.sandbox-namespace": "prod",
		"io.kubernetes.cri.container-name": "app",
	})
	want := Task{Namespace: "k8s.io", ID: "c1", Pod: "web-0", PodNamespace: "prod", Container: "app"}
	if got != want {
		t.Errorf("got %+v", got)
	}
}
