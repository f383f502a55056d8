package integration

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// withSlowPrestartHook adds a prestart hook (run by the runtime while it
// creates the container, on the host) that touches started and then sleeps
// for d.
func withSlowPrestartHook(started string, d time.Duration) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Hooks == nil {
			s.Hooks = &specs.Hooks{}
		}
		hook := specs.Hook{Path: "/bin/sh", Args: []string{"sh", "-c", `touch "$0"; sleep "$1"`, started, strconv.Itoa(int(d.Seconds()))}}
		s.Hooks.Prestart = append(s.Hooks.Prestart, hook) //nolint:staticcheck // the hook issue 19 names; runc runs it with createRuntime
		return nil
	}
}

// TestSlowHookHoldsBackNoExit (issue 19, finding 3): libcontainer holds
// the shim's reaper gate while it waits for a container's hooks. While
// container A's create waits on a 10 s prestart hook, container B in the
// same shim exits: its exit reaches the client within a second of its
// kill, and an exec in container C completes, both while A's hook still
// runs; A's create then succeeds (no status of libcontainer's children
// was taken).
func TestSlowHookHoldsBackNoExit(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		e.skipOn(t, "runsc", "the reaper gate is libcontainer's (runc backend); runsc's sandboxed processes are not the shim's children")
		ctx := testContext(t)
		group := oci.WithAnnotations(map[string]string{"io.containerd.custom.v2.group": containerID(t, "group")})
		idA, idB, idC := containerID(t, "a"), containerID(t, "b"), containerID(t, "c")
		b := newContainer(t, e, idB, nil, oci.WithProcessArgs("sleep", "1000"), group)
		taskB, statusB := startTask(t, b, nil)
		c := newContainer(t, e, idC, nil, oci.WithProcessArgs("sleep", "1000"), group)
		taskC, _ := startTask(t, c, nil)

		started := filepath.Join(t.TempDir(), "hook-started")
		const hookTime = 10 * time.Second
		a := newContainer(t, e, idA, nil, oci.WithProcessArgs("sleep", "1000"), group, withSlowPrestartHook(started, hookTime))
		type created struct {
			task client.Task
			err  error
		}
		createdA := make(chan created, 1)
		go func() {
			task, err := a.NewTask(ctx, cio.NullIO)
			createdA <- created{task, err}
		}()
		eventually(t, 30*time.Second, "A's prestart hook runs", func() error {
			_, err := os.Stat(started)
			return err
		})
		stillCreating := func(what string) {
			t.Helper()
			select {
			case r := <-createdA:
				createdA <- r
				t.Fatalf("A's create (a %s hook) ended before %s: it waited for the hook", hookTime, what)
			default:
			}
		}

		killed := time.Now()
		if err := taskB.Kill(ctx, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		st := waitExit(t, statusB, 30*time.Second)
		if took := time.Since(killed); took > time.Second {
			t.Fatalf("B's exit reached the client %s after its kill while A's create waited on its hook; want within 1s", took.Round(time.Millisecond))
		}
		if st.ExitCode() != 137 {
			t.Fatalf("B's exit status %d, want 137", st.ExitCode())
		}
		stillCreating("B's exit was delivered")
		if _, err := taskB.Delete(ctx); err != nil {
			t.Fatalf("delete B: %v", err)
		}

		// A new exec does not queue behind the reaper either.
		if code := execToExit(t, c, taskC, "during-hook", nil, "true"); code != 0 {
			t.Fatalf("exec in C: exit %d", code)
		}
		stillCreating("the exec in C completed")

		var ca created
		select {
		case ca = <-createdA:
		case <-time.After(scaled(hookTime + 30*time.Second)):
			t.Fatal("A's create never finished")
		}
		if ca.err != nil {
			t.Fatalf("create A after its slow hook: %v", ca.err)
		}
		statusA, err := ca.task.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := ca.task.Start(ctx); err != nil {
			t.Fatalf("start A: %v", err)
		}
		if err := ca.task.Kill(ctx, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if st := waitExit(t, statusA, 30*time.Second); st.ExitCode() != 137 {
			t.Fatalf("A's exit status %d, want 137", st.ExitCode())
		}
		if _, err := ca.task.Delete(ctx); err != nil {
			t.Fatalf("delete A: %v", err)
		}
	})
}
