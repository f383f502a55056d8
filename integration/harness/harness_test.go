package harness_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

const runtimeName = "io.containerd.custom.v2"

// binDirs returns the containerd bin dirs to test: $CONTAINERD_BIN_DIR alone if
// set, else .tools/containerd/<v>/bin for each v in $CONTAINERD_VERSIONS
// (default "2.4.2 2.2.9").
func binDirs(t *testing.T) map[string]string {
	if dir := os.Getenv("CONTAINERD_BIN_DIR"); dir != "" {
		return map[string]string{filepath.Base(filepath.Dir(dir)): dir}
	}
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	versions := os.Getenv("CONTAINERD_VERSIONS")
	if versions == "" {
		versions = "2.4.2 2.2.9"
	}
	dirs := map[string]string{}
	for _, v := range strings.Fields(versions) {
		dirs[v] = filepath.Join(root, ".tools", "containerd", v, "bin")
	}
	return dirs
}

// TestSmoke runs one container through the stand-in shim
// (containerd-shim-custom-v2 -> containerd-shim-runc-v2) on each containerd version.
func TestSmoke(t *testing.T) {
	harness.RequireDep(t, "root", harness.NeedRoot())
	for version, bin := range binDirs(t) {
		t.Run(version, func(t *testing.T) {
			harness.RequireDep(t, "containerd "+version+" (scripts/deps.sh builds it)", harness.NeedExecutable(filepath.Join(bin, "containerd")))
			shimDir := t.TempDir()
			if err := os.Symlink(filepath.Join(bin, "containerd-shim-runc-v2"), filepath.Join(shimDir, "containerd-shim-custom-v2")); err != nil {
				t.Fatal(err)
			}
			smoke(t, harness.Start(t, harness.Config{ContainerdBinDir: bin, ShimDir: shimDir}))
		})
	}
}

func smoke(t *testing.T, d *harness.Daemon) {
	c := d.Client()
	ns := d.Namespace()
	ctx := namespaces.WithNamespace(context.Background(), ns)

	if out, _, err := d.Ctr("version"); err != nil || !strings.Contains(out, "Server:") {
		t.Fatalf("ctr version: %v\n%s", err, out)
	}
	img := harness.ImportBusybox(t, c, ns)
	rec := harness.Record(t, c, ns)

	// runc's state dir (/run/containerd/runc/<ns>/<id>) is shared by all daemons
	// on the host, so container ids must be unique machine-wide.
	id := fmt.Sprintf("smoke-%d", time.Now().UnixNano())
	code, stdout, stderr := runContainer(ctx, t, c, img, id, "echo hello-from-shim; echo oops >&2; exit 3")
	if code != 3 || stdout != "hello-from-shim\n" || stderr != "oops\n" {
		t.Errorf("exit %d, stdout %q, stderr %q; want 3, %q, %q", code, stdout, stderr, "hello-from-shim\n", "oops\n")
	}

	// TaskExit precedes Delete, so it must be there by now; create, start and
	// exit must be in order.
	if _, err := rec.WaitFor(harness.Match(harness.TopicTaskExit, id), 10*time.Second); err != nil {
		t.Error(err)
	}
	// The stand-in loses /tasks/delete now and then (about 1 in 6 lifecycles
	// on a loaded 2-core machine, both containerd versions):
	// containerd-shim-runc-v2 publishes it from a goroutine and pkg/shim lets
	// the process exit after Shutdown without draining that queue. Our shim
	// must not; here a missing delete is only logged, so the harness test does
	// not flake on a runc-shim bug.
	if _, err := rec.WaitFor(harness.Match(harness.TopicTaskDelete, id), 5*time.Second); err != nil {
		t.Logf("known runc-shim flaw, not a harness failure: %v", err)
	}
	topics := rec.Topics(id)
	t.Logf("events for %s: %v", id, topics)
	want := []string{harness.TopicTaskCreate, harness.TopicTaskStart, harness.TopicTaskExit, harness.TopicTaskDelete}
	if got := topics; len(got) < 3 || !slices.Equal(got, want[:len(got)]) {
		t.Errorf("events for %s: %v, want %v", id, got, want)
	}
	if e, err := rec.WaitFor(harness.Match(harness.TopicTaskExit, id), time.Second); err == nil {
		if exit, ok := e.Payload.(*eventtypes.TaskExit); !ok || exit.ExitStatus != 3 {
			t.Errorf("exit event payload %#v, want *TaskExit with status 3", e.Payload)
		}
	}

	// Leak checks: the shim exits after delete, containerd reaped its
	// "shim start" children, and nothing stays mounted.
	waitNoShim(t, d.Address())
	if n, err := harness.ZombieCount(d.Pid()); err != nil || n != 0 {
		t.Errorf("zombies under containerd: %d %v", n, err)
	}
	if m, err := harness.MountsUnder(d.StateDir()); err != nil || len(m) != 0 {
		t.Errorf("mounts left under state: %v %v", m, err)
	}

	// Restart keeps images, the client reconnects, the recorder resubscribes.
	if err := d.Restart(); err != nil {
		t.Fatal(err)
	}
	if out, _, err := d.Ctr("-n", ns, "images", "ls", "-q"); err != nil || !strings.Contains(out, harness.BusyboxImage) {
		t.Fatalf("images after restart: %v\n%s", err, out)
	}
	id2 := id + "-2"
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The recorder resubscribes within ~100ms of the restart; until then
		// events are lost, so retry with fresh containers.
		runContainer(ctx, t, c, img, id2, "true")
		if _, err := rec.WaitFor(harness.Match(harness.TopicTaskStart, id2), 2*time.Second); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("recorder saw nothing after restart: %v", rec.Topics(id2))
		}
	}
	waitNoShim(t, d.Address())
}

// runContainer runs sh -c script in a new container using the custom runtime,
// removes it and returns the exit code and output.
func runContainer(ctx context.Context, t *testing.T, c *client.Client, img client.Image, id, script string) (uint32, string, string) {
	t.Helper()
	container, err := c.NewContainer(ctx, id,
		client.WithImage(img),
		client.WithNewSnapshot(id, img),
		client.WithRuntime(runtimeName, nil),
		client.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs("sh", "-c", script)),
	)
	if err != nil {
		t.Fatalf("new container: %v", err)
	}
	defer func() {
		if err := container.Delete(ctx, client.WithSnapshotCleanup); err != nil {
			t.Errorf("delete container: %v", err)
		}
	}()
	var stdout, stderr bytes.Buffer
	task, err := container.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, &stdout, &stderr)))
	if err != nil {
		t.Fatalf("new task: %v", err)
	}
	statusC, err := task.Wait(ctx)
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatalf("start: %v", err)
	}
	var code uint32
	select {
	case st := <-statusC:
		code, _, err = st.Result()
		if err != nil {
			t.Errorf("exit status: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("task %s did not exit", id)
	}
	if _, err := task.Delete(ctx, client.WithProcessKill); err != nil {
		t.Errorf("delete task: %v", err)
	}
	return code, stdout.String(), stderr.String() // Delete waited for the copy goroutines
}

// waitNoShim waits until no shim of this daemon (a process whose command line
// names its socket) is left.
func waitNoShim(t *testing.T, address string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		procs, err := harness.ProcessesMatching(address)
		if err != nil {
			t.Fatal(err)
		}
		if len(procs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("shims still running: %+v", procs)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
