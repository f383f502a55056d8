package integration

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"

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
			t.Fatalf("checkpoint: %v", err)
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
		var out outputs
		execToExit(t, c, task, "count", out.creator(), "cat", "/tmp/count")
		if n := strings.TrimSpace(out.stdout.String()); n == "" || n == "0" {
			t.Fatalf("restored counter %q", n)
		}
		task.Kill(ctx, 9)
		waitExit(t, statusC, 30*time.Second)
	})
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
