package task

import (
	"fmt"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
)

// within fails the test if fn does not return in time: a hang here is a
// deadlock or a lock held across a runtime command.
func within(t *testing.T, d time.Duration, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %s (deadlock, or a lock held across a runtime command)", what, d)
	}
}

// Start racing Delete on a created task must not deadlock.
func TestRaceStartDeleteOnCreatedTask(t *testing.T) {
	h := newHarness(t)
	for i := range 300 {
		id := fmt.Sprintf("c%d", i)
		pid := h.create(id)
		var startErr, deleteErr error
		within(t, 10*time.Second, "start racing delete", func() {
			done := make(chan struct{})
			go func() {
				_, startErr = h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: id})
				close(done)
			}()
			_, deleteErr = h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: id})
			<-done
		})
		switch {
		case startErr == nil && errdefs.IsFailedPrecondition(deleteErr):
			h.exit(pid, 0)
			within(t, 10*time.Second, "delete after exit", func() {
				if _, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: id}); err != nil {
					t.Errorf("wait: %v", err)
				}
				if _, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: id}); err != nil {
					t.Errorf("delete: %v", err)
				}
			})
		case deleteErr == nil && (errdefs.IsNotFound(startErr) || errdefs.IsFailedPrecondition(startErr)):
		default:
			t.Fatalf("round %d: start: %v, delete: %v", i, startErr, deleteErr)
		}
	}
}

// Exec, State and Delete racing on a task that never started, or once its
// init has exited, must not deadlock, and no exec may be added to a task
// whose init is gone.
func TestRaceExecStateDeleteAfterInitExit(t *testing.T) {
	h := newHarness(t)
	for i := range 600 {
		id := fmt.Sprintf("c%d", i)
		pid := h.create(id)
		if i%2 == 0 {
			if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: id}); err != nil {
				t.Fatal(err)
			}
			h.exit(pid, 0)
		}
		within(t, 10*time.Second, "exec, state and delete racing", func() {
			errs := make(chan error, 3)
			go func() {
				_, err := h.svc.Exec(h.ctx, &taskAPI.ExecProcessRequest{ID: id, ExecID: "e", Spec: execSpec(t)})
				if err == nil && i%2 == 1 {
					// A created task takes execs until it is deleted.
					errs <- nil
					return
				}
				refused := errdefs.IsFailedPrecondition(err) || errdefs.IsNotFound(err)
				if err == nil || !refused {
					err = fmt.Errorf("exec after init exit: %w, want FailedPrecondition or NotFound", err)
				} else {
					err = nil
				}
				errs <- err
			}()
			go func() {
				_, err := h.svc.State(h.ctx, &taskAPI.StateRequest{ID: id})
				if errdefs.IsNotFound(err) {
					err = nil
				}
				errs <- err
			}()
			go func() {
				if i%2 == 0 {
					if _, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: id}); err != nil {
						errs <- fmt.Errorf("wait: %w", err)
						return
					}
				}
				_, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: id})
				errs <- err
			}()
			for range 3 {
				if err := <-errs; err != nil {
					t.Errorf("round %d: %v", i, err)
				}
			}
		})
	}
}

// While a runtime command runs for a task (a slow delete), State, Pids and
// Connect of that task answer at once: containerd gives State 2 s.
func TestStateDoesNotWaitForRuntimeCommands(t *testing.T) {
	h := newHarness(t)
	pid := h.create("c1")
	if _, err := h.svc.Start(h.ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	h.exit(pid, 0)
	if _, err := h.svc.Wait(h.ctx, &taskAPI.WaitRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}

	release := make(chan struct{})
	entered := make(chan struct{})
	h.backend.onDelete = func() { close(entered); <-release }
	deleted := make(chan error, 1)
	go func() {
		_, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c1"})
		deleted <- err
	}()
	<-entered
	within(t, 2*time.Second, "State during a runtime delete", func() {
		st, err := h.svc.State(h.ctx, &taskAPI.StateRequest{ID: "c1"})
		if err != nil || st.Pid != uint32(pid) {
			t.Errorf("state: %v %v", st, err)
		}
	})
	within(t, 2*time.Second, "Pids during a runtime delete", func() {
		if _, err := h.svc.Pids(h.ctx, &taskAPI.PidsRequest{ID: "c1"}); err != nil {
			t.Errorf("pids: %v", err)
		}
	})
	within(t, 2*time.Second, "Connect during a runtime delete", func() {
		if _, err := h.svc.Connect(h.ctx, &taskAPI.ConnectRequest{ID: "c1"}); err != nil {
			t.Errorf("connect: %v", err)
		}
	})
	close(release)
	if err := <-deleted; err != nil {
		t.Fatal(err)
	}
}
