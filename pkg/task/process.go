package task

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/task/procio"
)

// state is where a process is in its life.
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

// op is something done to a process; the rules table says in which states
// it may be done and where it takes the process.
type op int

const (
	opStart op = iota
	opPause
	opResume
	opExit // the process exited (reaped, or recorded at delete)
	opDelete
	opUpdate
	opCheckpoint
	opExec // add an exec to the task
	opKill
	opResize
)

type rule struct {
	name string  // as errors say it: "cannot <name> task c1: process is stopped"
	from []state // states the op is allowed in
	to   state   // where it takes the process; keep: it stays where it is
}

const keep state = -1

// rules is the state machine of every process, init or exec. transition
// is the only code that changes a process's state, and it consults this
// table only.
var rules = map[op]rule{
	opStart:      {"start", []state{stateCreated}, stateRunning},
	opPause:      {"pause", []state{stateRunning}, statePaused},
	opResume:     {"resume", []state{statePaused}, stateRunning},
	opExit:       {"exit", []state{stateCreated, stateRunning, statePaused}, stateStopped},
	opDelete:     {"delete", []state{stateStopped}, stateDeleted},
	opUpdate:     {"update", []state{stateCreated, stateRunning, statePaused}, keep},
	opCheckpoint: {"checkpoint", []state{stateRunning, statePaused}, keep},
	opExec:       {"exec in", []state{stateCreated, stateRunning, statePaused}, keep},
	opKill:       {"kill", []state{stateCreated, stateRunning, statePaused, stateStopped}, keep},
	opResize:     {"resize the terminal of", []state{stateCreated, stateRunning, statePaused}, keep},
}

// process is a container's init (id "") or one of its execs.
type process struct {
	c     *container
	id    string         // exec id; "" for the init
	spec  *specs.Process // exec only
	stdio stdioRequest   // what containerd asked for; read-only

	// pid is the host pid, 0 until the runtime created the process. It is
	// read without any lock (State, Pids, Connect, exit matching).
	pid atomic.Int64

	// op serialises the lifecycle commands on this process (start, delete;
	// on the init also pause, resume, update, checkpoint). It is the one
	// lock held across a runtime command or an I/O wait; see the lock order
	// in doc.go.
	op sync.Mutex

	// mu guards the fields below; a leaf lock, held for field access only.
	mu       sync.Mutex
	state    state
	status   int
	exitedAt time.Time
	io       *procio.IO    // nil until the stdio exists
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

// name is the process as events name it: the container id for the init,
// the exec id otherwise.
func (p *process) name() string {
	if p.isInit() {
		return p.c.id
	}
	return p.id
}

func (p *process) getPid() int { return int(p.pid.Load()) }

// transition moves the process as o says, or refuses: FailedPrecondition
// naming the task, the exec, the state and the operation; NotFound once the
// process is deleted (a concurrent Delete won: callers that clean up, CRI
// and ctr, treat that as done).
func (p *process) transition(o op) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.transitionLocked(o)
}

func (p *process) transitionLocked(o op) error {
	r := rules[o]
	for _, s := range r.from {
		if s == p.state {
			if r.to != keep {
				p.state = r.to
			}
			return nil
		}
	}
	return p.refusal(r.name, p.state)
}

// allowed checks o without moving the process.
func (p *process) allowed(o op) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := rules[o]
	for _, s := range r.from {
		if s == p.state {
			return nil
		}
	}
	return p.refusal(r.name, p.state)
}

func (p *process) refusal(opName string, st state) error {
	what := "task " + p.c.id
	if !p.isInit() {
		what = fmt.Sprintf("exec %s of task %s", p.id, p.c.id)
	}
	if st == stateDeleted {
		return fmt.Errorf("cannot %s %s: already deleted: %w", opName, what, errdefs.ErrNotFound)
	}
	return fmt.Errorf("cannot %s %s: process is %s: %w", opName, what, st, errdefs.ErrFailedPrecondition)
}

// setExited records the exit and wakes waiters. An exit may be learned
// twice (reaper and runtime); only the first counts: it reports false for
// the others.
func (p *process) setExited(status int, at time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.setExitedLocked(status, at)
}

func (p *process) setExitedLocked(status int, at time.Time) bool {
	if p.transitionLocked(opExit) != nil {
		return false
	}
	p.status = status
	p.exitedAt = at
	close(p.exited)
	return true
}

type processInfo struct {
	state    state
	status   int
	exitedAt time.Time
}

func (p *process) info() processInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	return processInfo{state: p.state, status: p.status, exitedAt: p.exitedAt}
}

func (p *process) current() state {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

func (p *process) getIO() *procio.IO {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.io
}

func (p *process) setIO(pio *procio.IO) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.io = pio
}
