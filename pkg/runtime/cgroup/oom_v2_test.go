package cgroup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// v2Group is a cgroup v2 directory in a temporary mountpoint holding the
// two files the OOM watch reads: memory.events (the oom_kill counter) and
// cgroup.events (populated), in the kernel's format.
type v2Group struct {
	t   *testing.T
	dir string
	cg  Cgroup
}

func newV2Group(t *testing.T, kills int) *v2Group {
	t.Helper()
	mnt := t.TempDir()
	g := &v2Group{t: t, dir: filepath.Join(mnt, "testing", "c1")}
	if err := os.MkdirAll(g.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	g.write("cgroup.events", "populated 1\nfrozen 0\n")
	g.setKills(kills)
	cg, err := LoadV2(mnt, "/testing/c1")
	if err != nil {
		t.Fatal(err)
	}
	g.cg = cg
	return g
}

// write rewrites a control file in place, as the kernel's updates look to
// inotify (IN_MODIFY on the watched file).
func (g *v2Group) write(name, content string) {
	g.t.Helper()
	f, err := os.OpenFile(filepath.Join(g.dir, name), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		g.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(content); err != nil {
		g.t.Fatal(err)
	}
}

func (g *v2Group) setKills(n int) {
	g.write("memory.events", fmt.Sprintf("low 0\nhigh 0\nmax %d\noom %d\noom_kill %d\noom_group_kill 0\n", 3*n, n, n))
}

// oomRecorder counts the TaskOOM events the watcher publishes.
type oomRecorder struct {
	mu  sync.Mutex
	ids []string
}

func (r *oomRecorder) publish(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids = append(r.ids, id)
}

func (r *oomRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ids)
}

// waitCount waits for n events for id, then makes sure no more follow:
// the watch publishes only through Check, which decides under the
// watcher's lock from the kill count, so a Check now that publishes
// nothing means a later one from the watch cannot either.
func (r *oomRecorder) waitCount(t *testing.T, w *OOMWatcher, id string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.count() < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if w.CheckExit(id, true) {
		t.Errorf("a kill was left unreported after %d events", r.count()-1)
	}
	if got := r.count(); got != n {
		r.mu.Lock()
		defer r.mu.Unlock()
		t.Fatalf("TaskOOM published %d times (%v), want %d", got, r.ids, n)
	}
}

// TestOOMWatcherV2 drives the cgroup v2 path of the OOM watch (inotify on
// memory.events) over a fixture cgroup: each kill the kernel counts after
// the task was added is published once, whether the watch or the exit
// path's synchronous check sees it first.
func TestOOMWatcherV2(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, w *OOMWatcher, g *v2Group, r *oomRecorder)
	}{
		{"kill seen by the memory.events watch", func(t *testing.T, w *OOMWatcher, g *v2Group, r *oomRecorder) {
			w.Add("c1", g.cg)
			g.setKills(1)
			r.waitCount(t, w, "c1", 1)
			w.CheckExit("c1", true) // the init's exit afterwards: already reported
			r.waitCount(t, w, "c1", 1)
		}},
		{"kill seen first by the exit path", func(t *testing.T, w *OOMWatcher, g *v2Group, r *oomRecorder) {
			w.Add("c1", g.cg)
			g.setKills(1)
			w.CheckExit("c1", true)
			if r.count() != 1 {
				t.Fatalf("the exit path's check did not publish synchronously (%d events)", r.count())
			}
			r.waitCount(t, w, "c1", 1)
		}},
		{"kill, then the cgroup empties: the watch's last read", func(t *testing.T, w *OOMWatcher, g *v2Group, r *oomRecorder) {
			// The kernel counts the kill, then the killed init exits.
			w.Add("c1", g.cg)
			g.setKills(1)
			g.write("cgroup.events", "populated 0\nfrozen 0\n")
			r.waitCount(t, w, "c1", 1)
		}},
		{"kills before the task are not its own", func(t *testing.T, w *OOMWatcher, g *v2Group, r *oomRecorder) {
			g.setKills(2)
			w.Add("c1", g.cg)
			w.CheckExit("c1", true)
			r.waitCount(t, w, "c1", 0)
			g.setKills(3)
			r.waitCount(t, w, "c1", 1)
		}},
		{"each new kill once", func(t *testing.T, w *OOMWatcher, g *v2Group, r *oomRecorder) {
			w.Add("c1", g.cg)
			for n := 1; n <= 3; n++ {
				g.setKills(n)
				r.waitCount(t, w, "c1", n)
			}
		}},
		{"removed task", func(t *testing.T, w *OOMWatcher, g *v2Group, r *oomRecorder) {
			w.Add("c1", g.cg)
			w.Remove("c1")
			g.setKills(1)
			w.CheckExit("c1", true)
			r.waitCount(t, w, "c1", 0)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newV2Group(t, 0)
			r := &oomRecorder{}
			w := NewOOMWatcher(context.Background(), r.publish)
			defer w.Close()
			tc.run(t, w, g, r)
		})
	}
}
