package task

import (
	"context"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
)

// trackerState is what the exit tracker keeps about one task, read under
// its lock.
func (h *harness) trackerState(c *container) (running []int, execs int, countedExecs, countWaiter, initExited bool) {
	t := h.svc.exits
	t.mu.Lock()
	defer t.mu.Unlock()
	for pid, ps := range t.running {
		for _, p := range ps {
			if p.c == c {
				running = append(running, pid)
			}
		}
	}
	execs, countedExecs = t.runningExecs[c]
	_, countWaiter = t.execCountSubscribers[c]
	return running, execs, countedExecs, countWaiter, t.initExits[c]
}

// Issue 19, finding 6: a Start refused because the init has exited must
// not put the dead pid back among the running, where the next process to
// get that pid would have its exit taken for this init's.
func TestRefusedStartOfExitedInitLeavesNoRunningPid(t *testing.T) {
	h := newHarness(t)
	pid := h.create("c1")
	c, err := h.svc.getContainer("c1")
	if err != nil {
		t.Fatal(err)
	}
	h.exit(pid, 137) // killed before it was started
	if _, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1"}); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("start of an exited init: want FailedPrecondition, got %v", err)
	}
	if running, _, _, _, _ := h.trackerState(c); len(running) > 0 {
		t.Fatalf("after a refused start, the exited init's pid is among the running again: %v", running)
	}
	if _, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if running, _, _, _, _ := h.trackerState(c); len(running) > 0 {
		t.Fatalf("a deleted task's pid is among the running: %v", running)
	}
}

// Issue 19, finding 6: a refused Start of a running init keeps its pid
// among the running (preStart took it out), so its exit still goes out.
func TestRefusedStartOfRunningInitKeepsItsExit(t *testing.T) {
	h := newHarness(t)
	pid := h.create("c1")
	if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1"}); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("second start: want FailedPrecondition, got %v", err)
	}
	h.exit(pid, 3)
	w, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "c1"})
	if err != nil || w.ExitStatus != 3 {
		t.Fatalf("wait: %v %v", w, err)
	}
}

// Issue 19, finding 6: deleting a task drops its exec bookkeeping, also
// when its init's exit was still waiting for an exec (a created task with
// a running exec, deleted: the init's exit is recorded by the delete). The
// waiting goroutine ends, and the exec's late exit recreates nothing.
func TestDeletedTaskLeavesNoExecBookkeeping(t *testing.T) {
	h := newHarness(t)
	initPid := h.create("c1")
	c, err := h.svc.getContainer("c1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Exec(h.ctx, &taskAPI.ExecProcessRequest{ID: "c1", ExecID: "e1", Spec: execSpec(t)}); err != nil {
		t.Fatal(err)
	}
	st, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1", ExecID: "e1"})
	if err != nil {
		t.Fatal(err)
	}
	h.exit(initPid, 137) // its exit waits for e1's
	if _, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, n, counted, waiter, exited := h.trackerState(c); counted || waiter || exited {
		t.Fatalf("deleted task still tracked: running execs %d (entry %v), exec count waiter %v, init exited %v", n, counted, waiter, exited)
	}
	h.exit(int(st.Pid), 137)
	if _, n, counted, waiter, exited := h.trackerState(c); counted || waiter || exited {
		t.Fatalf("a deleted task's exec exit recreated its bookkeeping: running execs %d (entry %v), exec count waiter %v, init exited %v", n, counted, waiter, exited)
	}
}

// Issue 19, finding 6: execs that ran and exited leave no count behind
// when the task is deleted without its init's exit going through the
// tracker (a created task is deleted, its exit recorded by the delete).
func TestDeletedCreatedTaskLeavesNoExecCount(t *testing.T) {
	h := newHarness(t)
	h.create("c1")
	c, err := h.svc.getContainer("c1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Exec(h.ctx, &taskAPI.ExecProcessRequest{ID: "c1", ExecID: "e1", Spec: execSpec(t)}); err != nil {
		t.Fatal(err)
	}
	st, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1", ExecID: "e1"})
	if err != nil {
		t.Fatal(err)
	}
	h.exit(int(st.Pid), 0)
	ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
	defer cancel()
	if _, err := h.svc.Wait(ctx, &taskAPI.WaitRequest{ID: "c1", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, n, counted, _, _ := h.trackerState(c); counted {
		t.Fatalf("deleted task still has a running-exec count: %d", n)
	}
}

// An init whose wait failed (runsc wait on a sandbox that died) is
// reported killed, at the time it was found out: not year 1, which
// containerd would keep as the task's end (CRI's finishedAt; seen on a
// gVisor Pod whose sandbox was OOM-killed).
func TestFailedInitWaitReportsNow(t *testing.T) {
	h := newWaiterHarness(t, 4242)
	h.create("c1")
	h.backend.mu.Lock()
	delete(h.backend.initExits, "c1") // WaitInit fails: nothing to wait on
	h.backend.mu.Unlock()
	before := time.Now()
	h.start("c1", "")
	w, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if w.ExitStatus != 137 {
		t.Errorf("exit status %d, want 137", w.ExitStatus)
	}
	if at := w.ExitedAt.AsTime(); at.Before(before.Add(-time.Second)) || at.After(time.Now().Add(time.Second)) {
		t.Errorf("exited at %v, want about now (%v)", at, before)
	}
}
