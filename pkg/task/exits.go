package task

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// exitTracker matches process exits to processes and hands them on in
// containerd's order. It follows the design of containerd's runc shim
// (task/service.go), which took several rounds of fixes (#7111, #9719,
// #9828, #10589, #10651) to get right:
//
//   - an exit is handed on only after the start event of the same process,
//     even when the process exits at once: preStart subscribes to exits
//     before the backend starts anything, and handleStarted replays an exit
//     that came early;
//   - a task's init exit is handed on after the exits of all its execs;
//   - once the init has exited no exec may start.
//
// It calls out (exited, the backend's WaitInit and Kill) only without its
// lock held, and never takes a process lock: pids are atomics.
type exitTracker struct {
	ctx context.Context
	// exited records an exit and publishes it (the service's part).
	exited func(e runtime.Exit, c *container, p *process)

	mu sync.Mutex
	// running maps pids to the started processes that own them; guarded by
	// mu. The inits of runtime.InitWaiter backends are not here.
	running map[int][]*process
	// runningExecs counts started, not yet exited execs per task; guarded
	// by mu.
	runningExecs map[*container]int
	// execCountSubscribers wake an init exit waiting for execs; guarded by mu.
	execCountSubscribers map[*container]chan<- int
	// initExits holds tasks whose init has exited; guarded by mu.
	initExits map[*container]bool
	// subscribers collect exits for processes being started; guarded by mu.
	subscribers map[*map[int][]runtime.Exit]struct{}
}

func newExitTracker(ctx context.Context, exited func(runtime.Exit, *container, *process)) *exitTracker {
	return &exitTracker{
		ctx:                  ctx,
		exited:               exited,
		running:              make(map[int][]*process),
		runningExecs:         make(map[*container]int),
		execCountSubscribers: make(map[*container]chan<- int),
		initExits:            make(map[*container]bool),
		subscribers:          make(map[*map[int][]runtime.Exit]struct{}),
	}
}

// preStart prepares for starting a process. c is the task whose init is
// being started (nil when creating a task or starting an exec): its init is
// taken out of running so an exit during start is held for handleStarted.
//
// handleStarted must be called once the start event is published (or the
// start failed); it registers the process, or hands on its exit if it came
// already. cleanup must be called before the caller returns, or the
// subscription leaks. Neither may be called with t.mu held.
func (t *exitTracker) preStart(c *container) (handleStarted func(*container, *process), cleanup func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	exits := make(map[int][]runtime.Exit)
	t.subscribers[&exits] = struct{}{}
	if c != nil {
		t.removeRunningLocked(c.init.getPid(), c.init)
	}
	handleStarted = func(c *container, p *process) {
		pid := p.getPid()
		if c.waiter != nil && p.isInit() {
			t.mu.Lock()
			delete(t.subscribers, &exits)
			exits = nil
			t.mu.Unlock()
			if p.current() == stateRunning {
				go t.wait(c, p, pid)
			}
			return
		}
		t.mu.Lock()
		early, exited := exits[pid]
		delete(t.subscribers, &exits)
		exits = nil
		if pid == 0 || exited {
			t.mu.Unlock()
			for _, e := range early {
				t.dispatch(e, c, p)
			}
			return
		}
		// A refused or failed start of an init whose exit was handled
		// already (before this subscription) must not make its dead pid
		// running again: the next process to get it would be taken for it.
		if p.isInit() && t.initExits[c] {
			t.mu.Unlock()
			return
		}
		t.running[pid] = append(t.running[pid], p)
		t.mu.Unlock()
	}
	cleanup = func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if exits != nil {
			delete(t.subscribers, &exits)
		}
	}
	return handleStarted, cleanup
}

func (t *exitTracker) removeRunningLocked(pid int, p *process) {
	var keep []*process
	for _, q := range t.running[pid] {
		if q != p {
			keep = append(keep, q)
		}
	}
	if len(keep) > 0 {
		t.running[pid] = keep
	} else {
		delete(t.running, pid)
	}
}

// wait learns an init's exit from a backend that reports it itself.
func (t *exitTracker) wait(c *container, p *process, pid int) {
	e, err := c.waiter.WaitInit(context.WithoutCancel(t.ctx), c.id)
	if err != nil {
		log.G(t.ctx).WithError(err).WithField("id", c.id).Error("wait for init exit; reporting it as killed")
		e = runtime.Exit{Status: 128 + int(syscall.SIGKILL)}
	}
	if e.Timestamp.IsZero() {
		// containerd takes TaskExit's exited_at as the task's end: year 1
		// would be kept as such (CRI's finishedAt).
		e.Timestamp = time.Now()
	}
	e.Pid = pid
	t.dispatch(e, c, p)
}

// HandleExit is fed every exit the reaper reports.
func (t *exitTracker) HandleExit(e runtime.Exit) {
	// A pid may be reused before its first exit is handled; there is no way
	// to tell the two apart without pidfds, so every owner is treated as
	// exited (containerd's runc shim does the same).
	t.mu.Lock()
	for sub := range t.subscribers {
		(*sub)[e.Pid] = append((*sub)[e.Pid], e)
	}
	ps := t.running[e.Pid]
	delete(t.running, e.Pid)
	// Marked before the lock goes, so that a start racing this exit sees
	// it (handleStarted), not only once it is dispatched.
	for _, p := range ps {
		if p.isInit() {
			t.initExits[p.c] = true
		}
	}
	t.mu.Unlock()
	for _, p := range ps {
		t.dispatch(e, p.c, p)
	}
}

// dispatch hands on an exit: inits wait for their execs.
func (t *exitTracker) dispatch(e runtime.Exit, c *container, p *process) {
	if !p.isInit() {
		t.exited(e, c, p)
		return
	}
	t.mu.Lock()
	t.initExits[c] = true
	t.mu.Unlock()
	if c.sharedPidNS {
		// The remaining processes must be killed before the init's exit can
		// go out; the kill is a runtime command, so not on the reaper's
		// goroutine, which other tasks' exits wait on.
		go func() {
			c.killAllAfterInitExit(t.ctx)
			t.initExit(e, c, p)
		}()
		return
	}
	t.initExit(e, c, p)
}

// initExit hands on a task's init exit after all its execs' exits.
func (t *exitTracker) initExit(e runtime.Exit, c *container, p *process) {
	t.mu.Lock()
	n := t.runningExecs[c]
	if n == 0 {
		delete(t.runningExecs, c)
		t.mu.Unlock()
		t.exited(e, c, p)
		return
	}
	counts := make(chan int, n)
	t.execCountSubscribers[c] = counts
	t.mu.Unlock()

	go func() {
		for n := range counts {
			if n == 0 {
				break
			}
		}
		t.mu.Lock()
		delete(t.execCountSubscribers, c)
		delete(t.runningExecs, c)
		t.mu.Unlock()
		t.exited(e, c, p)
	}()
}

// execStarting counts an exec about to start; FailedPrecondition once the
// task's init has exited.
func (t *exitTracker) execStarting(c *container) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.initExits[c] {
		return fmt.Errorf("cannot start an exec in task %s: init process is not running: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	t.runningExecs[c]++
	return nil
}

// execDone uncounts an exec that exited or failed to start. A task
// without a count was deleted (its exec exited after the delete): nothing
// is recreated for it.
func (t *exitTracker) execDone(c *container) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, ok := t.runningExecs[c]
	if !ok {
		return
	}
	n--
	if n > 0 {
		t.runningExecs[c] = n
	} else {
		delete(t.runningExecs, c)
	}
	if ch, ok := t.execCountSubscribers[c]; ok {
		ch <- n
	}
}

// initExited reports whether the task's init has exited.
func (t *exitTracker) initExited(c *container) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.initExits[c]
}

// forget drops a pid whose exit the caller records itself.
func (t *exitTracker) forget(pid int, p *process) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.removeRunningLocked(pid, p)
}

// deleted drops a deleted task's bookkeeping. An init exit still waiting
// for execs is let go: the delete recorded the init's exit already, so the
// waiter publishes nothing (processExited).
func (t *exitTracker) deleted(c *container) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.initExits, c)
	delete(t.runningExecs, c)
	if ch, ok := t.execCountSubscribers[c]; ok {
		close(ch)
		delete(t.execCountSubscribers, c)
	}
}

// HandleExit is fed every exit the reaper reports.
func (s *Service) HandleExit(e runtime.Exit) { s.exits.HandleExit(e) }

func (s *Service) publishOOM(id string) {
	s.publish(&eventstypes.TaskOOM{ContainerID: id})
	if c, err := s.lookup(id, true); err == nil {
		c.oomKilled.Store(true)
		s.metrics.OOM(c.labels)
	}
}

// processExited records an exit and publishes TaskExit (TaskOOM first when
// the cgroup saw an OOM kill the watcher has not reported yet). TaskExit is
// queued before the process is marked stopped, so nothing that waits for
// the exit (Wait, Delete and its TaskDelete) can get ahead of it.
func (s *Service) processExited(e runtime.Exit, c *container, p *process) {
	if st := p.current(); st == stateStopped || st == stateDeleted {
		return // already recorded (a runtime reported it too)
	}
	if p.isInit() {
		// In a cgroup shared with other tasks (a gVisor pod), a kill is only
		// reported for an init that died of SIGKILL (cgroup.OOMWatcher).
		s.oom.CheckExit(c.id, e.Status == 128+int(syscall.SIGKILL))
		if err := c.bundle.WriteExit(bundle.Exit{Pid: e.Pid, Status: e.Status, Timestamp: e.Timestamp}); err != nil {
			log.G(s.ctx).WithError(err).WithField("id", c.id).Warn("record exit status in bundle")
		}
	}
	p.mu.Lock()
	if p.state == stateStopped || p.state == stateDeleted {
		p.mu.Unlock()
		return
	}
	// Queued under the process lock: two reports of one exit cannot both
	// publish. The queue's lock is a leaf.
	s.publish(&eventstypes.TaskExit{
		ContainerID: c.id,
		ID:          p.name(),
		Pid:         uint32(e.Pid),
		ExitStatus:  uint32(e.Status),
		ExitedAt:    protobuf.ToTimestamp(e.Timestamp),
	})
	p.setExitedLocked(e.Status, e.Timestamp)
	pio := p.io
	p.mu.Unlock()

	reason := metrics.ExitReasonOf(uint32(e.Status), c.oomKilled.Load())
	if p.isInit() {
		ran := time.Duration(-1)
		if started := c.startedAt.Load(); started != nil {
			ran = e.Timestamp.Sub(*started)
		}
		s.metrics.TaskExited(c.labels, c.ident, reason, ran)
	} else {
		s.metrics.ExecExited(c.labels, reason)
	}
	if pio != nil {
		pio.Exited(s.platform)
	}
	if !p.isInit() {
		s.exits.execDone(c)
	}
}
