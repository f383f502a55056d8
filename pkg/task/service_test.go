package task

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
)

// fakeBackend simulates a runtime: it hands out pids and lets tests report
// exits at chosen moments through hooks.
//
// Like a kernel, it recycles pids: a pid whose process exited and was
// reaped (harness.exit) is handed out again, before any new one, so the
// service meets a pid reused while an exit of its old owner may still be
// on its way. With sandboxPid set it behaves as runsc's sub-containers
// (fakeWaiter): every init has the sandbox's pid, which is not the
// container's process, and init exits come from WaitInit.
type fakeBackend struct {
	mu      sync.Mutex
	nextPid int
	free    []int // reaped pids, handed out again last-freed first
	killed  []string
	// hooks run inside the backend call, as a real exit racing the call
	// would arrive.
	onStart  func(pid int)
	onExec   func(pid int)
	onDelete func()
	pids     map[string]int
	// sandboxPid, when set, is every init's pid (fakeWaiter).
	sandboxPid int
	// initExits delivers each init's exit to WaitInit (fakeWaiter); one
	// buffered channel per container, made at Create, as runsc wait
	// returns at once for a container that already exited.
	initExits map[string]chan runtime.Exit
}

func (f *fakeBackend) pid() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := len(f.free); n > 0 {
		p := f.free[n-1]
		f.free = f.free[:n-1]
		return p
	}
	f.nextPid++
	return f.nextPid
}

// reaped makes pid available again, as the kernel does once its process
// was waited for. The sandbox's pid is not: the sandbox outlives its
// containers.
func (f *fakeBackend) reaped(pid int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if pid != 0 && pid != f.sandboxPid {
		f.free = append(f.free, pid)
	}
}

func (f *fakeBackend) Create(ctx context.Context, c *runtime.CreateConfig) (int, error) {
	p := f.sandboxPid
	if p == 0 {
		p = f.pid()
	}
	f.mu.Lock()
	f.pids[c.ID] = p
	if f.initExits != nil {
		f.initExits[c.ID] = make(chan runtime.Exit, 1)
	}
	f.mu.Unlock()
	return p, nil
}

// fakeWaiter is the fake backend as runsc's sub-containers are: a
// runtime.InitWaiter whose init exits come from WaitInit, not the reaper.
type fakeWaiter struct{ *fakeBackend }

var _ runtime.InitWaiter = fakeWaiter{}

// WaitInit blocks, as runsc wait does, until the test ends the init
// (harness.initExit).
func (f fakeWaiter) WaitInit(ctx context.Context, id string) (runtime.Exit, error) {
	f.mu.Lock()
	ch := f.initExits[id]
	f.mu.Unlock()
	if ch == nil {
		return runtime.Exit{}, fmt.Errorf("wait for %s: %w", id, errdefs.ErrNotFound)
	}
	select {
	case e := <-ch:
		ch <- e // a second wait returns the same exit
		return e, nil
	case <-ctx.Done():
		return runtime.Exit{}, ctx.Err()
	}
}
func (f *fakeBackend) Start(ctx context.Context, id string, _ *runtime.IO) error {
	if f.onStart != nil {
		f.mu.Lock()
		p := f.pids[id]
		f.mu.Unlock()
		f.onStart(p)
	}
	return nil
}
func (f *fakeBackend) Restore(context.Context, *runtime.CreateConfig, *runtime.RestoreConfig) (int, error) {
	return 0, errdefs.ErrNotImplemented
}
func (f *fakeBackend) Exec(ctx context.Context, id string, e *runtime.ExecConfig) (int, error) {
	p := f.pid()
	if f.onExec != nil {
		f.onExec(p)
	}
	return p, nil
}
func (f *fakeBackend) Kill(ctx context.Context, id string, sig syscall.Signal, all bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.killed = append(f.killed, fmt.Sprintf("%s/%d/%v", id, int(sig), all))
	return nil
}
func (f *fakeBackend) Signal(ctx context.Context, id string, p runtime.ExecProcess, sig syscall.Signal) error {
	return nil
}
func (f *fakeBackend) Delete(ctx context.Context, id string, force bool) error {
	if f.onDelete != nil {
		f.onDelete()
	}
	return nil
}
func (f *fakeBackend) Pause(ctx context.Context, id string) error  { return nil }
func (f *fakeBackend) Resume(ctx context.Context, id string) error { return nil }
func (f *fakeBackend) Update(ctx context.Context, id string, r *specs.LinuxResources) error {
	return nil
}
func (f *fakeBackend) Pids(ctx context.Context, id string) ([]int, error) { return nil, nil }
func (f *fakeBackend) Cgroup(ctx context.Context, id string, pid int) (cgroup.Cgroup, error) {
	return nil, nil
}
func (f *fakeBackend) Stats(ctx context.Context, id string, cg cgroup.Cgroup) (*cgroup.Metrics, error) {
	return nil, errdefs.ErrNotFound
}
func (f *fakeBackend) Checkpoint(context.Context, string, *runtime.CheckpointConfig) error {
	return errdefs.ErrNotImplemented
}

// recordingSender keeps what would go to containerd.
type recordingSender struct {
	mu     sync.Mutex
	events []string
	fail   int // fail this many sends first
}

func (r *recordingSender) Send(ctx context.Context, env *types.Envelope) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail > 0 {
		r.fail--
		return ttrpc.ErrClosed // what the sender returns while containerd restarts
	}
	v, err := typeurl.UnmarshalAny(env.Event)
	if err != nil {
		return err
	}
	r.events = append(r.events, describe(env.Topic, v))
	return nil
}

func (r *recordingSender) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

func describe(topic string, v any) string {
	switch e := v.(type) {
	case *eventstypes.TaskExit:
		return fmt.Sprintf("%s %s/%s %d", topic, e.ContainerID, e.ID, e.ExitStatus)
	case *eventstypes.TaskExecStarted:
		return fmt.Sprintf("%s %s/%s", topic, e.ContainerID, e.ExecID)
	case *eventstypes.TaskExecAdded:
		return fmt.Sprintf("%s %s/%s", topic, e.ContainerID, e.ExecID)
	case interface{ GetContainerID() string }:
		return fmt.Sprintf("%s %s", topic, e.GetContainerID())
	}
	return topic
}

type harness struct {
	t       *testing.T
	svc     *Service
	backend *fakeBackend
	sender  *recordingSender
	ctx     context.Context
}

func newHarness(t *testing.T) *harness {
	return newHarnessWith(t, &fakeBackend{nextPid: 1000, pids: map[string]int{}})
}

// newWaiterHarness is a harness whose backend is runsc's sub-containers'
// (fakeWaiter): every init has the sandbox's pid, exits come from WaitInit.
func newWaiterHarness(t *testing.T, sandboxPid int) *harness {
	return newHarnessWith(t, &fakeBackend{nextPid: 1000, pids: map[string]int{}, sandboxPid: sandboxPid, initExits: map[string]chan runtime.Exit{}})
}

func newHarnessWith(t *testing.T, fb *fakeBackend) *harness {
	t.Setenv(oci.ConfigEnv, "")
	var backend runtime.Backend = fb
	if fb.sandboxPid != 0 {
		backend = fakeWaiter{fb}
	}
	rs := &recordingSender{}
	ctx := namespaces.WithNamespace(context.Background(), "test")
	svc := NewService(ctx, Config{
		Namespace: "test",
		Events:    rs,
		Backends: runtime.NewRegistry(runtime.Registration{
			Name:     "fake",
			Settings: func() oci.Section { return &fakeSettings{} },
			New:      func(oci.Section, *runtime.Container) (runtime.Backend, error) { return backend, nil },
		}),
	})
	return &harness{t: t, svc: svc, backend: fb, sender: rs, ctx: ctx}
}

// fakeSettings is the fake backend's (empty) configuration table.
type fakeSettings struct{}

func (fakeSettings) Validate() error                       { return nil }
func (fakeSettings) Binary() string                        { return "" }
func (fakeSettings) ClaimsBinary(string) bool              { return false }
func (fakeSettings) ApplyRuncOptions(*runcoptions.Options) {}

func newBundle(t *testing.T, pidNS bool) string {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{Args: []string{"sh"}, Cwd: "/"},
		Root:    &specs.Root{Path: "rootfs"},
		Linux:   &specs.Linux{},
	}
	if pidNS {
		s.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.PIDNamespace}}
	}
	data, _ := json.Marshal(s)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func (h *harness) create(id string) int {
	h.t.Helper()
	resp, err := h.svc.Create(h.ctx, &taskAPI.CreateTaskRequest{ID: id, Bundle: newBundle(h.t, true)})
	if err != nil {
		h.t.Fatalf("create %s: %v", id, err)
	}
	return int(resp.Pid)
}

// exit is the reaper's report of pid's exit: the kernel freed the pid
// when the reaper waited for it, before the report reaches the service.
func (h *harness) exit(pid, status int) {
	h.backend.reaped(pid)
	h.svc.HandleExit(runtime.Exit{Pid: pid, Status: status, Timestamp: time.Now()})
}

// initExit ends the init of id on a fakeWaiter backend: its WaitInit
// returns.
func (h *harness) initExit(id string, status int) {
	h.t.Helper()
	h.backend.mu.Lock()
	ch := h.backend.initExits[id]
	h.backend.mu.Unlock()
	if ch == nil {
		h.t.Fatalf("no init waiting for %s", id)
	}
	ch <- runtime.Exit{Status: status, Timestamp: time.Now()}
}

// flushed closes the queue (as the server does before exiting) and returns
// everything containerd received.
func (h *harness) flushed() []string {
	h.t.Helper()
	if err := h.svc.Close(); err != nil {
		h.t.Fatal(err)
	}
	return h.sender.list()
}

func wantEvents(t *testing.T, got, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("events:\n got  %q\n want %q", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("event %d:\n got  %q\n want %q", i, got, want)
		}
	}
}

func execSpec(t *testing.T) *anypb.Any {
	a, err := typeurl.MarshalAnyToProto(&specs.Process{Args: []string{"true"}, Cwd: "/"})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestExitDuringStartComesAfterTaskStart(t *testing.T) {
	h := newHarness(t)
	// The init exits while the runtime's start is still running: the exit
	// must still be published after TaskStart.
	h.backend.onStart = func(pid int) { h.exit(pid, 7) }
	pid := h.create("c1")
	if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	w, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "c1"})
	if err != nil || w.ExitStatus != 7 {
		t.Fatalf("wait: %v %v", w, err)
	}
	if _, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, h.flushed(), []string{
		"/tasks/create c1", "/tasks/start c1", "/tasks/exit c1/c1 7", "/tasks/delete c1",
	})
	_ = pid
}

func TestExecExitDuringStartComesAfterExecStarted(t *testing.T) {
	h := newHarness(t)
	h.create("c1")
	if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	h.backend.onExec = func(pid int) { h.exit(pid, 3) }
	if _, err := h.svc.Exec(h.ctx, &taskAPI.ExecProcessRequest{ID: "c1", ExecID: "e1", Spec: execSpec(t)}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	w, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "c1", ExecID: "e1"})
	if err != nil || w.ExitStatus != 3 {
		t.Fatalf("wait exec: %v %v", w, err)
	}
	wantEvents(t, h.flushed(), []string{
		"/tasks/create c1", "/tasks/start c1", "/tasks/exec-added c1/e1", "/tasks/exec-started c1/e1", "/tasks/exit c1/e1 3",
	})
}

func TestInitExitWaitsForExecExits(t *testing.T) {
	h := newHarness(t)
	initPid := h.create("c1")
	if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Exec(h.ctx, &taskAPI.ExecProcessRequest{ID: "c1", ExecID: "e1", Spec: execSpec(t)}); err != nil {
		t.Fatal(err)
	}
	st, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1", ExecID: "e1"})
	if err != nil {
		t.Fatal(err)
	}
	h.exit(initPid, 0)
	// No exec may start once the init is gone.
	if _, err := h.svc.Exec(h.ctx, &taskAPI.ExecProcessRequest{ID: "c1", ExecID: "e2", Spec: execSpec(t)}); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("exec after init exit: want FailedPrecondition, got %v", err)
	}
	h.exit(int(st.Pid), 137)
	if _, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, h.flushed(), []string{
		"/tasks/create c1", "/tasks/start c1", "/tasks/exec-added c1/e1", "/tasks/exec-started c1/e1",
		"/tasks/exit c1/e1 137", "/tasks/exit c1/c1 0",
	})
}

func TestSharedPidNamespaceKillsAllOnInitExit(t *testing.T) {
	h := newHarness(t)
	resp, err := h.svc.Create(h.ctx, &taskAPI.CreateTaskRequest{ID: "c1", Bundle: newBundle(t, false)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	h.exit(int(resp.Pid), 0)
	if _, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if len(h.backend.killed) != 1 || h.backend.killed[0] != "c1/9/true" {
		t.Fatalf("want a kill --all SIGKILL, got %v", h.backend.killed)
	}
}

func TestStateErrors(t *testing.T) {
	h := newHarness(t)
	pid := h.create("c1")
	cases := []struct {
		name string
		call func() error
		kind func(error) bool
	}{
		{"delete unknown task", func() error {
			_, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "nope"})
			return err
		}, errdefs.IsNotFound},
		{"start unknown exec", func() error {
			_, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1", ExecID: "nope"})
			return err
		}, errdefs.IsNotFound},
		{"create twice", func() error {
			_, err := h.svc.Create(h.ctx, &taskAPI.CreateTaskRequest{ID: "c1", Bundle: newBundle(t, true)})
			return err
		}, errdefs.IsAlreadyExists},
		{"start", func() error {
			_, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1"})
			return err
		}, func(err error) bool { return err == nil }},
		{"start twice", func() error {
			_, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1"})
			return err
		}, errdefs.IsFailedPrecondition},
		{"delete while running", func() error {
			_, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c1"})
			return err
		}, errdefs.IsFailedPrecondition},
		{"resume while running", func() error {
			_, err := h.svc.Resume(h.ctx, &taskAPI.ResumeRequest{ID: "c1"})
			return err
		}, errdefs.IsFailedPrecondition},
		{"resize without tty", func() error {
			_, err := h.svc.ResizePty(h.ctx, &taskAPI.ResizePtyRequest{ID: "c1", Width: 10, Height: 10})
			return err
		}, errdefs.IsFailedPrecondition},
		{"duplicate exec id", func() error {
			if _, err := h.svc.Exec(h.ctx, &taskAPI.ExecProcessRequest{ID: "c1", ExecID: "dup", Spec: execSpec(t)}); err != nil {
				t.Fatalf("first exec: %v", err)
			}
			_, err := h.svc.Exec(h.ctx, &taskAPI.ExecProcessRequest{ID: "c1", ExecID: "dup", Spec: execSpec(t)})
			return err
		}, errdefs.IsAlreadyExists},
		{"exec with invalid id", func() error {
			_, err := h.svc.Exec(h.ctx, &taskAPI.ExecProcessRequest{ID: "c1", ExecID: "../x", Spec: execSpec(t)})
			return err
		}, errdefs.IsInvalidArgument},
		{"kill of unstarted exec", func() error {
			_, err := h.svc.Kill(h.ctx, &taskAPI.KillRequest{ID: "c1", ExecID: "dup", Signal: 9})
			return err
		}, errdefs.IsFailedPrecondition},
		{"exit", func() error { h.exit(pid, 0); _, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "c1"}); return err },
			func(err error) bool { return err == nil }},
		{"kill after exit", func() error {
			_, err := h.svc.Kill(h.ctx, &taskAPI.KillRequest{ID: "c1", Signal: 9})
			return err
		}, errdefs.IsNotFound},
		{"pause after exit", func() error {
			_, err := h.svc.Pause(h.ctx, &taskAPI.PauseRequest{ID: "c1"})
			return err
		}, errdefs.IsFailedPrecondition},
		{"delete", func() error {
			_, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c1"})
			return err
		}, func(err error) bool { return err == nil }},
		{"stats of deleted task", func() error {
			_, err := h.svc.Stats(h.ctx, &taskAPI.StatsRequest{ID: "c1"})
			return err
		}, errdefs.IsNotFound},
	}
	for _, c := range cases {
		if err := c.call(); !c.kind(err) {
			t.Errorf("%s: unexpected result %v", c.name, err)
		}
	}
}

func TestShutdownWaitsForLastTask(t *testing.T) {
	var shutdowns int
	h := newHarness(t)
	h.svc.requestShutdown = func() { shutdowns++ }
	pid := h.create("c1")
	h.svc.Shutdown(h.ctx, &taskAPI.ShutdownRequest{})
	if shutdowns != 0 {
		t.Fatal("shut down with a task left")
	}
	if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	h.exit(pid, 0)
	if _, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c1"})
	h.svc.Shutdown(h.ctx, &taskAPI.ShutdownRequest{})
	h.svc.Shutdown(h.ctx, &taskAPI.ShutdownRequest{})
	if shutdowns != 1 {
		t.Fatalf("want one shutdown, got %d", shutdowns)
	}
	if _, err := h.svc.Create(h.ctx, &taskAPI.CreateTaskRequest{ID: "c2", Bundle: newBundle(t, true)}); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("create after shutdown: %v", err)
	}
}

func TestEventsSurviveSendFailuresInOrder(t *testing.T) {
	h := newHarness(t)
	h.sender.fail = 3
	for i := 0; i < 20; i++ {
		id := fmt.Sprintf("c%d", i)
		pid := h.create(id)
		if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: id}); err != nil {
			t.Fatal(err)
		}
		h.exit(pid, i)
		if _, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: id}); err != nil {
			t.Fatal(err)
		}
		h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: id})
	}
	got := h.flushed()
	var want []string
	for i := 0; i < 20; i++ {
		id := fmt.Sprintf("c%d", i)
		want = append(want, "/tasks/create "+id, "/tasks/start "+id, fmt.Sprintf("/tasks/exit %s/%s %d", id, id, i), "/tasks/delete "+id)
	}
	wantEvents(t, got, want)
}

func TestDeleteCreatedTaskReportsKilled(t *testing.T) {
	h := newHarness(t)
	h.create("c1")
	resp, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.ExitStatus != 137 {
		t.Fatalf("exit status %d", resp.ExitStatus)
	}
	wantEvents(t, h.flushed(), []string{"/tasks/create c1", "/tasks/delete c1"})
}

// Concurrent deletes of one task (CRI's exit handler and a cleanup racing):
// one wins, the others learn the task is gone (NotFound, which callers treat
// as done), and containerd hears one TaskDelete.
func TestConcurrentDeletesOneWinsOthersNotFound(t *testing.T) {
	h := newHarness(t)
	pid := h.create("c1")
	if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	h.exit(pid, 0)
	if _, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	const n = 8
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c1"})
			errs <- err
		}()
	}
	ok := 0
	for range n {
		switch err := <-errs; {
		case err == nil:
			ok++
		case !errdefs.IsNotFound(err):
			t.Errorf("losing delete: %v, want NotFound", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d deletes succeeded, want 1", ok)
	}
	wantEvents(t, h.flushed(), []string{"/tasks/create c1", "/tasks/start c1", "/tasks/exit c1/c1 0", "/tasks/delete c1"})
}
