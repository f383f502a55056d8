package integration

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/api/services/tasks/v1"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// TestCheckpointRestore: a task checkpointed with criu is restored into a
// new container and carries on from where it was.
func TestCheckpointRestore(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		if e.backend == "runc" {
			_, err := exec.LookPath("criu")
			harness.RequireDep(t, "criu (scripts/deps.sh installs it)", err)
		}
		if e.backend == "runc" {
			if v, kernel, old := criuTooOld(t); old {
				t.Skipf("criu %s cannot run on kernel %s (TestCheckpointOldCriu checks the error)", v, kernel)
			}
		}
		// runsc checkpoints without criu.
		criuWorks := e.backend == "runsc" || exec.Command("criu", "check").Run() == nil
		ctx := testContext(t)
		id := containerID(t, "")
		// Counts up in a file, so the restored process shows it resumed.
		c := newContainer(t, e, id, nil, oci.WithProcessArgs("sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done"))
		task, statusC := startTask(t, c, nil)
		time.Sleep(500 * time.Millisecond)
		checkpoint, err := c.Checkpoint(ctx, id+"-checkpoint", client.WithCheckpointRuntime, client.WithCheckpointRW, client.WithCheckpointTask)
		if !criuWorks {
			// criu is installed but cannot run on this kernel: the error
			// must say so, and the task must be unharmed.
			if err == nil || !strings.Contains(err.Error(), "criu") {
				t.Fatalf("checkpoint with a broken criu: %v", err)
			}
			if st, err := task.Status(ctx); err != nil || st.Status != client.Running {
				t.Fatalf("task after failed checkpoint: %v %v", st, err)
			}
			out, _ := exec.Command("criu", "check").CombinedOutput()
			t.Skipf("criu check fails on this host, restore not tested: %s", lastLine(string(out)))
		}
		if err != nil {
			t.Fatalf("checkpoint: %v%s", err, criuLogTail(err, 40))
		}
		t.Cleanup(func() { _ = e.client.ImageService().Delete(nsCtx(ctx), checkpoint.Name()) })
		// The checkpoint left the task running (containerd's default).
		if err := task.Kill(ctx, 9); err != nil {
			t.Fatal(err)
		}
		waitExit(t, statusC, 30*time.Second)
		if _, err := task.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil {
			t.Fatal(err)
		}
		c, err = e.client.Restore(ctx, id, checkpoint, client.WithRestoreImage, client.WithRestoreSpec, client.WithRestoreRuntime, client.WithRestoreRW)
		if err != nil {
			t.Fatalf("restore container: %v", err)
		}
		task, err = c.NewTask(ctx, cio.NullIO, client.WithTaskCheckpoint(checkpoint))
		if err != nil {
			t.Fatalf("restore task: %v", err)
		}
		statusC, _ = task.Wait(ctx)
		if err := task.Start(ctx); err != nil {
			t.Fatalf("start restored task: %v", err)
		}
		// It carries on counting from the checkpoint: the file grows.
		count := func(execID string) int {
			var out outputs
			execToExit(t, c, task, execID, out.creator(), "cat", "/tmp/count")
			n, _ := strconv.Atoi(strings.TrimSpace(out.stdout.String()))
			return n
		}
		first := count("count1")
		time.Sleep(scaled(time.Second))
		if second := count("count2"); first == 0 || second <= first {
			ps, _ := exec.Command("ps", "-eo", "pid,ppid,stat,args").CombinedOutput()
			t.Fatalf("restored counter %d, then %d: the restored process does not run\n%s", first, second, ps)
		}
		if err := task.Kill(ctx, 9); err != nil {
			t.Fatalf("kill the restored task: %v", err)
		}
		waitExit(t, statusC, 30*time.Second)
	})
}

// TestCheckpointOldCriu: where CRIU is too old for the kernel (before 4.1
// on 6.13 and later: the vvar_vclock mapping), the runc backend refuses a
// checkpoint up front, FailedPrecondition naming CRIU's version, the kernel
// and the fix rather than a CRIU log, and the container carries on,
// neither frozen nor stopped. Both drivers: libcontainer and runc's CLI.
func TestCheckpointOldCriu(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		e.skipOn(t, "runsc", "runsc checkpoints without criu")
		_, err := exec.LookPath("criu")
		harness.RequireDep(t, "criu (scripts/deps.sh installs it)", err)
		criuVersion, kernel, old := criuTooOld(t)
		if !old {
			t.Skipf("criu %s can run on kernel %s: TestCheckpointRestore covers checkpoints", criuVersion, kernel)
		}
		for _, mode := range []string{"in-process", "cli"} {
			t.Run(mode, func(t *testing.T) {
				ctx := testContext(t)
				id := containerID(t, "")
				opts := &runtimeoptions.Options{ConfigBody: []byte("[runc]\nmode = \"" + mode + "\"\n")}
				c := newContainer(t, e, id, opts, oci.WithProcessArgs("sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done"))
				task, statusC := startTask(t, c, nil)
				// As users do: the client pauses the task around the call.
				_, err := c.Checkpoint(ctx, id+"-checkpoint", client.WithCheckpointRuntime, client.WithCheckpointRW, client.WithCheckpointTask)
				wantKind(t, "checkpoint", err, errdefs.IsFailedPrecondition, "FailedPrecondition")
				t.Logf("checkpoint error: %v", err)
				for _, want := range []string{"criu " + criuVersion, "kernel " + kernel, "4.1 or later", "vvar_vclock"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("checkpoint error lacks %q: %v", want, err)
					}
				}
				if strings.Contains(err.Error(), "criu log") || strings.Contains(err.Error(), "dump.log") {
					t.Errorf("checkpoint error names a log: %v", err)
				}
				// Straight to containerd's task service, which pauses
				// nothing: the shim itself must leave the task as it was.
				_, err = e.client.TaskService().Checkpoint(ctx, &tasks.CheckpointTaskRequest{ContainerID: id})
				wantKind(t, "task service checkpoint", errgrpc.ToNative(err), errdefs.IsFailedPrecondition, "FailedPrecondition")
				st, err := task.Status(ctx)
				if err != nil || st.Status != client.Running {
					t.Fatalf("task after failed checkpoints: %v %v", st, err)
				}
				// Running, not just reported so: the counter moves on.
				count := func() int {
					var out outputs
					execToExit(t, c, task, fmt.Sprint("count-", time.Now().UnixNano()), out.creator(), "cat", "/tmp/count")
					n, _ := strconv.Atoi(strings.TrimSpace(out.stdout.String()))
					return n
				}
				first := count()
				eventually(t, 10*time.Second, "the counter to move on", func() error {
					if n := count(); n <= first {
						return fmt.Errorf("counter %d, was %d", n, first)
					}
					return nil
				})
				check(t, task.Kill(ctx, syscall.SIGKILL))
				waitExit(t, statusC, 30*time.Second)
				_, err = task.Delete(ctx)
				check(t, err)
			})
		}
	})
}

// criuTooOld reports criu's version and the kernel release, and whether
// that CRIU is too old for the kernel: kernels from 6.13 map
// [vvar_vclock], which CRIU before 4.1 cannot handle (criu PR #2539).
// Parsed here independently of the shim's own preflight.
func criuTooOld(t *testing.T) (criuVersion, kernel string, old bool) {
	t.Helper()
	out, err := exec.Command("criu", "--version").Output()
	if err != nil {
		t.Fatalf("criu --version: %v", err)
	}
	m := regexp.MustCompile(`(?m)^Version:\s*(\d+)\.(\d+)((?:\.\d+)?)`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("criu --version printed %q", out)
	}
	var u unix.Utsname
	check(t, unix.Uname(&u))
	kernel = unix.ByteSliceToString(u.Release[:])
	k := regexp.MustCompile(`^(\d+)\.(\d+)`).FindStringSubmatch(kernel)
	if k == nil {
		t.Fatalf("kernel release %q", kernel)
	}
	num := func(s string) int { n, _ := strconv.Atoi(s); return n }
	cmaj, cmin, kmaj, kmin := num(m[1]), num(m[2]), num(k[1]), num(k[2])
	newKernel := kmaj > 6 || kmaj == 6 && kmin >= 13
	oldCriu := cmaj < 4 || cmaj == 4 && cmin < 1
	return m[1] + "." + m[2] + m[3], kernel, newKernel && oldCriu
}

// criuLogTail is the end of the criu log an error names ("criu log: PATH"),
// for the reader of a failed run (the log lives in the daemon's state dir).
func criuLogTail(err error, n int) string {
	m := regexp.MustCompile(`criu log: ([^ )]+)`).FindStringSubmatch(err.Error())
	if m == nil {
		return ""
	}
	data, rerr := os.ReadFile(m[1])
	if rerr != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "\n--- end of " + m[1] + ":\n" + strings.Join(lines, "\n")
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
