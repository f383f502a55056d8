package shim

import (
	"context"
	"fmt"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// exitTracker matches process exits to processes and publishes them in
// containerd's order. It follows the design of containerd's runc shim
// (task/service.go), which took several rounds of fixes (#7111, #9719,
// #9828, #10589, #10651) to get right:
//
//   - an exit is published only after the start event of the same process,
//     even when the process exits at once: preStart subscribes to exits
//     before the backend starts anything, and handleStarted replays an exit
//     that came early;
//   - a task's init exit is published after the exits of all its execs;
//   - once the init has exited no exec may start.
type exitTracker struct {
	s *Service

	mu sync.Mutex
	// running maps pids to the started processes that own them; guarded by
	// mu. The inits of runtime.InitWaiter backends are not here.
	running map[int][]*process
	// runningExecs counts started, not yet exited execs per task; guarded
	// by mu.
	runningExecs map[*container]int
	// execCountSubscribers wake an init exit waiting for execs; guarded by mu.
	execCountSubscribers map[*container]chan<- int
	// initExited holds tasks whose init was reaped; guarded by mu.
	initExited map[*container]runtime.Exit
	// subscribers collect exits for processes being started; guarded by mu.
	subscribers map[*map[int][]runtime.Exit]struct{}
}

func (t *exitTracker) init() {
	t.running = make(map[int][]*process)
	t.runningExecs = make(map[*container]int)
	t.execCountSubscribers = make(map[*container]chan<- int)
	t.initExited = make(map[*container]runtime.Exit)
	t.subscribers = make(map[*map[int][]runtime.Exit]struct{})
}

// preStart prepares for starting a process. c is the task whose init is
// being started (nil when creating a task or starting an exec): its init is
// taken out of running so an exit during start is held for handleStarted.
//
// handleStarted must be called once the start event is published (or the
// start failed); it registers the process, or handles its exit if it came
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
			if p.info().state == stateRunning {
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
				t.exited(e, c, p)
			}
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
	e, err := c.waiter.WaitInit(context.WithoutCancel(t.s.ctx), c.id)
	if err != nil {
		log.G(t.s.ctx).WithError(err).WithField("id", c.id).Error("wait for init exit; reporting it as killed")
		e = runtime.ExitedAt(pid, 128+int(unix.SIGKILL))
	}
	e.Pid = pid
	t.exited(e, c, p)
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
	t.mu.Unlock()
	for _, p := range ps {
		t.exited(e, p.c, p)
	}
}

// exited dispatches an exit: inits wait for their execs.
func (t *exitTracker) exited(e runtime.Exit, c *container, p *process) {
	if !p.isInit() {
		t.publishExit(e, c, p)
		return
	}
	t.mu.Lock()
	t.initExited[c] = e
	t.mu.Unlock()
	t.initExit(e, c, p)
}

// initExit publishes a task's init exit after all its execs' exits.
func (t *exitTracker) initExit(e runtime.Exit, c *container, p *process) {
	if c.sharedPidNS {
		// Without its own pid namespace the init's death does not end the
		// other processes; end them so their exits come first.
		if err := c.backend.Kill(t.s.ctx, c.id, int(unix.SIGKILL), true); err != nil && !errdefs.IsNotFound(err) {
			log.G(t.s.ctx).WithError(err).WithField("id", c.id).Warn("kill remaining processes after init exit")
		}
	}
	t.mu.Lock()
	n := t.runningExecs[c]
	if n == 0 {
		delete(t.runningExecs, c)
		t.mu.Unlock()
		t.publishExit(e, c, p)
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
		t.publishExit(e, c, p)
	}()
}

// publishExit records the exit and publishes TaskExit (TaskOOM first when
// the cgroup saw an OOM kill the watcher has not reported yet). TaskExit is
// queued before the process is marked stopped, so nothing that waits for
// the exit (Wait, Delete and its TaskDelete) can get ahead of it.
func (t *exitTracker) publishExit(e runtime.Exit, c *container, p *process) {
	p.mu.Lock()
	if p.state == stateStopped || p.state == stateDeleted {
		// Already recorded (a runtime reported it too).
		p.mu.Unlock()
		return
	}
	if p.isInit() {
		t.s.oom.check(c.id, true)
		if err := writeExitStatus(c.bundle, e); err != nil {
			log.G(t.s.ctx).WithError(err).WithField("id", c.id).Warn("record exit status in bundle")
		}
	}
	t.s.publish(&eventstypes.TaskExit{
		ContainerID: c.id,
		ID:          p.name(),
		Pid:         uint32(e.Pid),
		ExitStatus:  uint32(e.Status),
		ExitedAt:    protobuf.ToTimestamp(e.Timestamp),
	})
	p.setExitedLocked(e.Status, e.Timestamp)
	pio := p.io
	startedAt := c.startedAt
	p.mu.Unlock()
	reason := metrics.ExitReasonOf(uint32(e.Status), c.oomKilled.Load())
	if p.isInit() {
		ran := time.Duration(-1)
		if !startedAt.IsZero() {
			ran = e.Timestamp.Sub(startedAt)
		}
		t.s.metrics.TaskExited(c.labels, c.ident, reason, ran)
	} else {
		t.s.metrics.ExecExited(c.labels, reason)
	}
	if pio != nil {
		pio.Exited(t.s.platform)
	}
	if !p.isInit() {
		t.execDone(c)
	}
}

// execStarting counts an exec about to start; FailedPrecondition once the
// task's init has exited.
func (t *exitTracker) execStarting(c *container) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.initExited[c]; ok {
		return fmt.Errorf("start exec in task %s: init process is not running: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	t.runningExecs[c]++
	return nil
}

// execDone uncounts an exec that exited or failed to start.
func (t *exitTracker) execDone(c *container) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.runningExecs[c]--
	if ch, ok := t.execCountSubscribers[c]; ok {
		ch <- t.runningExecs[c]
	}
}

// initAlive refuses new execs in a task whose init has exited.
func (t *exitTracker) initAlive(c *container) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.initExited[c]; ok {
		return fmt.Errorf("exec in task %s: init process is not running: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	if st := c.init.info().state; st != stateCreated && st != stateRunning && st != statePaused {
		return fmt.Errorf("exec in task %s: init process is %s: %w", c.id, st, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// forget drops a pid whose exit the caller records itself.
func (t *exitTracker) forget(pid int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.running, pid)
}

// deleted drops a deleted task's bookkeeping.
func (t *exitTracker) deleted(c *container) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.initExited, c)
}
