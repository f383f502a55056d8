package shim

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	sandboxapi "github.com/containerd/containerd/api/runtime/sandbox/v1"
	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
)

// panickyTasks is a Task service whose Pause panics for task "boom" (with
// a runtime error, as a nil from a backend would) and answers everything
// else it implements.
// Methods it does not implement panic too (nil interface).
type panickyTasks struct{ taskv3.TTRPCTaskService }

func (panickyTasks) Pause(ctx context.Context, r *taskv3.PauseRequest) (*emptypb.Empty, error) {
	if r.ID == "boom" {
		var st *taskv3.StateResponse
		_ = st.ID // nil pointer dereference
	}
	return &emptypb.Empty{}, nil
}

func (panickyTasks) State(ctx context.Context, r *taskv3.StateRequest) (*taskv3.StateResponse, error) {
	return &taskv3.StateResponse{ID: r.ID}, nil
}

type panickySandboxes struct{ sandboxapi.TTRPCSandboxService }

func (panickySandboxes) StartSandbox(ctx context.Context, r *sandboxapi.StartSandboxRequest) (*sandboxapi.StartSandboxResponse, error) {
	panic("runsc said nothing parseable")
}

// marks records what the interceptor reports; task.Service's side (what it
// refuses afterwards) is tested in pkg/task through the same interceptor.
type marks struct {
	mu  sync.Mutex
	got []string
}

func (m *marks) Panicked(id, method string, v any) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.got = append(m.got, id+" "+method)
}

func (m *marks) list() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return strings.Join(m.got, ", ")
}

// serveShimAPI serves the Task (v3 and v2) and Sandbox APIs with the shim
// server's own options on a unix socket, and returns a client.
func serveShimAPI(t *testing.T, rec *metrics.Recorder, m *marks) *ttrpc.Client {
	t.Helper()
	server, err := ttrpc.NewServer(serverOptions(rec, newMemoryTrimmer(t.Context()), m)...)
	if err != nil {
		t.Fatal(err)
	}
	Register(server, panickyTasks{})
	sandboxapi.RegisterTTRPCSandboxService(server, panickySandboxes{})
	path := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = server.Serve(context.Background(), l) }()
	t.Cleanup(func() { _ = server.Close() })
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func panicCount(t *testing.T, rec *metrics.Recorder, method string) float64 {
	t.Helper()
	fams, err := rec.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != metrics.Prefix+"panics_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			if m.GetLabel()[0].GetValue() == method {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func wantCode(t *testing.T, err error, code codes.Code, what string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: %v (code %v), want code %v", what, err, status.Code(err), code)
	}
}

// A handler's panic is the request's failure, not the shim's: the client
// gets Internal, the panic is counted and reported with the request's task
// (or sandbox) id, and the server serves on.
func TestHandlerPanicAnswersInternalAndShimServesOn(t *testing.T) {
	rec := metrics.New(metrics.Options{})
	m := &marks{}
	c := serveShimAPI(t, rec, m)
	ctx := t.Context()
	v3 := taskv3.NewTTRPCTaskClient(c)

	_, err := v3.Pause(ctx, &taskv3.PauseRequest{ID: "boom"})
	wantCode(t, err, codes.Internal, "v3 Pause of boom")
	if !strings.Contains(err.Error(), "panic") {
		t.Errorf("error %q does not say it panicked", err)
	}
	// containerd 1.7 speaks v2, served by the reflected service.
	_, err = taskv2.NewTTRPCTaskClient(c).Pause(ctx, &taskv2.PauseRequest{ID: "boom"})
	wantCode(t, err, codes.Internal, "v2 Pause of boom")
	// A method the fake does not implement dereferences a nil interface.
	_, err = v3.Stats(ctx, &taskv3.StatsRequest{ID: "other"})
	wantCode(t, err, codes.Internal, "Stats of other")
	_, err = sandboxapi.NewTTRPCSandboxClient(c).StartSandbox(ctx, &sandboxapi.StartSandboxRequest{SandboxID: "pod"})
	wantCode(t, err, codes.Internal, "StartSandbox")

	// Still serving, on the same connection.
	if _, err := v3.Pause(ctx, &taskv3.PauseRequest{ID: "fine"}); err != nil {
		t.Fatalf("Pause of another task after the panics: %v", err)
	}
	if r, err := v3.State(ctx, &taskv3.StateRequest{ID: "boom"}); err != nil || r.ID != "boom" {
		t.Fatalf("State after the panics: %v, %v", r, err)
	}

	if got, want := m.list(), "boom Pause, boom Pause, other Stats, pod StartSandbox"; got != want {
		t.Errorf("marked %q, want %q", got, want)
	}
	for method, want := range map[string]float64{"Pause": 2, "Stats": 1, "StartSandbox": 1, "State": 0} {
		if got := panicCount(t, rec, method); got != want {
			t.Errorf("panics_total{method=%q} = %v, want %v", method, got, want)
		}
	}
	// The failed requests count as such.
	fams, err := rec.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var internal float64
	for _, f := range fams {
		if f.GetName() != metrics.Prefix+"task_rpc_requests_total" {
			continue
		}
		for _, mm := range f.GetMetric() {
			for _, l := range mm.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == "internal" {
					internal += mm.GetCounter().GetValue()
				}
			}
		}
	}
	if internal != 4 {
		t.Errorf("task_rpc_requests_total{result=\"internal\"} sums to %v, want 4", internal)
	}
}
