package shim

import (
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/shim/procio"
)

// state is where a process is in its life. Transitions are checked in
// process.transition, the one place that knows which moves are legal.
type state int

const (
	stateCreated state = iota
	stateRunning
	statePaused
	stateStopped
	stateDeleted
)

func (s state) String() string {
	switch s {
	case stateCreated:
		return "created"
	case stateRunning:
		return "running"
	case statePaused:
		return "paused"
	case stateStopped:
		return "stopped"
	case stateDeleted:
		return "deleted"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

func (s state) status() task.Status {
	switch s {
	case stateCreated:
		return task.Status_CREATED
	case stateRunning:
		return task.Status_RUNNING
	case statePaused:
		return task.Status_PAUSED
	case stateStopped, stateDeleted:
		return task.Status_STOPPED
	}
	return task.Status_UNKNOWN
}

// legal lists the transitions a process may make.
var legal = map[state][]state{
	stateCreated: {stateRunning, stateStopped, stateDeleted},
	stateRunning: {statePaused, stateStopped},
	statePaused:  {stateRunning, stateStopped},
	stateStopped: {stateDeleted},
}

// process is a container's init (id "") or one of its execs.
type process struct {
	c    *container
	id   string         // exec id; "" for the init process
	spec *specs.Process // exec only

	// mu orders operations on this process, Start against the exit in
	// particular; it may be held across a backend call for this process,
	// never across calls for others.
	mu       sync.Mutex
	state    state // guarded by mu
	pid      int   // guarded by mu
	status   int   // guarded by mu
	exitedAt time.Time
	io       *procio.IO    // guarded by mu; nil until the runtime created the process
	stdio    stdioRequest  // what containerd asked for
	exited   chan struct{} // closed on the move to stopped
}

type stdioRequest struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

func newProcess(c *container, id string, s stdioRequest) *process {
	return &process{c: c, id: id, stdio: s, exited: make(chan struct{})}
}

func (p *process) isInit() bool { return p.id == "" }

// name is the process as events and errors name it: the container id for
// the init process, the exec id otherwise.
func (p *process) name() string {
	if p.isInit() {
		return p.c.id
	}
	return p.id
}

// transitionLocked moves the process to next or says why it cannot.
func (p *process) transitionLocked(next state, op string) error {
	for _, s := range legal[p.state] {
		if s == next {
			p.state = next
			return nil
		}
	}
	return p.invalidLocked(op)
}

func (p *process) invalidLocked(op string) error {
	what := "task " + p.c.id
	if !p.isInit() {
		what = fmt.Sprintf("exec %s of task %s", p.id, p.c.id)
	}
	if p.state == stateDeleted {
		// A concurrent Delete won the race: the process is gone, which
		// callers that clean up (CRI, ctr) treat as done.
		return fmt.Errorf("cannot %s %s: already deleted: %w", op, what, errdefs.ErrNotFound)
	}
	return fmt.Errorf("cannot %s %s: process is %s: %w", op, what, p.state, errdefs.ErrFailedPrecondition)
}

// setExitedLocked records the exit and wakes waiters. It is idempotent: an
// exit may be learned twice (reaper and runtime), only the first counts.
func (p *process) setExitedLocked(status int, at time.Time) bool {
	if p.state == stateStopped || p.state == stateDeleted {
		return false
	}
	p.state = stateStopped
	p.status = status
	p.exitedAt = at
	close(p.exited)
	return true
}

type processInfo struct {
	state    state
	pid      int
	status   int
	exitedAt time.Time
}

func (p *process) info() processInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	return processInfo{state: p.state, pid: p.pid, status: p.status, exitedAt: p.exitedAt}
}

func (p *process) getPid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}
