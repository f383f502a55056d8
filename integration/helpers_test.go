package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// syncBuffer is a bytes.Buffer safe for the copy goroutines of cio.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitOutput waits until a task's output holds marker: a line the
// container prints once it is ready for what the test does next.
func waitOutput(t *testing.T, out *syncBuffer, marker string, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, "output "+strconv.Quote(marker), func() error {
		if !strings.Contains(out.String(), marker) {
			return fmt.Errorf("output so far %q", out.String())
		}
		return nil
	})
}

// newContainer creates a busybox container on our runtime; it is deleted
// (task first) when the test ends.
func newContainer(t *testing.T, e *env, id string, runtimeOpts any, opts ...oci.SpecOpts) client.Container {
	t.Helper()
	ctx := testContext(t)
	specOpts := append([]oci.SpecOpts{oci.WithImageConfig(e.image)}, opts...)
	c, err := e.client.NewContainer(ctx, id,
		client.WithNewSnapshot(id+"-snapshot", e.image),
		client.WithNewSpec(specOpts...),
		client.WithRuntime(runtimeName, runtimeOpts),
	)
	if err != nil {
		t.Fatalf("new container %s: %v", id, err)
	}
	t.Cleanup(func() { removeContainer(e, id) })
	return c
}

// removeContainer kills and deletes whatever is left of a container.
func removeContainer(e *env, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = nsCtx(ctx)
	c, err := e.client.LoadContainer(ctx, id)
	if err != nil {
		return
	}
	if task, err := c.Task(ctx, nil); err == nil {
		task.Kill(ctx, syscall.SIGKILL, client.WithKillAll)
		if ch, err := task.Wait(ctx); err == nil {
			select {
			case <-ch:
			case <-time.After(10 * time.Second):
			}
		}
		task.Delete(ctx, client.WithProcessKill)
	}
	c.Delete(ctx, client.WithSnapshotCleanup)
}

func nsCtx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, namespace)
}

// outputs collects a task's stdout and stderr.
type outputs struct {
	stdout, stderr syncBuffer
}

func (o *outputs) creator() cio.Creator {
	return cio.NewCreator(cio.WithStreams(nil, &o.stdout, &o.stderr))
}

// runToExit creates, starts and waits for a task, deletes it and returns
// its exit status and outputs.
func runToExit(t *testing.T, c client.Container) (uint32, *outputs) {
	t.Helper()
	var out outputs
	task, statusC := startTask(t, c, out.creator())
	ctx := testContext(t)
	var st client.ExitStatus
	select {
	case st = <-statusC:
	case <-ctx.Done():
		t.Fatal("timed out waiting for the task to exit")
	}
	if _, err := task.Delete(ctx); err != nil {
		t.Fatalf("delete: %v", err)
	}
	return st.ExitCode(), &out
}

// startTask creates and starts a long-running task.
func startTask(t *testing.T, c client.Container, creator cio.Creator) (client.Task, <-chan client.ExitStatus) {
	t.Helper()
	ctx := testContext(t)
	if creator == nil {
		creator = cio.NullIO
	}
	task, err := c.NewTask(ctx, creator)
	if err != nil {
		t.Fatalf("new task: %v", err)
	}
	statusC, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatalf("start: %v", err)
	}
	return task, statusC
}

// execToExit runs args as exec id in task, with the rest of the container's
// process spec, waits for it, deletes it and returns its exit code.
func execToExit(t *testing.T, c client.Container, task client.Task, id string, creator cio.Creator, args ...string) uint32 {
	t.Helper()
	ctx := testContext(t)
	spec, err := c.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ps := *spec.Process
	ps.Args = args
	if creator == nil {
		creator = cio.NullIO
	}
	p, err := task.Exec(ctx, id, &ps, creator)
	if err != nil {
		t.Fatalf("exec %s: %v", id, err)
	}
	ch, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatalf("start exec %s: %v", id, err)
	}
	st := waitExit(t, ch, 30*time.Second)
	if _, err := p.Delete(ctx); err != nil {
		t.Fatalf("delete exec %s: %v", id, err)
	}
	return st.ExitCode()
}

func waitExit(t *testing.T, ch <-chan client.ExitStatus, timeout time.Duration) client.ExitStatus {
	t.Helper()
	timeout = scaled(timeout)
	select {
	case st := <-ch:
		return st
	case <-time.After(timeout):
		t.Fatalf("no exit within %s", timeout)
	}
	return client.ExitStatus{}
}

func wantKind(t *testing.T, what string, err error, is func(error) bool, kind string) {
	t.Helper()
	if err == nil || !is(err) {
		t.Fatalf("%s: want %s error, got %v", what, kind, err)
	}
}

// check fails the test at once on a setup step's error.
func check(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(scaled(timeout))
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// shimsFor lists shim processes serving task id (as first task of its group).
func shimsFor(id string) []harness.Proc {
	ps, _ := harness.ProcessesMatching(shimName + " -namespace " + namespace + " -id " + id + " ")
	return ps
}

// assertNothingLeft checks that a deleted container left no shim, no
// mounts, no runc state, no cgroup and no processes behind.
func assertNothingLeft(t *testing.T, e *env, id string) {
	t.Helper()
	eventually(t, 30*time.Second, "no shim left for "+id, func() error {
		if ps := shimsFor(id); len(ps) > 0 {
			return fmt.Errorf("shim still running: %+v", ps)
		}
		return nil
	})
	mounts, err := harness.MountsUnder(e.d.StateDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if strings.Contains(m, "/"+id+"/") || strings.HasSuffix(m, "/"+id+"/rootfs") {
			t.Errorf("mount left behind: %s", m)
		}
	}
	if _, err := os.Stat(filepath.Join(e.stateRoot(), namespace, id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s state left behind for %s: %v", e.backend, id, err)
	}
	// The backend removes a container's cgroup at delete; the shim may still
	// be on its way out.
	eventually(t, 30*time.Second, "no cgroup left for "+id, func() error {
		if left := cgroupsLeft(id); len(left) > 0 {
			return fmt.Errorf("%s left behind: %v", cgroupMode(), left)
		}
		return nil
	})
}

// logOnFailure logs containerd's log lines that name id if t fails, so a
// failure in CI shows the shim's side (the daemon's tail is only logged
// when the daemon stops).
func logOnFailure(t *testing.T, e *env, id string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		data, err := os.ReadFile(e.d.LogPath())
		if err != nil {
			t.Logf("read containerd log: %v", err)
			return
		}
		var lines []string
		for _, l := range strings.Split(string(data), "\n") {
			if strings.Contains(l, id) {
				lines = append(lines, l)
			}
		}
		if len(lines) > 80 {
			lines = lines[len(lines)-80:]
		}
		t.Logf("containerd log lines naming %s:\n%s", id, strings.Join(lines, "\n"))
	})
}
