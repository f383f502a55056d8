package task

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// failingDelete is the fake backend whose Delete fails the first time, as
// runc's does when the container's cgroup will not go yet (EBUSY): the
// init may still run.
type failingDelete struct {
	*fakeBackend
	failed atomic.Bool
}

func (f *failingDelete) Delete(ctx context.Context, id string, force bool) error {
	if f.failed.CompareAndSwap(false, true) {
		return fmt.Errorf("destroy container %s: remove cgroup: device or resource busy", id)
	}
	return f.fakeBackend.Delete(ctx, id, force)
}

// A created task whose delete fails is still there, still created: no exit
// is recorded (Wait keeps waiting, as the init may still run), and a
// retried delete succeeds and reports the kill.
func TestDeleteCreatedTaskFailedDeleteRecordsNoExit(t *testing.T) {
	h := newHarness(t)
	// The same harness, on a service whose backend is the failing one.
	if err := h.svc.Close(); err != nil {
		t.Fatal(err)
	}
	fb := &failingDelete{fakeBackend: h.backend}
	h.svc = NewService(h.ctx, Config{
		Namespace: "test",
		Events:    h.sender,
		Backends: runtime.NewRegistry(runtime.Registration{
			Name:     "fake",
			Settings: func() oci.Section { return &fakeSettings{} },
			New:      func(oci.Section, *runtime.Container) (runtime.Backend, error) { return fb, nil },
		}),
	})
	h.create("c1")
	// What Wait blocks on, taken before any delete: a Wait request made
	// in a goroutine could look the task up only after the retried delete
	// removed it (NotFound, as containerd would get).
	_, waiting, err := h.svc.getProcess("c1", "")
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan *taskAPI.WaitResponse, 1)
	go func() {
		<-waiting.exited
		i := waiting.info()
		waited <- &taskAPI.WaitResponse{ExitStatus: uint32(i.status)}
	}()
	// A Wait made now keeps waiting: the task has not exited.
	ctx, cancel := context.WithTimeout(h.ctx, 50*time.Millisecond)
	_, werr := h.svc.Wait(ctx, &taskAPI.WaitRequest{ID: "c1"})
	cancel()
	if !errors.Is(werr, context.DeadlineExceeded) {
		t.Fatalf("wait before any delete: %v, want it still waiting", werr)
	}

	if _, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c1"}); err == nil {
		t.Fatal("delete succeeded although the backend's delete failed")
	}
	_, p, err := h.svc.getProcess("c1", "")
	if err != nil {
		t.Fatalf("task gone after a failed delete: %v", err)
	}
	// setExited closes exited in the delete call itself: checked now, an
	// exit recorded by the failed delete cannot be missed.
	select {
	case <-p.exited:
		t.Fatalf("exit recorded (status %d) although the backend's delete failed: Wait returns while the init may run", p.info().status)
	default:
	}
	st, err := h.svc.State(h.ctx, &taskAPI.StateRequest{ID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Status.String(); got != "CREATED" {
		t.Fatalf("state after a failed delete: %s, want CREATED", got)
	}

	resp, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: "c1"})
	if err != nil {
		t.Fatalf("retried delete: %v", err)
	}
	if resp.ExitStatus != 137 {
		t.Fatalf("retried delete: exit status %d, want 137", resp.ExitStatus)
	}
	if w := <-waited; w == nil || w.ExitStatus != 137 {
		t.Fatalf("wait after the retried delete: %v, want exit status 137", w)
	}
	wantEvents(t, h.flushed(), []string{"/tasks/create c1", "/tasks/delete c1"})
}
