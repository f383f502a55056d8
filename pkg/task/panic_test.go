package task

import (
	"context"
	"strings"
	"syscall"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/shim/recovery"
)

// panickingBackend is the fake backend with a bug: Create panics for task
// createID, Pause for pauseID, as a nil dereference in a backend would.
type panickingBackend struct {
	*fakeBackend
	createID, pauseID string
}

func (b *panickingBackend) Create(ctx context.Context, c *runtime.CreateConfig) (int, error) {
	if c.ID == b.createID {
		var cfg *runtime.CreateConfig
		_ = cfg.ID // nil pointer dereference
	}
	return b.fakeBackend.Create(ctx, c)
}

func (b *panickingBackend) Pause(ctx context.Context, id string) error {
	if id == b.pauseID {
		var cfg *runtime.CreateConfig
		_ = cfg.ID
	}
	return b.fakeBackend.Pause(ctx, id)
}

// serve calls fn as the shim's server does: through the recovery
// interceptor, fn decoding req as a ttrpc service method does.
func serve[R proto.Message](t *testing.T, rec *metrics.Recorder, svc *Service, method string, req R, fn func(context.Context, R) error) error {
	t.Helper()
	info := &ttrpc.UnaryServerInfo{FullMethod: "/containerd.task.v3.Task/" + method}
	unmarshal := func(v any) error {
		proto.Merge(v.(proto.Message), req)
		return nil
	}
	_, err := recovery.Interceptor(rec, svc)(t.Context(), unmarshal, info, func(ctx context.Context, unmarshal func(any) error) (any, error) {
		r := req.ProtoReflect().New().Interface().(R)
		if err := unmarshal(r); err != nil {
			return nil, err
		}
		return nil, fn(ctx, r)
	})
	return err
}

// A backend call that panics fails its request with Internal and marks its
// task only: the task's later requests get FailedPrecondition naming the
// panic, except Kill, Wait and Delete, which clean it up; the other tasks
// are served as before.
func TestPanickingBackendCallMarksOnlyItsTask(t *testing.T) {
	h := newHarness(t)
	pb := &panickingBackend{fakeBackend: h.backend, pauseID: "a"}
	h.svc.backends = runtime.NewRegistry(runtime.Registration{
		Name:     "fake",
		Settings: func() oci.Section { return &fakeSettings{} },
		New:      func(oci.Section, *runtime.Container) (runtime.Backend, error) { return pb, nil },
	})
	rec := metrics.New(metrics.Options{})
	pause := func(ctx context.Context, r *taskAPI.PauseRequest) error { _, err := h.svc.Pause(ctx, r); return err }
	state := func(ctx context.Context, r *taskAPI.StateRequest) error { _, err := h.svc.State(ctx, r); return err }

	pids := map[string]int{}
	for _, id := range []string{"a", "b"} {
		pids[id] = h.create(id)
		if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: id}); err != nil {
			t.Fatal(err)
		}
	}

	err := serve(t, rec, h.svc, "Pause", &taskAPI.PauseRequest{ID: "a"}, pause)
	if !errdefs.IsInternal(err) || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("Pause of a: %v, want Internal naming the panic", err)
	}

	// Task a: refused, with the reason.
	for name, err := range map[string]error{
		"State":  serve(t, rec, h.svc, "State", &taskAPI.StateRequest{ID: "a"}, state),
		"Pause":  serve(t, rec, h.svc, "Pause", &taskAPI.PauseRequest{ID: "a"}, pause),
		"Update": func() error { _, err := h.svc.Update(h.ctx, &taskAPI.UpdateTaskRequest{ID: "a"}); return err }(),
		"Exec": func() error {
			_, err := h.svc.Exec(h.ctx, &taskAPI.ExecProcessRequest{ID: "a", ExecID: "e1", Spec: execSpec(t)})
			return err
		}(),
	} {
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "Pause panicked") {
			t.Errorf("%s of a after its Pause panicked: %v, want FailedPrecondition naming the panic", name, err)
		}
	}
	// Task b: untouched.
	if err := serve(t, rec, h.svc, "Pause", &taskAPI.PauseRequest{ID: "b"}, pause); err != nil {
		t.Fatalf("Pause of b: %v", err)
	}
	if st, err := h.svc.State(h.ctx, &taskAPI.StateRequest{ID: "b"}); err != nil || st.Status.String() != "PAUSED" {
		t.Fatalf("State of b: %v, %v", st, err)
	}

	// A shim-wide request names a task but changes none.
	h.svc.Panicked("b", "Shutdown", "x")
	if _, err := h.svc.State(h.ctx, &taskAPI.StateRequest{ID: "b"}); err != nil {
		t.Fatalf("State of b after a Shutdown panicked: %v", err)
	}

	// containerd cleans a up: kill, wait, delete.
	if _, err := h.svc.Kill(h.ctx, &taskAPI.KillRequest{ID: "a", Signal: uint32(syscall.SIGKILL), All: true}); err != nil {
		t.Fatalf("Kill of a: %v", err)
	}
	h.exit(pids["a"], 137)
	if _, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "a"}); err != nil {
		t.Fatalf("Wait of a: %v", err)
	}
	if _, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "a"}); err != nil {
		t.Fatalf("Delete of a: %v", err)
	}
	if _, err := h.svc.State(h.ctx, &taskAPI.StateRequest{ID: "a"}); !errdefs.IsNotFound(err) {
		t.Fatalf("State of a after Delete: %v, want NotFound", err)
	}
	if got := panicsOf(t, rec, "Pause"); got != 1 {
		t.Errorf("panics_total{method=Pause} = %v, want 1", got)
	}
}

// A Create that panics leaves no task: the id is not held for ever (the
// shim could never go idle), containerd's cleanup Delete finds nothing,
// and a new Create of that id is a new task.
func TestPanickingCreateLeavesNoTask(t *testing.T) {
	h := newHarness(t)
	pb := &panickingBackend{fakeBackend: h.backend, createID: "c"}
	h.svc.backends = runtime.NewRegistry(runtime.Registration{
		Name:     "fake",
		Settings: func() oci.Section { return &fakeSettings{} },
		New:      func(oci.Section, *runtime.Container) (runtime.Backend, error) { return pb, nil },
	})
	rec := metrics.New(metrics.Options{})
	create := func(ctx context.Context, r *taskAPI.CreateTaskRequest) error {
		_, err := h.svc.Create(ctx, r)
		return err
	}

	err := serve(t, rec, h.svc, "Create", &taskAPI.CreateTaskRequest{ID: "c", Bundle: newBundle(t, true)}, create)
	if !errdefs.IsInternal(err) {
		t.Fatalf("Create of c: %v, want Internal", err)
	}
	if _, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c"}); !errdefs.IsNotFound(err) {
		t.Fatalf("Delete of c: %v, want NotFound", err)
	}
	pb.createID = "" // fixed
	if err := serve(t, rec, h.svc, "Create", &taskAPI.CreateTaskRequest{ID: "c", Bundle: newBundle(t, true)}, create); err != nil {
		t.Fatalf("Create of c again: %v", err)
	}
	if _, err := h.svc.State(h.ctx, &taskAPI.StateRequest{ID: "c"}); err != nil {
		t.Fatalf("State of the new c: %v", err)
	}
}

func panicsOf(t *testing.T, rec *metrics.Recorder, method string) float64 {
	t.Helper()
	fams, err := rec.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == metrics.Prefix+"panics_total" {
			for _, m := range f.GetMetric() {
				if m.GetLabel()[0].GetValue() == method {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
