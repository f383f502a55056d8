package task

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
)

// sharedCgroupBackend is the fake backend whose every task has one cgroup,
// as a gVisor pod's containers have the sandbox's (a fixture cgroup v2
// directory: memory.events is what the OOM watch reads).
type sharedCgroupBackend struct {
	*fakeBackend
	cg cgroup.Cgroup

	mu       sync.Mutex
	failOnce map[string]bool // ids whose first load fails
}

func (b *sharedCgroupBackend) Cgroup(ctx context.Context, id string, pid int) (cgroup.Cgroup, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failOnce[id] {
		delete(b.failOnce, id)
		return nil, fmt.Errorf("cgroup of pid %d: %w", pid, errdefs.ErrNotFound)
	}
	return b.cg, nil
}

func withSharedCgroup(t *testing.T, h *harness, failOnce ...string) {
	t.Helper()
	mnt := t.TempDir()
	dir := filepath.Join(mnt, "pod")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "memory.events"), []byte("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cg, err := cgroup.LoadV2(mnt, "/pod")
	if err != nil {
		t.Fatal(err)
	}
	b := &sharedCgroupBackend{fakeBackend: h.backend, cg: cg, failOnce: map[string]bool{}}
	for _, id := range failOnce {
		b.failOnce[id] = true
	}
	h.svc.backends = runtime.NewRegistry(runtime.Registration{
		Name:     "fake",
		Settings: func() oci.Section { return &fakeSettings{} },
		New:      func(oci.Section, *runtime.Container) (runtime.Backend, error) { return b, nil },
	})
}

// inotifyFDs counts the process's inotify instances (a cgroup v2 OOM watch
// holds one).
func inotifyFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if target, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); target == "anon_inode:inotify" {
			n++
		}
	}
	return n
}

// TestOOMWatchGoesWithTheLastTask (issue 19, finding 2): tasks sharing a
// cgroup share one OOM watch, and their deletes close it. That holds also
// when a task's cgroup failed to load at create and a Stats call, whose
// check of the init's state passed just before the task was deleted, loads
// it after the delete: the watch it adds must not outlive the task.
func TestOOMWatchGoesWithTheLastTask(t *testing.T) {
	h := newHarness(t)
	withSharedCgroup(t, h, "app")
	before := inotifyFDs(t)
	pids := map[string]int{}
	for _, id := range []string{"pause", "app", "sidecar"} {
		pids[id] = h.create(id)
	}
	if got := inotifyFDs(t) - before; got != 1 {
		t.Fatalf("tasks on one cgroup: %d inotify instances, want 1", got)
	}
	app, err := h.svc.getContainer("app")
	if err != nil {
		t.Fatal(err)
	}
	h.exit(pids["app"], 0)
	h.delete("app")
	app.watchCgroup(h.ctx, pids["app"]) // the late Stats call
	for _, id := range []string{"sidecar", "pause"} {
		h.exit(pids[id], 0)
		h.delete(id)
	}
	if got := inotifyFDs(t) - before; got != 0 {
		t.Fatalf("after every task was deleted: %d inotify instances, want 0", got)
	}
	h.flushed()
}

func (h *harness) delete(id string) {
	h.t.Helper()
	if _, err := h.svc.Delete(h.ctx, &taskAPI.DeleteRequest{ID: id}); err != nil {
		h.t.Fatalf("delete %s: %v", id, err)
	}
}
