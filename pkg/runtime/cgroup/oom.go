package cgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// OOMWatcher reports OOM kills in the cgroups of the tasks it watches. The
// kernel's oom_kill counter, not the notification, decides: a notification
// may come late (after the process was reaped) or twice, and callers check
// the counter synchronously on an init's exit (CheckExit) so that TaskOOM
// precedes the TaskExit of an OOM-killed init.
//
// Tasks may share a cgroup: a gVisor pod's containers all run in the
// sandbox's. Each cgroup has one watch (an eventfd on cgroup v1, an
// inotify instance on v2, and one goroutine), however many tasks use it;
// it is closed when the last of them is removed, so that a crash-looping
// container does not leak one per restart.
//
// Which task a kill is reported for:
//   - A cgroup of one task (runc, a gVisor sandbox of one container): every
//     kill counted there is the task's, reported as soon as the watch or
//     the init's exit sees it, whether or not the init dies (containerd's
//     runc shim does the same).
//   - A cgroup several tasks share (a gVisor pod): a kill cannot be
//     attributed to one container. All of them run in one host process,
//     the sandbox, which is what the host kills, and every container of the
//     pod dies with it. So no task is told while it runs; each task whose
//     init then exits by SIGKILL gets one TaskOOM, right before its
//     TaskExit, and one that exits otherwise gets none. CRI thus marks
//     every container the sandbox's death took as OOMKilled. The kernel
//     may take one of the sandbox's stub processes instead, and gVisor
//     then ends only the container that ran there: the sandbox and the
//     other containers live on. A kill is therefore told only to SIGKILL
//     exits within sharedKillWindow of it being counted, so that a
//     container stopped later does not end OOMKilled. (A SIGKILL from
//     elsewhere inside that window cannot be told apart.)
type OOMWatcher struct {
	ctx   context.Context
	onOOM func(id string)
	now   func() time.Time // a clock tests can set

	mu      sync.Mutex        // leaf lock: onOOM is called without it
	tasks   map[string]*task  // by task id; guarded by mu
	watches map[string]*watch // by cgroup (key); guarded by mu
	closed  bool              // guarded by mu
}

// task is one task's use of a cgroup's watch.
type task struct {
	key string
	cg  Cgroup
	// check serialises the task's checks, onOOM included: an exit's check
	// that finds the watch reporting a kill waits until its TaskOOM is
	// queued, so that the TaskExit queued next comes after it. Taken
	// without OOMWatcher.mu; onOOM may take the caller's locks (the task
	// service's Service.mu), so no check runs under them.
	check    sync.Mutex
	reported uint64 // the kill count last reported for it (or at Add); guarded by check
}

// sharedKillWindow is how long after a kill in a shared cgroup was counted
// a SIGKILL exit is taken for its doing: the containers of a sandbox the
// kernel killed all exit at once, each learnt from a "runsc wait" that
// returns then; a loaded node may delay that by seconds.
const sharedKillWindow = 10 * time.Second

// watch is the notification source of one cgroup, shared by its tasks.
type watch struct {
	tasks map[string]bool // ids of the tasks using it
	f     *os.File        // nil: cannot be watched (exits still check)
	done  chan struct{}   // closed when the reading goroutine has returned
	// kills is the highest kill count seen in the cgroup, and killsAt when
	// it was first seen; guarded by OOMWatcher.mu.
	kills   uint64
	killsAt time.Time
}

// NewOOMWatcher returns a watcher calling onOOM(id) once per new OOM kill
// counted in id's cgroup, per the rules of OOMWatcher. onOOM is called
// from the watch's goroutine or CheckExit's caller, without the watcher's
// lock; CheckExit and Remove may wait for a call in progress, so they must
// not be called with a lock onOOM takes.
func NewOOMWatcher(ctx context.Context, onOOM func(id string)) *OOMWatcher {
	return &OOMWatcher{ctx: ctx, onOOM: onOOM, now: time.Now, tasks: make(map[string]*task), watches: make(map[string]*watch)}
}

// key names a cgroup: tasks whose cgroups have the same key share a watch.
func key(cg Cgroup) string {
	switch cg := cg.(type) {
	case *v1:
		return "v1:" + cg.path
	case *v2:
		return "v2:" + cg.dir
	}
	return fmt.Sprintf("%T:%s", cg, cg.Path())
}

// Add starts watching id's cgroup (nil: nothing to watch). Kills counted
// before now are not id's. Adding an id again replaces its cgroup.
func (w *OOMWatcher) Add(id string, cg Cgroup) {
	if cg == nil {
		return
	}
	t := &task{key: key(cg), cg: cg}
	t.reported, _ = cg.OOMKills() // t is not shared yet
	w.Remove(id)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	w.tasks[id] = t
	if wt := w.watches[t.key]; wt != nil {
		wt.tasks[id] = true
		return
	}
	// Opening the watch is a few syscalls on cgroupfs; under the lock, two
	// tasks of one cgroup cannot both open one.
	wt := &watch{tasks: map[string]bool{id: true}, done: make(chan struct{})}
	w.watches[t.key] = wt
	f, err := open(cg)
	if err != nil {
		close(wt.done)
		log.G(w.ctx).WithError(err).WithField("id", id).WithField("cgroup", cg.Path()).Warn("cannot watch the cgroup for OOM kills: they are seen at the init's exit only")
		return
	}
	wt.f = f
	go w.read(t.key, wt)
}

// open opens cg's OOM notification, non-blocking so that the runtime's
// poller waits for it and Close ends a pending read.
func open(cg Cgroup) (*os.File, error) {
	switch cg := cg.(type) {
	case *v1:
		// Signalled on each OOM of the cgroup (and once when it is removed);
		// closing it unregisters it from the kernel.
		efd, err := cg.cg.OOMEventFD()
		if err != nil {
			return nil, fmt.Errorf("register OOM eventfd: %w", err)
		}
		if err := unix.SetNonblock(int(efd), true); err != nil {
			_ = unix.Close(int(efd)) // the setup error says it all
			return nil, fmt.Errorf("OOM eventfd: %w", err)
		}
		return os.NewFile(efd, "oom eventfd "+cg.path), nil
	case *v2:
		// memory.events is modified when oom_kill is counted.
		fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
		if err != nil {
			return nil, fmt.Errorf("inotify: %w", err)
		}
		if _, err := unix.InotifyAddWatch(fd, filepath.Join(cg.dir, "memory.events"), unix.IN_MODIFY); err != nil {
			_ = unix.Close(fd) // the setup error says it all
			return nil, fmt.Errorf("inotify watch on memory.events: %w", err)
		}
		return os.NewFile(uintptr(fd), "inotify "+cg.dir), nil
	}
	return nil, fmt.Errorf("cgroup %s of type %T: %w", cg.Path(), cg, errors.ErrUnsupported)
}

// read waits for the watch's notifications until its file is closed.
func (w *OOMWatcher) read(key string, wt *watch) {
	defer close(wt.done)
	buf := make([]byte, 4096)
	for {
		if _, err := wt.f.Read(buf); err != nil {
			if !errors.Is(err, os.ErrClosed) {
				log.G(w.ctx).WithError(err).WithField("cgroup", key).Warn("OOM watch ended")
			}
			return
		}
		w.notified(key)
	}
}

// notified reports a new kill in a cgroup of one task. In a shared one,
// the tasks' exits decide (see OOMWatcher).
func (w *OOMWatcher) notified(key string) {
	w.mu.Lock()
	wt := w.watches[key]
	if wt == nil {
		w.mu.Unlock()
		return // removed meanwhile
	}
	var id string
	for tid := range wt.tasks {
		id = tid
	}
	shared := len(wt.tasks) > 1
	var cg Cgroup
	if t := w.tasks[id]; t != nil {
		cg = t.cg
	}
	w.mu.Unlock()
	switch {
	case cg == nil:
	case shared:
		// Only dated here: the exits that follow decide who is told.
		if n, err := cg.OOMKills(); err == nil {
			w.mu.Lock()
			w.seenLocked(wt, n)
			w.mu.Unlock()
		}
	default:
		w.check(id, false)
	}
}

// seenLocked records a kill count read in wt's cgroup, and tells whether
// its newest kill was counted within sharedKillWindow.
func (w *OOMWatcher) seenLocked(wt *watch, n uint64) bool {
	now := w.now()
	if n > wt.kills {
		wt.kills, wt.killsAt = n, now
	}
	return now.Sub(wt.killsAt) <= sharedKillWindow
}

// CheckExit is called when id's init exits, before its TaskExit goes out:
// it reports a kill counted in id's cgroup and not yet reported (calling
// onOOM), and tells whether it did. killed says that the init died of
// SIGKILL, which a kill in a shared cgroup needs to be reported for it.
func (w *OOMWatcher) CheckExit(id string, killed bool) bool {
	return w.check(id, killed)
}

func (w *OOMWatcher) check(id string, exitKilled bool) bool {
	w.mu.Lock()
	t := w.tasks[id]
	var wt *watch
	if t != nil {
		wt = w.watches[t.key]
	}
	shared := wt != nil && len(wt.tasks) > 1
	w.mu.Unlock()
	if t == nil || (shared && !exitKilled) {
		return false
	}
	t.check.Lock()
	defer t.check.Unlock()
	n, err := t.cg.OOMKills()
	if err != nil {
		log.G(w.ctx).WithError(err).WithField("id", id).Debug("read OOM kill count")
		return false
	}
	if n <= t.reported {
		return false
	}
	t.reported = n
	if shared {
		w.mu.Lock()
		recent := w.seenLocked(wt, n)
		w.mu.Unlock()
		if !recent {
			return false // a kill the task outlived
		}
	}
	w.onOOM(id)
	return true
}

// Remove stops watching id; the cgroup's watch is closed, and its
// goroutine has returned, when id was its last task.
func (w *OOMWatcher) Remove(id string) {
	w.mu.Lock()
	t := w.tasks[id]
	if t == nil {
		w.mu.Unlock()
		return
	}
	delete(w.tasks, id)
	wt := w.watches[t.key]
	delete(wt.tasks, id)
	if len(wt.tasks) > 0 {
		w.mu.Unlock()
		return
	}
	delete(w.watches, t.key)
	w.mu.Unlock()
	wt.close()
}

func (wt *watch) close() {
	if wt.f != nil {
		_ = wt.f.Close() // ends the pending read; nothing was written
	}
	<-wt.done
}

// Close stops every watch; later Adds watch nothing.
func (w *OOMWatcher) Close() {
	w.mu.Lock()
	w.closed = true
	watches := w.watches
	w.watches = make(map[string]*watch)
	w.tasks = make(map[string]*task)
	w.mu.Unlock()
	for _, wt := range watches {
		wt.close()
	}
}
