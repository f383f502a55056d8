package integration

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// forEachOwnDaemon runs a test that needs a daemon of its own, for every
// containerd line and backend.
func forEachOwnDaemon(t *testing.T, fn func(t *testing.T, like *env)) {
	t.Helper()
	requireSuite(t)
	for _, e := range daemons {
		t.Run(e.name(), func(t *testing.T) { fn(t, e) })
	}
}

// TestContainerdRestart: tasks keep running while containerd restarts; the
// restarted daemon reconnects to their shims and still gets their exit
// codes, including an exit that happened while it was down.
func TestContainerdRestart(t *testing.T) {
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		e := ownDaemon(t, like, nil)
		ctx := testContext(t)
		running := envInt("RESTART_TASKS", 5)
		var ids []string
		pids := map[string]uint32{}
		for i := 0; i < running; i++ {
			id := containerID(t, fmt.Sprint(i))
			c := newContainer(t, e, id, nil, oci.WithProcessArgs("sh", "-c", "trap 'exit 7' TERM; echo trapped; while :; do sleep 0.1; done"))
			var out outputs
			task, _ := startTask(t, c, out.creator())
			waitOutput(t, &out.stdout, "trapped", 30*time.Second)
			ids = append(ids, id)
			pids[id] = task.Pid()
		}
		exitsWhileDown := containerID(t, "exits")
		// This one exits on a line the test sends with containerd down.
		stdin, feed := io.Pipe()
		var short outputs
		c := newContainer(t, e, exitsWhileDown, nil, oci.WithProcessArgs("sh", "-c", "echo waiting; read line; echo exiting; exit 3"))
		shortTask, _ := startTask(t, c, cio.NewCreator(cio.WithStreams(stdin, &short.stdout, &short.stderr)))
		waitOutput(t, &short.stdout, "waiting", 30*time.Second)

		if err := e.d.Stop(); err != nil {
			t.Fatal(err)
		}
		if _, err := feed.Write([]byte("go\n")); err != nil {
			t.Fatal(err)
		}
		feed.Close()
		// The marker that it exited: its stdout closed, which the shim does
		// once the process is gone (the copy reached the pipe's end).
		closed := make(chan struct{})
		go func() { shortTask.IO().Wait(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(scaled(30 * time.Second)):
			t.Fatalf("the short task's stdout still open 30 s after its line (output %q)", short.stdout.String())
		}
		if !strings.Contains(short.stdout.String(), "exiting") {
			t.Fatalf("the short task's stdout closed without its last line: %q", short.stdout.String())
		}
		for id, pid := range pids {
			if err := syscall.Kill(int(pid), 0); err != nil {
				t.Fatalf("%s (pid %d) died with containerd down: %v", id, pid, err)
			}
		}
		if err := e.d.Restart(); err != nil {
			t.Fatal(err)
		}
		e.client = e.d.Client()

		reconnected := 0
		for _, id := range ids {
			task := loadTask(t, e, id)
			st, err := task.Status(ctx)
			if err != nil || st.Status != client.Running || task.Pid() != pids[id] {
				t.Fatalf("%s after restart: %v %v pid %d", id, st, err, task.Pid())
			}
			reconnected++
			statusC, err := task.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := task.Kill(ctx, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if st := waitExit(t, statusC, 30*time.Second); st.ExitCode() != 7 {
				t.Fatalf("%s exit %d after restart, want 7", id, st.ExitCode())
			}
			if _, err := task.Delete(ctx); err != nil {
				t.Fatal(err)
			}
		}
		// containerd removes, as it loads shims, a task that stopped while
		// it was down (no pids, not a sandbox: core/runtime/v2/shim_load.go);
		// the shim must let it clean up completely.
		eventually(t, 30*time.Second, "stopped task cleaned up by containerd", func() error {
			c, err := e.client.LoadContainer(ctx, exitsWhileDown)
			if err != nil {
				return err
			}
			if _, err := c.Task(ctx, nil); err == nil {
				return errors.New("task still there")
			} else if !errdefs.IsNotFound(err) {
				return fmt.Errorf("load task: %w", err)
			}
			return nil
		})
		report(t, fmt.Sprintf("containerd-restart %s reconnected %d/%d running tasks", e.name(), reconnected, running))
		for _, id := range append(ids, exitsWhileDown) {
			assertNothingLeft(t, e, id)
		}
	})
}

func loadTask(t *testing.T, e *env, id string) client.Task {
	t.Helper()
	ctx := testContext(t)
	c, err := e.client.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		t.Fatalf("load task %s: %v", id, err)
	}
	return task
}

// TestShimKilled: when the shim is SIGKILLed, containerd reports the task's
// exit and the shim's "delete" cleans up: no container process, mount,
// runc state or socket is left.
func TestShimKilled(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := testContext(t)
		rec := harness.Record(t, e.client, namespace)
		id := containerID(t, "")
		c := newContainer(t, e, id, nil, oci.WithProcessArgs("sleep", "1000"))
		task, statusC := startTask(t, c, nil)
		shims := shimsFor(id)
		if len(shims) != 1 {
			t.Fatalf("want one shim for %s, got %+v", id, shims)
		}
		socket := socketOf(shims[0])
		if err := syscall.Kill(shims[0].Pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		// The client's Wait breaks with the connection (status 255, as
		// with containerd's runc shim); the exit containerd publishes comes
		// from the shim's "delete" cleanup.
		waitExit(t, statusC, 20*time.Second)
		ev, err := rec.WaitFor(harness.Match(harness.TopicTaskExit, id), scaled(30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if ex := ev.Payload.(*eventtypes.TaskExit); ex.ExitStatus != 137 || ex.Pid != task.Pid() {
			t.Fatalf("TaskExit after shim kill: %+v, want status 137 pid %d", ex, task.Pid())
		}
		task.Delete(ctx)
		eventually(t, 30*time.Second, "container process gone", func() error {
			if err := syscall.Kill(int(task.Pid()), 0); err == nil {
				return fmt.Errorf("pid %d still alive", task.Pid())
			}
			return nil
		})
		assertNothingLeft(t, e, id)
		if socket != "" {
			if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket %s left behind: %v", socket, err)
			}
		}
	})
}

func socketOf(p harness.Proc) string {
	f := strings.Fields(p.Cmdline)
	for i := range f {
		if f[i] == "-socket" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

// TestGrouping: containers with the same group annotation share one shim,
// which outlives the first container and exits after the last.
func TestGrouping(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := testContext(t)
		group := containerID(t, "group")
		var tasks []client.Task
		var ids []string
		for i, ann := range []string{"io.containerd.custom.v2.group", "io.kubernetes.cri.sandbox-id", "io.containerd.custom.v2.group"} {
			id := containerID(t, fmt.Sprint(i))
			ids = append(ids, id)
			annotations := map[string]string{ann: group}
			if ann == "io.kubernetes.cri.sandbox-id" {
				// The custom group annotation wins when both are set.
				annotations["io.containerd.custom.v2.group"] = group
				annotations[ann] = "some-pod"
			}
			c := newContainer(t, e, id, nil, oci.WithProcessArgs("sleep", "1000"), oci.WithAnnotations(annotations))
			task, _ := startTask(t, c, nil)
			tasks = append(tasks, task)
		}
		if n := len(shimsFor(ids[0])); n != 1 {
			t.Fatalf("want 1 shim, got %d", n)
		}
		for _, id := range ids[1:] {
			if n := len(shimsFor(id)); n != 0 {
				t.Fatalf("%s got its own shim", id)
			}
		}
		shim := shimsFor(ids[0])[0]
		// Deleting the first task must not end the shim the others use.
		for i, task := range tasks {
			statusC, _ := task.Wait(ctx)
			task.Kill(ctx, syscall.SIGKILL)
			waitExit(t, statusC, 30*time.Second)
			if _, err := task.Delete(ctx); err != nil {
				t.Fatal(err)
			}
			alive := syscall.Kill(shim.Pid, 0) == nil
			if last := i == len(tasks)-1; !last && !alive {
				t.Fatalf("shim exited with %d tasks left", len(tasks)-1-i)
			}
		}
		eventually(t, 30*time.Second, "grouped shim exits after the last task", func() error {
			if syscall.Kill(shim.Pid, 0) == nil {
				return fmt.Errorf("shim %d still running", shim.Pid)
			}
			return nil
		})
		if s := socketOf(shim); s != "" {
			if _, err := os.Stat(s); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket %s left behind", s)
			}
		}
	})
}
