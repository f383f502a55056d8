package integration

import (
	"bytes"
	"context"
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
	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// TestCheckpointRestore: a running container with state in memory (a
// counter) is checkpointed, then restored on the same containerd and, as
// on another node, on a second containerd (its own root and state: the
// checkpoint image exported and imported as ctr or nerdctl users move
// one), and in both it carries on from where it stopped. On runc through
// libcontainer in the shim and through runc's CLI; on gVisor with runsc's
// own checkpointing. CRIU runs where it can: the cgroup v2 guest (make
// test-cgroup2) has a kernel Debian's CRIU works on.
func TestCheckpointRestore(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		if e.backend == "runc" {
			_, err := exec.LookPath("criu")
			harness.RequireDep(t, "criu (scripts/deps.sh installs it)", err)
			if v, kernel, old := criuTooOld(t); old {
				t.Skipf("criu %s cannot run on kernel %s (TestCheckpointOldCriu checks the error; make test-cgroup2 runs this test)", v, kernel)
			}
			if out, err := exec.Command("criu", "check").CombinedOutput(); err != nil {
				t.Fatalf("criu check fails on this host: %s", lastLine(string(out)))
			}
		}
		modes := map[string]any{"runsc": nil}
		if e.backend == "runc" {
			modes = map[string]any{
				"in-process": nil,
				"cli":        &runtimeoptions.Options{ConfigBody: []byte("[runc]\nmode = \"cli\"\n")},
			}
		}
		second := ownDaemon(t, e, nil) // the "other node", for every mode
		for mode, opts := range modes {
			t.Run(mode, func(t *testing.T) { checkpointRestore(t, e, second, opts) })
		}
	})
}

// counterArgs counts up in /tmp/count after writing a random id to
// /tmp/boot once: a restored process keeps the id and the count it had (a
// fresh start would write a new id and count from 1).
var counterArgs = oci.WithProcessArgs("sh", "-c", "head -c 16 /dev/urandom | md5sum > /tmp/boot; i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done")

func checkpointRestore(t *testing.T, e, second *env, runtimeOpts any) {
	ctx := testContext(t)
	id := containerID(t, "")
	c := newContainer(t, e, id, runtimeOpts, counterArgs)
	task, statusC := startTask(t, c, nil)
	// Counted far enough that a fresh start could not catch up in the
	// checks below.
	deadline := time.Now().Add(scaled(20 * time.Second))
	warm := 0
	for warm < 30 {
		if time.Now().After(deadline) {
			t.Fatal("the counter did not reach 30")
		}
		time.Sleep(scaled(200 * time.Millisecond))
		warm = readCount(t, c, task, "warmup")
	}
	boot := readFile(t, c, task, "boot", "/tmp/boot")
	checkpoint, err := c.Checkpoint(ctx, id+"-checkpoint", client.WithCheckpointRuntime, client.WithCheckpointRW, client.WithCheckpointTask)
	if err != nil {
		t.Fatalf("checkpoint: %v%s", err, criuLogTail(err, 40))
	}
	t.Cleanup(func() { _ = e.client.ImageService().Delete(nsCtx(context.Background()), checkpoint.Name()) })
	// The checkpoint left the task running (containerd's default); what
	// it counts from now on is not in the checkpoint.
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

	t.Run("same containerd", func(t *testing.T) {
		restoreAndCheck(t, e, id, checkpoint, warm, boot)
	})
	t.Run("second containerd", func(t *testing.T) {
		ctx := testContext(t)
		var archive bytes.Buffer
		if err := e.client.Export(ctx, &archive, archiveWithImage(e, checkpoint.Name())); err != nil {
			t.Fatalf("export the checkpoint: %v", err)
		}
		if _, err := second.client.Import(ctx, &archive); err != nil {
			t.Fatalf("import the checkpoint into the second containerd: %v", err)
		}
		moved, err := second.client.GetImage(ctx, checkpoint.Name())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = second.client.ImageService().Delete(nsCtx(context.Background()), moved.Name()) })
		restoreAndCheck(t, second, id, moved, warm, boot)
	})
}

// restoreAndCheck restores checkpoint as a new container id on e and
// checks it carries on from the checkpoint (the same boot id, a count at
// least the one read before the checkpoint, counting), then ends it.
func restoreAndCheck(t *testing.T, e *env, id string, checkpoint client.Image, before int, boot string) {
	ctx := testContext(t)
	c, err := e.client.Restore(ctx, id, checkpoint, client.WithRestoreImage, client.WithRestoreSpec, client.WithRestoreRuntime, client.WithRestoreRW)
	if err != nil {
		t.Fatalf("restore container: %v", err)
	}
	t.Cleanup(func() { _ = c.Delete(nsCtx(context.Background()), client.WithSnapshotCleanup) })
	task, err := c.NewTask(ctx, cio.NullIO, client.WithTaskCheckpoint(checkpoint))
	if err != nil {
		t.Fatalf("restore task: %v%s", err, criuLogTail(err, 40))
	}
	// A failed check must not leave the task running: the id is used again
	// (on the other containerd, in the same runtime state directory).
	t.Cleanup(func() { _, _ = task.Delete(nsCtx(context.Background()), client.WithProcessKill) })
	statusC, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatalf("start restored task: %v", err)
	}
	if got := readFile(t, c, task, "boot2", "/tmp/boot"); got != boot {
		t.Fatalf("boot id %q after the restore, %q before: the process started again", got, boot)
	}
	first := readCount(t, c, task, "count1")
	// Counting on (a restored sandbox may take a moment to run again on a
	// loaded node).
	second, deadline := first, time.Now().Add(scaled(10*time.Second))
	for i := 2; second <= first && time.Now().Before(deadline); i++ {
		time.Sleep(scaled(500 * time.Millisecond))
		second = readCount(t, c, task, fmt.Sprintf("count%d", i))
	}
	if first < before || second <= first {
		t.Fatalf("restored counter %d, then %d (%d before the checkpoint): the restored process did not carry on", first, second, before)
	}
	t.Logf("counter %d before the checkpoint, %d and %d after the restore", before, first, second)
	if err := task.Kill(ctx, 9); err != nil {
		t.Fatalf("kill the restored task: %v", err)
	}
	waitExit(t, statusC, 30*time.Second)
	if _, err := task.Delete(ctx); err != nil {
		t.Fatal(err)
	}
}

// readCount reads the counter file through an exec.
func readCount(t *testing.T, c client.Container, task client.Task, execID string) int {
	t.Helper()
	n, _ := strconv.Atoi(readFile(t, c, task, execID, "/tmp/count"))
	return n
}

// readFile reads a file of the container through an exec.
func readFile(t *testing.T, c client.Container, task client.Task, execID, path string) string {
	t.Helper()
	var out outputs
	execToExit(t, c, task, execID, out.creator(), "cat", path)
	return strings.TrimSpace(out.stdout.String())
}

// archiveWithImage exports one image of e (a checkpoint: an index of
// CRIU's image, the spec, the rw layer) with every blob it holds.
func archiveWithImage(e *env, name string) archive.ExportOpt {
	return archive.WithImage(e.client.ImageService(), name)
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
