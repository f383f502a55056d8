package cgroup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
)

// watchFDs counts the process's open fds, and among them the kinds an OOM
// watch holds: eventfds (cgroup v1) and inotify instances (cgroup v2).
type watchFDs struct{ all, eventfd, inotify int }

func countFDs(t *testing.T) watchFDs {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var n watchFDs
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // the directory's own fd, closed by now
		}
		n.all++
		switch target {
		case "anon_inode:[eventfd]":
			n.eventfd++
		case "anon_inode:inotify":
			n.inotify++
		}
	}
	return n
}

// settleGoroutines waits until at most want goroutines run (a goroutine
// that was told to stop takes a moment to return), and returns the count.
func settleGoroutines(want int) int {
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return runtime.NumGoroutine()
}

// warmPoller makes the runtime's network poller exist (its epoll fd and
// wakeup fd), which the first watch would otherwise open and keep, so
// that the fd baseline is the process's own.
func warmPoller(t *testing.T) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	w.Close()
}

// requireRoot skips a test that needs root, except under CI, where a
// missing privilege is a failure rather than a silent pass.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("needs root")
	}
	t.Skip("needs root")
}

// TestOOMWatchPerCgroupV1 (issue 19, finding 2): the containers of a
// gVisor pod all have the sandbox's cgroup. N tasks on one cgroup get one
// watch (one eventfd, one goroutine), and when the last task goes the
// process is back to its own fds and goroutines; before, every Add left an
// eventfd behind for good.
func TestOOMWatchPerCgroupV1(t *testing.T) {
	if cgroups.Mode() == cgroups.Unified {
		t.Skip("cgroup v1 memory controller: not on a cgroup v2 host")
	}
	requireRoot(t)
	path := fmt.Sprintf("/custom-oom-share-test-%d", os.Getpid())
	dir := filepath.Join("/sys/fs/cgroup/memory", path)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(dir) })

	warmPoller(t)
	fds := countFDs(t)
	goroutines := runtime.NumGoroutine()

	r := &oomRecorder{}
	w := NewOOMWatcher(context.Background(), r.publish)
	defer w.Close()
	const n = 8
	for i := range n {
		// Each task loads the cgroup itself, as the task service does.
		cg, err := cgroup1.Load(cgroup1.StaticPath(path))
		if err != nil {
			t.Fatal(err)
		}
		w.Add(fmt.Sprintf("c%d", i), FromV1(cg, path))
	}
	if got := countFDs(t); got.eventfd-fds.eventfd != 1 || got.all-fds.all != 1 {
		t.Errorf("%d tasks on one cgroup: %d more fds, %d more eventfds; want one watch (1 eventfd)", n, got.all-fds.all, got.eventfd-fds.eventfd)
	}
	for i := range n {
		w.Remove(fmt.Sprintf("c%d", i))
	}
	if got := countFDs(t); got != fds {
		t.Errorf("after the last task was removed: fds %+v, before the first %+v", got, fds)
	}
	if got := settleGoroutines(goroutines); got > goroutines {
		t.Errorf("after the last task was removed: %d goroutines, before the first %d", got, goroutines)
	}
}

// TestOOMWatchPerCgroupV2 is TestOOMWatchPerCgroupV1 on cgroup v2 (a
// fixture memory.events): one inotify instance for N tasks, gone with the
// last; before, each task kept an inotify instance and two goroutines
// (fs.inotify.max_user_instances is 128 by default).
func TestOOMWatchPerCgroupV2(t *testing.T) {
	g := newV2Group(t, 0)
	warmPoller(t)
	fds := countFDs(t)
	goroutines := runtime.NumGoroutine()

	r := &oomRecorder{}
	w := NewOOMWatcher(context.Background(), r.publish)
	defer w.Close()
	const n = 8
	for i := range n {
		cg, err := LoadV2(filepath.Dir(filepath.Dir(g.dir)), "/testing/c1")
		if err != nil {
			t.Fatal(err)
		}
		w.Add(fmt.Sprintf("c%d", i), cg)
	}
	if got := countFDs(t); got.inotify-fds.inotify != 1 || got.all-fds.all != 1 {
		t.Errorf("%d tasks on one cgroup: %d more fds, %d more inotify instances; want one watch (1 inotify)", n, got.all-fds.all, got.inotify-fds.inotify)
	}
	if got := runtime.NumGoroutine(); got > goroutines+1 {
		t.Errorf("%d tasks on one cgroup: %d more goroutines, want 1", n, got-goroutines)
	}
	for i := range n {
		w.Remove(fmt.Sprintf("c%d", i))
	}
	if got := countFDs(t); got != fds {
		t.Errorf("after the last task was removed: fds %+v, before the first %+v", got, fds)
	}
	if got := settleGoroutines(goroutines); got > goroutines {
		t.Errorf("after the last task was removed: %d goroutines, before the first %d", got, goroutines)
	}
}

// TestOOMSharedCgroup: a kill counted in a cgroup several tasks share (a
// gVisor pod's sandbox) is not any one task's. None is told while they
// run; each task whose init then dies of SIGKILL (the sandbox was killed,
// and every container with it) gets one TaskOOM, before its exit; a task
// that exits otherwise gets none. A cgroup of one task keeps containerd's
// rule: each kill is its own, at once.
func TestOOMSharedCgroup(t *testing.T) {
	g := newV2Group(t, 0)
	r := &oomRecorder{}
	w := NewOOMWatcher(context.Background(), r.publish)
	defer w.Close()
	for _, id := range []string{"pause", "app", "sidecar"} {
		w.Add(id, g.cg)
	}
	g.setKills(1)
	r.waitTotal(t, 0) // the watch saw it; no task is named by it

	w.CheckExit("app", true)
	w.CheckExit("pause", true)
	w.CheckExit("sidecar", false) // it outlived the kill and exited on its own
	w.CheckExit("app", true)      // a second report of the same exit
	r.waitTotal(t, 2)
	if got := strings.Join(r.ids, " "); got != "app pause" {
		t.Fatalf("TaskOOM for %q, want app, then pause", got)
	}

	// The pod's tasks are deleted; a new one alone on the cgroup is told
	// of the next kill as it happens.
	for _, id := range []string{"pause", "app", "sidecar"} {
		w.Remove(id)
	}
	w.Add("alone", g.cg)
	g.setKills(2)
	r.waitTotal(t, 3)
	w.CheckExit("alone", true)
	r.waitTotal(t, 3)
}

// TestOOMReportedBeforeExit: when the watch has seen a kill and is still
// publishing its TaskOOM as the init's exit is handled, the exit's check
// waits for it, so that TaskOOM goes out before TaskExit (containerd's
// order). Before, the check found the kill already claimed and returned at
// once, and TaskExit could overtake the TaskOOM.
func TestOOMReportedBeforeExit(t *testing.T) {
	g := newV2Group(t, 0)
	var (
		mu        sync.Mutex
		order     []string
		once      sync.Once
		entered   = make(chan struct{})
		release   = make(chan struct{})
		published = make(chan struct{})
	)
	record := func(ev string) {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, ev)
	}
	w := NewOOMWatcher(context.Background(), func(id string) {
		once.Do(func() { close(entered) })
		<-release // the event queue is slow to take it
		record("TaskOOM " + id)
		close(published)
	})
	defer w.Close()
	w.Add("c1", g.cg)
	g.setKills(1)
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the watch did not report the kill")
	}
	exited := make(chan struct{})
	go func() {
		w.CheckExit("c1", true)
		record("TaskExit c1")
		close(exited)
	}()
	// A check that does not wait for the publishing returns now.
	select {
	case <-exited:
	case <-time.After(500 * time.Millisecond):
	}
	close(release)
	<-exited
	<-published
	mu.Lock()
	defer mu.Unlock()
	if got := strings.Join(order, ", "); got != "TaskOOM c1, TaskExit c1" {
		t.Fatalf("events %s; want TaskOOM c1, TaskExit c1", got)
	}
}

// waitTotal waits for n events in all; a duplicate, published by the watch
// on its own goroutine, has 200 ms to show. (No synchronous check can stand
// in here as in waitCount: on a shared cgroup CheckExit would itself name
// a task.)
func (r *oomRecorder) waitTotal(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.count() < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if got := r.count(); got != n {
		r.mu.Lock()
		defer r.mu.Unlock()
		t.Fatalf("TaskOOM published %d times (%v), want %d", got, r.ids, n)
	}
}

// TestOOMSharedCgroupKillOutlived: in a gVisor pod the host's OOM killer
// may take one stub process rather than the sandbox; gVisor then ends only
// the container that ran in it (google/gvisor#11590), and the sandbox and
// its other containers live on. A container SIGKILLed much later (a stop,
// a liveness restart) did not die of that kill and must not be reported
// OOMKilled. Before, every later SIGKILL exit in the pod was told of it.
func TestOOMSharedCgroupKillOutlived(t *testing.T) {
	g := newV2Group(t, 0)
	r := &oomRecorder{}
	w := NewOOMWatcher(context.Background(), r.publish)
	defer w.Close()
	var mu sync.Mutex
	now := time.Now()
	w.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	for _, id := range []string{"pause", "app", "sidecar"} {
		w.Add(id, g.cg)
	}
	g.setKills(1)
	w.CheckExit("app", true) // its stub was the one killed
	r.waitTotal(t, 1)

	mu.Lock()
	now = now.Add(sharedKillWindow + time.Second)
	mu.Unlock()
	w.CheckExit("sidecar", true) // stopped by the kubelet
	r.waitTotal(t, 1)

	// The next kill, this time of the sandbox: both remaining die of it.
	w.Add("app2", g.cg)
	g.setKills(2)
	w.CheckExit("app2", true)
	w.CheckExit("pause", true)
	r.waitTotal(t, 3)
	if got := strings.Join(r.ids, " "); got != "app app2 pause" {
		t.Fatalf("TaskOOM for %q, want app, app2, pause", got)
	}
}
