package task

import (
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// The fake backend recycles pids as a kernel does; these tests hold the
// service to what containerd's runc shim does with a recycled pid: the
// exit goes to the process that owns the pid now, and a process that
// exited keeps its one exit.

func (h *harness) start(id, execID string) uint32 {
	h.t.Helper()
	resp, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: id, ExecID: execID})
	if err != nil {
		h.t.Fatalf("start %s/%s: %v", id, execID, err)
	}
	return resp.Pid
}

func (h *harness) wait(id, execID string) uint32 {
	h.t.Helper()
	w, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: id, ExecID: execID})
	if err != nil {
		h.t.Fatalf("wait %s/%s: %v", id, execID, err)
	}
	return w.ExitStatus
}

func (h *harness) exec(id, execID string) {
	h.t.Helper()
	if _, err := h.svc.Exec(h.ctx, &taskAPI.ExecProcessRequest{ID: id, ExecID: execID, Spec: execSpec(h.t)}); err != nil {
		h.t.Fatalf("exec %s/%s: %v", id, execID, err)
	}
}

func TestRecycledInitPidExitGoesToItsNewOwner(t *testing.T) {
	h := newHarness(t)
	pid := h.create("c1")
	h.start("c1", "")
	h.exit(pid, 1)
	if got := h.wait("c1", ""); got != 1 {
		t.Fatalf("c1 exit %d, want 1", got)
	}
	// c1 is not deleted yet: its pid is free all the same, and c2 gets it.
	if got := h.create("c2"); got != pid {
		t.Fatalf("the fake did not recycle pid %d (c2 got %d)", pid, got)
	}
	h.start("c2", "")
	h.exit(pid, 2)
	if got := h.wait("c2", ""); got != 2 {
		t.Fatalf("c2 exit %d, want 2", got)
	}
	st, err := h.svc.State(h.ctx, &taskAPI.StateRequest{ID: "c1"})
	if err != nil || st.ExitStatus != 1 {
		t.Fatalf("c1 after its pid's next exit: %v %v, want exit 1", st, err)
	}
	for _, id := range []string{"c1", "c2"} {
		if _, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	wantEvents(t, h.flushed(), []string{
		"/tasks/create c1", "/tasks/start c1", "/tasks/exit c1/c1 1",
		"/tasks/create c2", "/tasks/start c2", "/tasks/exit c2/c2 2",
		"/tasks/delete c1", "/tasks/delete c2",
	})
}

// A recycled pid's exit that arrives while the pid's new owner is being
// started is that owner's, published after its start.
func TestRecycledPidExitDuringStart(t *testing.T) {
	h := newHarness(t)
	h.create("c1")
	h.start("c1", "")
	h.exec("c1", "e1")
	e1 := int(h.start("c1", "e1"))
	h.exit(e1, 3)
	if got := h.wait("c1", "e1"); got != 3 {
		t.Fatalf("e1 exit %d, want 3", got)
	}
	h.backend.onExec = func(pid int) {
		if pid != e1 {
			t.Errorf("the fake did not recycle pid %d (e2 got %d)", e1, pid)
		}
		h.exit(pid, 4)
	}
	h.exec("c1", "e2")
	h.start("c1", "e2")
	if got := h.wait("c1", "e2"); got != 4 {
		t.Fatalf("e2 exit %d, want 4", got)
	}
	if got := h.wait("c1", "e1"); got != 3 {
		t.Fatalf("e1 exit %d after its pid's next exit, want 3", got)
	}
	wantEvents(t, h.flushed(), []string{
		"/tasks/create c1", "/tasks/start c1",
		"/tasks/exec-added c1/e1", "/tasks/exec-started c1/e1", "/tasks/exit c1/e1 3",
		"/tasks/exec-added c1/e2", "/tasks/exec-started c1/e2", "/tasks/exit c1/e2 4",
	})
}

// runsc sub-containers: every init has the sandbox's pid, so the reaper
// says nothing about them; their exits come from WaitInit, one container
// at a time, and still after their execs' exits.
func TestInitWaiterExitsComeFromWait(t *testing.T) {
	const sandbox = 500
	h := newWaiterHarness(t, sandbox)
	for _, id := range []string{"a", "b"} {
		if pid := h.create(id); pid != sandbox {
			t.Fatalf("%s: pid %d, want the sandbox's %d", id, pid, sandbox)
		}
		h.start(id, "")
	}
	h.exec("a", "e1")
	e1 := int(h.start("a", "e1"))
	// a's init ends first: its exit waits for e1's.
	h.initExit("a", 3)
	h.waitInitExitSeen("a")
	if _, err := h.svc.Exec(h.ctx, &taskAPI.ExecProcessRequest{ID: "a", ExecID: "e2", Spec: execSpec(t)}); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("exec after a's init exit: %v, want FailedPrecondition", err)
	}
	h.exit(e1, 137)
	if got := h.wait("a", ""); got != 3 {
		t.Fatalf("a exit %d, want 3", got)
	}
	st, err := h.svc.State(h.ctx, &taskAPI.StateRequest{ID: "b"})
	if err != nil || st.Status.String() != "RUNNING" {
		t.Fatalf("b after a's exit: %v %v, want running", st, err)
	}
	// b's exec gets e1's recycled pid; its exit is the exec's, not b's.
	h.exec("b", "e3")
	if got := int(h.start("b", "e3")); got != e1 {
		t.Fatalf("the fake did not recycle pid %d (e3 got %d)", e1, got)
	}
	h.exit(e1, 0)
	if got := h.wait("b", "e3"); got != 0 {
		t.Fatalf("e3 exit %d", got)
	}
	h.initExit("b", 5)
	if got := h.wait("b", ""); got != 5 {
		t.Fatalf("b exit %d, want 5", got)
	}
	wantEvents(t, h.flushed(), []string{
		"/tasks/create a", "/tasks/start a", "/tasks/create b", "/tasks/start b",
		"/tasks/exec-added a/e1", "/tasks/exec-started a/e1", "/tasks/exit a/e1 137", "/tasks/exit a/a 3",
		"/tasks/exec-added b/e3", "/tasks/exec-started b/e3", "/tasks/exit b/e3 0", "/tasks/exit b/b 5",
	})
}

// An init that exits while runsc start is still running: WaitInit returns
// at once, and the exit still follows TaskStart.
func TestInitWaiterExitDuringStart(t *testing.T) {
	h := newWaiterHarness(t, 500)
	h.create("a")
	h.backend.onStart = func(int) { h.initExit("a", 7) }
	h.start("a", "")
	if got := h.wait("a", ""); got != 7 {
		t.Fatalf("a exit %d, want 7", got)
	}
	wantEvents(t, h.flushed(), []string{"/tasks/create a", "/tasks/start a", "/tasks/exit a/a 7"})
}

// The sandbox's pid in the reaper's reports (the sandbox process died) is
// no sub-container's exit: those come from WaitInit only.
func TestInitWaiterIgnoresTheSandboxPidsReaperExit(t *testing.T) {
	const sandbox = 500
	h := newWaiterHarness(t, sandbox)
	h.create("a")
	h.start("a", "")
	h.svc.HandleExit(runtimeExit(sandbox, 9))
	st, err := h.svc.State(h.ctx, &taskAPI.StateRequest{ID: "a"})
	if err != nil || st.Status.String() != "RUNNING" {
		t.Fatalf("a after the reaper reported the sandbox pid: %v %v, want running", st, err)
	}
	h.initExit("a", 137)
	if got := h.wait("a", ""); got != 137 {
		t.Fatalf("a exit %d, want 137", got)
	}
	wantEvents(t, h.flushed(), []string{"/tasks/create a", "/tasks/start a", "/tasks/exit a/a 137"})
}

func runtimeExit(pid, status int) runtime.Exit {
	return runtime.Exit{Pid: pid, Status: status, Timestamp: time.Now()}
}

// waitInitExitSeen waits until the service learnt of id's init exit
// (WaitInit returned on the tracker's goroutine).
func (h *harness) waitInitExitSeen(id string) {
	h.t.Helper()
	c, err := h.svc.getContainer(id)
	if err != nil {
		h.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !h.svc.exits.initExited(c) {
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: the init's exit never reached the tracker", id)
		}
		time.Sleep(time.Millisecond)
	}
}
