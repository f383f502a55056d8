package metrics

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	goruntime "runtime"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Prefix is the namespace of every metric the shim and the aggregator export.
const Prefix = "containerd_shim_custom_"

const namespace = "containerd_shim_custom"

// Label names.
const (
	labelBackend = "backend"
	labelHandler = "runtime_handler"
	labelReason  = "reason"
	labelState   = "state"
	labelMethod  = "method"
	labelResult  = "result"
	labelCommand = "command"
	labelTopic   = "topic"
)

// overflow replaces label values past the cardinality caps below (and
// values that are not valid UTF-8), so a misbehaving caller costs one extra
// series, not an unbounded number.
const overflow = "other"

// Cardinality caps. Real shims stay far below them: a few backends and
// handlers, about 20 Task API methods, a dozen backend commands.
const (
	maxLabelSets = 64
	maxRPCSeries = 512
	maxCommands  = 256
)

// Buckets, in seconds.
var (
	// Create to start: runc takes tens of ms, gVisor hundreds, a slow
	// image mount or a loaded node seconds.
	startLatencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}
	// Process lifetimes: from crash loops (sub-second) to a week.
	runDurationBuckets = []float64{.1, 1, 10, 60, 300, 900, 3600, 14400, 86400, 604800}
	// Task API calls: State is microseconds, Create/Start/Delete fork a
	// runtime, Checkpoint can take a minute.
	rpcBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	// One runtime CLI invocation (runc create, runsc wait…).
	commandBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}
)

// Options configures a Recorder.
type Options struct {
	// Version and Revision label build_info; an empty Version is "dev".
	Version, Revision string
	// GoMetrics adds the Go runtime collector (go_*). Off by default: it
	// costs every shim a little on each scrape and the aggregator drops it.
	GoMetrics bool
	// ProcessMetrics adds the process collector (process_*: CPU, fds,
	// memory of the shim). Without it only process_start_time_seconds is
	// exported, taken when the Recorder is created.
	ProcessMetrics bool
}

// Recorder records a shim's task lifecycle. Its methods are safe for
// concurrent use, never block on I/O and never wait for a scrape longer
// than it takes to copy the task map; the counter and histogram paths do
// not allocate. The recording methods of a nil *Recorder do nothing, so
// code under test or a shim without metrics can call them unconditionally.
type Recorder struct {
	reg      *prometheus.Registry
	instance string // random per process: tells the aggregator a restarted shim from its predecessor

	tasksCreated, tasksStarted, tasksDeleted *prometheus.CounterVec
	tasksExited, oomEvents                   *prometheus.CounterVec
	execsStarted, execsExited                *prometheus.CounterVec
	startLatency, runDuration                *prometheus.HistogramVec
	rpcRequests                              *prometheus.CounterVec
	rpcDuration                              *prometheus.HistogramVec
	commandDuration                          *prometheus.HistogramVec
	commandFailures                          *prometheus.CounterVec
	// Rare events (a dropped event, a recovered panic): children resolved
	// per call. Their label values are bounded: containerd's event topics,
	// the ttrpc methods the server registered.
	eventsDropped, panics *prometheus.CounterVec

	// Pod sandboxes (containerd's Sandbox API): a handful per shim, so
	// their children are resolved per call.
	sandboxesCreated, sandboxesStarted, sandboxesExited, sandboxesShutdown *prometheus.CounterVec
	sandboxStartLatency                                                    *prometheus.HistogramVec

	sets cache[Labels, *labelSet]
	rpcs cache[rpcKey, *rpcSeries]
	cmds cache[commandKey, *commandSeries]

	// tasksMu guards tasks only; it is held for one map operation on the
	// task path and for one copy of the map on a scrape.
	tasksMu sync.Mutex
	tasks   map[taskKey]*taskEntry // pointers: a state change is a lookup, not a map write
}

type taskKey struct{ namespace, id string }

type taskEntry struct {
	l     Labels
	t     Task
	state State
}

// New returns a Recorder with its own registry (never the global one).
func New(opts Options) *Recorder {
	if opts.Version == "" {
		opts.Version = "dev"
	}
	var nonce [8]byte
	_, _ = rand.Read(nonce[:]) // never fails since Go 1.24
	r := &Recorder{
		reg:      prometheus.NewRegistry(),
		instance: hex.EncodeToString(nonce[:]),
		tasks:    make(map[taskKey]*taskEntry),
	}
	r.sets.max, r.rpcs.max, r.cmds.max = maxLabelSets, maxRPCSeries, maxCommands

	base := []string{labelBackend, labelHandler}
	counter := func(name, help string, extra ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help},
			append(append([]string{}, base...), extra...))
	}
	histogram := func(name, help string, buckets []float64, labels []string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: buckets}, labels)
	}
	r.tasksCreated = counter("tasks_created_total", "Tasks created (init process created, not yet started).")
	r.tasksStarted = counter("tasks_started_total", "Tasks whose init process was started.")
	r.tasksExited = counter("tasks_exited_total", "Task init processes that exited, by reason: completed (status 0), error (other status), signaled (128+n), oom_killed.", labelReason)
	r.tasksDeleted = counter("tasks_deleted_total", "Tasks deleted.")
	r.oomEvents = counter("oom_events_total", "OOM kills seen in task cgroups.")
	r.execsStarted = counter("execs_started_total", "Exec processes started.")
	r.execsExited = counter("execs_exited_total", "Exec processes that exited, by reason as for tasks_exited_total.", labelReason)
	r.startLatency = histogram("task_start_latency_seconds", "Time from a task's Create request to its init process running.", startLatencyBuckets, base)
	r.runDuration = histogram("task_run_duration_seconds", "Time a task's init process ran, from start to exit.", runDurationBuckets, base)
	r.rpcRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "task_rpc_requests_total",
		Help: "Task API requests served, by method and result (ok or the error kind)."}, []string{labelMethod, labelResult})
	r.rpcDuration = histogram("task_rpc_duration_seconds", "Time to serve a Task API request, by method (Wait, which lasts as long as the process, is not timed).", rpcBuckets, []string{labelMethod})
	r.commandDuration = histogram("backend_command_duration_seconds", "Time a backend command (runc create, runsc wait…) took, failed or not.", commandBuckets, append(append([]string{}, base...), labelCommand))
	r.commandFailures = counter("backend_command_failures_total", "Backend commands that failed.", labelCommand)
	r.eventsDropped = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "events_dropped_total",
		Help: "Task events not delivered to containerd, by topic and reason: refused (containerd answered with an error) or unreachable (still unreachable when the shim exited)."}, []string{labelTopic, labelReason})
	r.panics = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "panics_total",
		Help: "Request handlers that panicked (recovered; the request got Internal), by method."}, []string{labelMethod})
	r.sandboxesCreated = counter("sandboxes_created_total", "Pod sandboxes created through containerd's Sandbox API (CRI sandboxer = \"shim\").")
	r.sandboxesStarted = counter("sandboxes_started_total", "Pod sandboxes started (ready for containers).")
	r.sandboxesExited = counter("sandboxes_exited_total", "Pod sandboxes whose process ended, by reason: stopped (StopSandbox) or died (anything else).", labelReason)
	r.sandboxesShutdown = counter("sandboxes_shutdown_total", "Pod sandboxes shut down (ShutdownSandbox: the pod is gone).")
	r.sandboxStartLatency = histogram("sandbox_start_latency_seconds", "Time from a StartSandbox request to the pod's sandbox being ready.", startLatencyBuckets, base)

	build := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "build_info",
		Help:        "Shim build; the value is the number of shim processes of that build (1 per shim, summed by the aggregator).",
		ConstLabels: prometheus.Labels{"version": opts.Version, "revision": opts.Revision, "goversion": goruntime.Version()}})
	build.Set(1)
	// Always there, unlike the Go collector: one number, read for free,
	// that shows a goroutine leak (a count that only rises).
	goroutines := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: namespace, Name: "goroutines",
		Help: "Goroutines of the shim process: a count that keeps rising while the shim's work does not is a leak."},
		func() float64 { return float64(goruntime.NumGoroutine()) })

	r.reg.MustRegister(r.tasksCreated, r.tasksStarted, r.tasksExited, r.tasksDeleted, r.oomEvents,
		r.execsStarted, r.execsExited, r.startLatency, r.runDuration, r.rpcRequests, r.rpcDuration,
		r.commandDuration, r.commandFailures, r.sandboxesCreated, r.sandboxesStarted, r.sandboxesExited,
		r.sandboxesShutdown, r.sandboxStartLatency, r.eventsDropped, r.panics, build, goroutines, newTaskCollector(r))
	if opts.ProcessMetrics {
		r.reg.MustRegister(newProcessCollector())
	} else {
		start := prometheus.NewGauge(prometheus.GaugeOpts{Name: "process_start_time_seconds",
			Help: "Start time of the process since unix epoch in seconds."})
		start.Set(float64(time.Now().UnixNano()) / 1e9)
		r.reg.MustRegister(start)
	}
	if opts.GoMetrics {
		r.reg.MustRegister(newGoCollector())
	}
	return r
}

// Gatherer is the recorder's registry, for tests and for embedding into
// another handler.
func (r *Recorder) Gatherer() prometheus.Gatherer { return r.reg }

// Instance is the random id of this recorder, sent to the aggregator with
// every scrape and in the final snapshot.
func (r *Recorder) Instance() string { return r.instance }

// InstanceHeader carries Instance on /metrics responses.
const InstanceHeader = "Shim-Instance"

// Handler serves the recorder's metrics in the text format.
func (r *Recorder) Handler() http.Handler {
	h := promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		// The only client is the aggregator on a unix socket: compressing
		// would cost both sides CPU for nothing.
		DisableCompression:  true,
		MaxRequestsInFlight: 2,
	})
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set(InstanceHeader, r.instance)
		h.ServeHTTP(w, req)
	})
}

// TaskCreated records a task whose init process the backend created.
func (r *Recorder) TaskCreated(l Labels, t Task) {
	if r == nil {
		return
	}
	r.set(l).created.Inc()
	r.tasksMu.Lock()
	r.tasks[taskKey{t.Namespace, t.ID}] = &taskEntry{l: l, t: t, state: StateCreated}
	r.tasksMu.Unlock()
}

// TaskStarted records a started init process; sinceCreate is the time from
// the task's Create request to the end of its Start.
func (r *Recorder) TaskStarted(l Labels, t Task, sinceCreate time.Duration) {
	if r == nil {
		return
	}
	s := r.set(l)
	s.started.Inc()
	s.startLatency.Observe(sinceCreate.Seconds())
	r.setState(t, StateRunning)
}

// TaskExited records the exit of a task's init process; ran is the time
// from its start to its exit, negative if it never started (not observed).
func (r *Recorder) TaskExited(l Labels, t Task, reason ExitReason, ran time.Duration) {
	if r == nil {
		return
	}
	s := r.set(l)
	s.exited[reason.valid()].Inc()
	if ran >= 0 {
		s.runDuration.Observe(ran.Seconds())
	}
	r.setState(t, StateStopped)
}

// TaskDeleted records a deleted task; its task_state series disappears.
func (r *Recorder) TaskDeleted(l Labels, t Task) {
	if r == nil {
		return
	}
	r.set(l).deleted.Inc()
	r.tasksMu.Lock()
	delete(r.tasks, taskKey{t.Namespace, t.ID})
	r.tasksMu.Unlock()
}

// TaskState records a state change (pause, resume…) of a task already
// recorded by TaskCreated; unknown tasks are ignored so that a late call
// racing TaskDeleted cannot bring a deleted task back.
func (r *Recorder) TaskState(l Labels, t Task, state State) {
	if r == nil {
		return
	}
	if state >= numStates {
		return
	}
	r.setState(t, state)
}

func (r *Recorder) setState(t Task, state State) {
	k := taskKey{t.Namespace, t.ID}
	r.tasksMu.Lock()
	if e := r.tasks[k]; e != nil {
		e.state = state
	}
	r.tasksMu.Unlock()
}

// SandboxCreated records a pod sandbox created.
func (r *Recorder) SandboxCreated(l Labels) {
	if r == nil {
		return
	}
	r.sandboxesCreated.WithLabelValues(l.Backend, l.Handler).Inc()
}

// SandboxStarted records a pod sandbox ready after d.
func (r *Recorder) SandboxStarted(l Labels, d time.Duration) {
	if r == nil {
		return
	}
	r.sandboxesStarted.WithLabelValues(l.Backend, l.Handler).Inc()
	r.sandboxStartLatency.WithLabelValues(l.Backend, l.Handler).Observe(d.Seconds())
}

// SandboxExited records the end of a pod sandbox's process; stopped says
// whether StopSandbox ended it.
func (r *Recorder) SandboxExited(l Labels, stopped bool) {
	if r == nil {
		return
	}
	reason := "died"
	if stopped {
		reason = "stopped"
	}
	r.sandboxesExited.WithLabelValues(l.Backend, l.Handler, reason).Inc()
}

// SandboxShutdown records a pod sandbox shut down.
func (r *Recorder) SandboxShutdown(l Labels) {
	if r == nil {
		return
	}
	r.sandboxesShutdown.WithLabelValues(l.Backend, l.Handler).Inc()
}

// OOM records an OOM kill in a task's cgroup.
func (r *Recorder) OOM(l Labels) {
	if r == nil {
		return
	}
	r.set(l).oom.Inc()
}

// ExecStarted records a started exec process.
func (r *Recorder) ExecStarted(l Labels) {
	if r == nil {
		return
	}
	r.set(l).execStarted.Inc()
}

// ExecExited records an exec process's exit.
func (r *Recorder) ExecExited(l Labels, reason ExitReason) {
	if r == nil {
		return
	}
	r.set(l).execExited[reason.valid()].Inc()
}

// RPC records one Task API request. method is the method name ("Create");
// a full ttrpc name ("/containerd.task.v3.Task/Create") is trimmed to it.
// result is "ok" or an error kind: see Result.
func (r *Recorder) RPC(method, result string, d time.Duration) {
	if r == nil {
		return
	}
	if i := strings.LastIndexByte(method, '/'); i >= 0 {
		method = method[i+1:]
	}
	s := r.rpcs.get(rpcKey{method, result}, rpcKey{overflow, overflow}, r.newRPCSeries)
	s.requests.Inc()
	if s.duration != nil {
		s.duration.Observe(d.Seconds())
	}
}

// BackendCommand records one backend command: its duration always, a
// failure when err is not nil.
func (r *Recorder) BackendCommand(l Labels, command string, err error, d time.Duration) {
	if r == nil {
		return
	}
	s := r.cmds.get(commandKey{l, command}, commandKey{Labels{overflow, overflow}, overflow}, r.newCommandSeries)
	s.duration.Observe(d.Seconds())
	if err != nil {
		s.failures.Inc()
	}
}

// EventDropReason is the reason label of events_dropped_total.
type EventDropReason string

// The reasons an event is dropped.
const (
	// EventRefused: containerd answered the event with an error.
	EventRefused EventDropReason = "refused"
	// EventUnreachable: containerd was still unreachable when the shim's
	// time to flush its events ran out.
	EventUnreachable EventDropReason = "unreachable"
)

// EventDropped records a task event given up on; topic is its containerd
// topic ("/tasks/exit").
func (r *Recorder) EventDropped(topic string, reason EventDropReason) {
	if r == nil {
		return
	}
	r.eventsDropped.WithLabelValues(topic, string(reason)).Inc()
}

// Panic records a request handler that panicked; method is trimmed as
// for RPC.
func (r *Recorder) Panic(method string) {
	if r == nil {
		return
	}
	if i := strings.LastIndexByte(method, '/'); i >= 0 {
		method = method[i+1:]
	}
	r.panics.WithLabelValues(method).Inc()
}
