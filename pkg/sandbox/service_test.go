package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	sandboxapi "github.com/containerd/containerd/api/runtime/sandbox/v1"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	criapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// fakePod stands for a backend's sandbox process (the nsholder, runsc's
// sandbox) as the service depends on it: Start returns the process's pid,
// Stop kills it and its exit reaches HandleExit later, from another
// goroutine, as the reaper's does; Stop and Delete are safe to repeat.
type fakePod struct {
	svc *Service
	pid int
	// onStart runs inside Start, while the service does not know the pid
	// yet.
	onStart func()

	mu      sync.Mutex
	running bool
}

func (p *fakePod) Start(context.Context) (int, error) {
	if p.onStart != nil {
		p.onStart()
	}
	p.mu.Lock()
	p.running = true
	p.mu.Unlock()
	return p.pid, nil
}

func (p *fakePod) Stop(context.Context) error {
	p.mu.Lock()
	was := p.running
	p.running = false
	p.mu.Unlock()
	if was {
		go p.svc.HandleExit(runtime.Exit{Pid: p.pid, Status: 137, Timestamp: time.Now()})
	}
	return nil
}

func (p *fakePod) Delete(context.Context) error { return nil }
func (p *fakePod) CgroupPath() string           { return "" }

func (p *fakePod) isRunning() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.running
}

// fakeSection is a backend's configuration table with nothing in it.
type fakeSection struct{}

func (*fakeSection) Validate() error                       { return nil }
func (*fakeSection) Binary() string                        { return "" }
func (*fakeSection) ClaimsBinary(string) bool              { return false }
func (*fakeSection) ApplyRuncOptions(*runcoptions.Options) {}

// newTestService is a Sandbox service whose one backend's pod sandbox is
// pod, with the default shim configuration.
func newTestService(t *testing.T, pod *fakePod) *Service {
	t.Helper()
	empty := filepath.Join(t.TempDir(), "shim.toml")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(oci.ConfigEnv, empty)
	reg := runtime.NewRegistry(runtime.Registration{
		Name:     "fake",
		Settings: func() oci.Section { return &fakeSection{} },
		NewPod:   func(oci.Section, *runtime.Pod) (runtime.PodSandbox, error) { return pod, nil },
	})
	s := NewService(context.Background(), Config{Backends: reg})
	pod.svc = s
	return s
}

// createRequest is what containerd sends for a host-network, host-IPC pod
// (no mounts needed), with its bundle laid out as containerd's shim sandbox
// controller lays it out.
func createRequest(t *testing.T, id string) *sandboxapi.CreateSandboxRequest {
	t.Helper()
	top := t.TempDir()
	b := filepath.Join(top, "run", "io.containerd.sandbox.controller.v1.shim", "k8s.io", id)
	work := filepath.Join(top, "lib", "io.containerd.sandbox.controller.v1.shim", "k8s.io", id)
	for _, d := range []string{b, work} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(work, filepath.Join(b, "work")); err != nil {
		t.Fatal(err)
	}
	pc := &criapi.PodSandboxConfig{
		Metadata: &criapi.PodSandboxMetadata{Name: id, Namespace: "default", Uid: "u-" + id},
		Hostname: id,
		Linux:    nsOpts(criapi.NamespaceMode_NODE, criapi.NamespaceMode_NODE, criapi.NamespaceMode_CONTAINER),
	}
	return &sandboxapi.CreateSandboxRequest{SandboxID: id, BundlePath: b, Options: podOpts(t, pc)}
}

func status(t *testing.T, s *Service, id string) *sandboxapi.SandboxStatusResponse {
	t.Helper()
	st, err := s.SandboxStatus(context.Background(), &sandboxapi.SandboxStatusRequest{SandboxID: id})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// An exit whose pid is the new sandbox process's but that is older than it
// (a recycled pid: the exit of an earlier process reaped before the start,
// even if delivered during it), or another process's exit, is not the
// sandbox's: the sandbox stays ready. One that happened after the start
// began is its own and ends it.
func TestStartSandboxIgnoresRecycledPidExits(t *testing.T) {
	ctx := context.Background()
	pod := &fakePod{pid: 4242}
	s := newTestService(t, pod)
	if _, err := s.CreateSandbox(ctx, createRequest(t, "sb1")); err != nil {
		t.Fatal(err)
	}
	// A task's process that had the pid before, reaped a while ago.
	s.HandleExit(runtime.Exit{Pid: 4242, Status: 1, Timestamp: time.Now().Add(-time.Second)})
	pod.onStart = func() {
		// Delivered while the sandbox starts: one reaped before the start
		// (the reaper's channel was behind), and another process's.
		s.HandleExit(runtime.Exit{Pid: 4242, Status: 2, Timestamp: time.Now().Add(-time.Minute)})
		s.HandleExit(runtime.Exit{Pid: 4343, Status: 3, Timestamp: time.Now()})
	}
	if _, err := s.StartSandbox(ctx, &sandboxapi.StartSandboxRequest{SandboxID: "sb1"}); err != nil {
		t.Fatal(err)
	}
	if st := status(t, s, "sb1"); st.GetState() != criReady || st.GetPid() != 4242 {
		t.Fatalf("a recycled pid's exit was taken as the sandbox's: state %s pid %d", st.GetState(), st.GetPid())
	}

	// The sandbox process itself dies during the start.
	pod2 := &fakePod{pid: 4545}
	s2 := newTestService(t, pod2)
	if _, err := s2.CreateSandbox(ctx, createRequest(t, "sb2")); err != nil {
		t.Fatal(err)
	}
	pod2.onStart = func() { s2.HandleExit(runtime.Exit{Pid: 4545, Status: 7, Timestamp: time.Now()}) }
	if _, err := s2.StartSandbox(ctx, &sandboxapi.StartSandboxRequest{SandboxID: "sb2"}); err != nil {
		t.Fatal(err)
	}
	w, err := s2.WaitSandbox(ctx, &sandboxapi.WaitSandboxRequest{SandboxID: "sb2"})
	if err != nil || w.GetExitStatus() != 7 {
		t.Fatalf("the sandbox's own early exit: %v %v", w, err)
	}
	if st := status(t, s2, "sb2"); st.GetState() != criNotReady {
		t.Fatalf("state %s after the sandbox process exited", st.GetState())
	}
}

// ShutdownSandbox and StartSandbox of one sandbox, concurrently: whichever
// comes first, no sandbox process runs once ShutdownSandbox has returned,
// and a start that comes after it is refused.
func TestShutdownSandboxRacesStartSandbox(t *testing.T) {
	ctx := context.Background()
	for round := range 200 {
		pod := &fakePod{pid: 5000 + round}
		s := newTestService(t, pod)
		id := fmt.Sprintf("sb%d", round)
		if _, err := s.CreateSandbox(ctx, createRequest(t, id)); err != nil {
			t.Fatal(err)
		}
		var (
			wg                sync.WaitGroup
			startErr, shutErr error
		)
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, startErr = s.StartSandbox(ctx, &sandboxapi.StartSandboxRequest{SandboxID: id})
		}()
		go func() {
			defer wg.Done()
			_, shutErr = s.ShutdownSandbox(ctx, &sandboxapi.ShutdownSandboxRequest{SandboxID: id})
		}()
		wg.Wait()
		if shutErr != nil {
			t.Fatalf("round %d: shutdown: %v", round, shutErr)
		}
		if pod.isRunning() {
			t.Fatalf("round %d: the sandbox process runs after ShutdownSandbox returned (start: %v)", round, startErr)
		}
		if startErr != nil && !errdefs.IsFailedPrecondition(startErr) {
			t.Fatalf("round %d: a start after the shutdown: %v, want FailedPrecondition", round, startErr)
		}
		if st := status(t, s, id); st.GetState() != criNotReady || st.GetPid() != 0 {
			t.Fatalf("round %d: after shutdown: state %s pid %d", round, st.GetState(), st.GetPid())
		}
		if s.Holds() {
			t.Fatalf("round %d: a shut down sandbox still holds the shim", round)
		}
	}
}

// The task service lets the shim go when Holds reports false with no task
// left (task.Service.ShutdownIfIdle). A CreateSandbox racing that decision
// either holds the shim or is refused: a pod never gets a sandbox on a
// shim that is going away.
func TestShutdownIfIdleRacesCreateSandbox(t *testing.T) {
	ctx := context.Background()
	for round := range 200 {
		pod := &fakePod{pid: 6000 + round}
		s := newTestService(t, pod)
		req := createRequest(t, fmt.Sprintf("sb%d", round))
		var (
			wg        sync.WaitGroup
			createErr error
			idle      bool
		)
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, createErr = s.CreateSandbox(ctx, req)
		}()
		go func() {
			defer wg.Done()
			idle = !s.Holds()
		}()
		wg.Wait()
		switch {
		case idle && createErr == nil:
			t.Fatalf("round %d: the shim was let go and then a sandbox was created on it", round)
		case createErr != nil && !errdefs.IsFailedPrecondition(createErr):
			t.Fatalf("round %d: create: %v, want FailedPrecondition", round, createErr)
		case !idle && createErr != nil:
			t.Fatalf("round %d: create refused although the shim stays: %v", round, createErr)
		}
	}
}

// Every operation from every state: where it takes the sandbox, or that it
// has nothing to do, or its refusal (FailedPrecondition naming the sandbox,
// its state and the operation).
func TestSandboxTransitions(t *testing.T) {
	const refused, done = state(-1), state(-2)
	want := map[op]map[state]state{
		opStart:       {stateCreated: stateStarting},
		opStarted:     {stateStarting: stateRunning},
		opStartFailed: {stateStarting: stateCreated},
		opExit:        {stateRunning: stateStopped, stateStopping: stateStopping},
		opStop:        {stateCreated: stateStopping, stateRunning: stateStopping, stateStopped: stateStopping, stateShutdown: done},
		opStopped:     {stateStopping: stateStopped},
		opStopFailed:  {stateStopping: stateRunning},
		opShutdown:    {stateStopped: stateShutdown, stateShutdown: done},
	}
	states := []state{stateCreated, stateStarting, stateRunning, stateStopping, stateStopped, stateShutdown}
	for o := range numOps {
		for _, from := range states {
			expect, ok := want[o][from]
			if !ok {
				expect = refused
			}
			t.Run(fmt.Sprintf("%s from %s", rules[o].name, from), func(t *testing.T) {
				sb := &sandbox{id: "sb1", st: from}
				isDone, err := sb.transition(o)
				switch expect {
				case refused:
					if !errdefs.IsFailedPrecondition(err) {
						t.Fatalf("got %v, want FailedPrecondition", err)
					}
					for _, s := range []string{"sb1", from.String(), rules[o].name} {
						if !strings.Contains(err.Error(), s) {
							t.Fatalf("refusal %q does not say %q", err, s)
						}
					}
					if sb.st != from {
						t.Fatalf("a refusal moved the sandbox to %s", sb.st)
					}
				case done:
					if err != nil || !isDone || sb.st != from {
						t.Fatalf("got done=%v %v, state %s: want done, nothing moved", isDone, err, sb.st)
					}
				default:
					if err != nil || isDone || sb.st != expect {
						t.Fatalf("got done=%v %v, state %s: want %s", isDone, err, sb.st, expect)
					}
				}
			})
		}
	}
}

// The API's operations in order and out of it: a refused one is
// FailedPrecondition and changes nothing; stopping and shutting down are
// idempotent; WaitSandbox returns once the process is gone.
func TestSandboxLifecycle(t *testing.T) {
	ctx := context.Background()
	pod := &fakePod{pid: 7000}
	s := newTestService(t, pod)
	id := "sb1"
	if _, err := s.CreateSandbox(ctx, createRequest(t, id)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateSandbox(ctx, createRequest(t, id)); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("second create: %v", err)
	}
	if st := status(t, s, id); st.GetState() != criNotReady || st.GetPid() != 0 {
		t.Fatalf("created: %v", st)
	}
	if _, err := s.StartSandbox(ctx, &sandboxapi.StartSandboxRequest{SandboxID: id}); err != nil {
		t.Fatal(err)
	}
	if st := status(t, s, id); st.GetState() != criReady || st.GetPid() != 7000 {
		t.Fatalf("started: %v", st)
	}
	if _, err := s.StartSandbox(ctx, &sandboxapi.StartSandboxRequest{SandboxID: id}); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "running") {
		t.Fatalf("second start: %v", err)
	}
	for range 2 {
		if _, err := s.StopSandbox(ctx, &sandboxapi.StopSandboxRequest{SandboxID: id}); err != nil {
			t.Fatal(err)
		}
	}
	if pod.isRunning() {
		t.Fatal("the process runs after StopSandbox")
	}
	w, err := s.WaitSandbox(ctx, &sandboxapi.WaitSandboxRequest{SandboxID: id})
	if err != nil || w.GetExitStatus() != 137 {
		t.Fatalf("wait: %v %v", w, err)
	}
	if _, err := s.StartSandbox(ctx, &sandboxapi.StartSandboxRequest{SandboxID: id}); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "stopped") {
		t.Fatalf("start after stop: %v", err)
	}
	if !s.Holds() {
		t.Fatal("a stopped sandbox that was not shut down lets the shim go")
	}
	for range 2 {
		if _, err := s.ShutdownSandbox(ctx, &sandboxapi.ShutdownSandboxRequest{SandboxID: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.StopSandbox(ctx, &sandboxapi.StopSandboxRequest{SandboxID: id}); err != nil {
		t.Fatalf("stop after shutdown: %v", err)
	}
	if _, err := s.StartSandbox(ctx, &sandboxapi.StartSandboxRequest{SandboxID: id}); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "shut down") {
		t.Fatalf("start after shutdown: %v", err)
	}
	if s.Holds() {
		t.Fatal("a shut down sandbox holds the shim")
	}
	if _, err := s.CreateSandbox(ctx, createRequest(t, "sb2")); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("create once the shim was let go: %v", err)
	}
}

// A sandbox stopped before it was started has no process to wait for.
func TestStopUnstartedSandboxReleasesWaiters(t *testing.T) {
	ctx := context.Background()
	s := newTestService(t, &fakePod{pid: 7100})
	if _, err := s.CreateSandbox(ctx, createRequest(t, "sb1")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StopSandbox(ctx, &sandboxapi.StopSandboxRequest{SandboxID: "sb1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WaitSandbox(ctx, &sandboxapi.WaitSandboxRequest{SandboxID: "sb1"}); err != nil {
		t.Fatal(err)
	}
}

// A sandbox whose request handler panicked (the server's recovery
// interceptor marks it) refuses the requests that would build on its
// half-changed state, naming the panic, and still serves those that end the
// pod; another sandbox and an id that is no sandbox are untouched.
func TestPanickedSandboxServesOnlyItsEnd(t *testing.T) {
	ctx := context.Background()
	pod := &fakePod{pid: 7100}
	s := newTestService(t, pod)
	for _, id := range []string{"sb1", "sb2"} {
		if _, err := s.CreateSandbox(ctx, createRequest(t, id)); err != nil {
			t.Fatal(err)
		}
	}
	s.Panicked("sb1", "StartSandbox", "boom")
	s.Panicked("no-such-sandbox", "StartSandbox", "boom")
	_, err := s.StartSandbox(ctx, &sandboxapi.StartSandboxRequest{SandboxID: "sb1"})
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "StartSandbox panicked (boom)") {
		t.Fatalf("start of the marked sandbox: %v, want FailedPrecondition naming the panic", err)
	}
	if _, err := s.PingSandbox(ctx, &sandboxapi.PingRequest{SandboxID: "sb1"}); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("ping of the marked sandbox: %v, want FailedPrecondition", err)
	}
	if _, err := s.StartSandbox(ctx, &sandboxapi.StartSandboxRequest{SandboxID: "sb2"}); err != nil {
		t.Fatalf("start of the other sandbox: %v", err)
	}
	if st := status(t, s, "sb1"); st.GetState() != criNotReady {
		t.Fatalf("status of the marked sandbox: %v", st)
	}
	if _, err := s.StopSandbox(ctx, &sandboxapi.StopSandboxRequest{SandboxID: "sb1"}); err != nil {
		t.Fatalf("stop of the marked sandbox: %v", err)
	}
	if _, err := s.WaitSandbox(ctx, &sandboxapi.WaitSandboxRequest{SandboxID: "sb1"}); err != nil {
		t.Fatalf("wait of the marked sandbox: %v", err)
	}
	if _, err := s.ShutdownSandbox(ctx, &sandboxapi.ShutdownSandboxRequest{SandboxID: "sb1"}); err != nil {
		t.Fatalf("shutdown of the marked sandbox: %v", err)
	}
}
