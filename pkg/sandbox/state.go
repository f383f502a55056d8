package sandbox

import (
	"fmt"
	"slices"

	"github.com/containerd/errdefs"
)

// state is where a sandbox is in its life. starting and stopping are the
// in-between states of a backend command (StartSandbox, StopSandbox and
// ShutdownSandbox hold the sandbox's op lock across them); the others are
// where the commands leave it.
type state int

const (
	stateCreated  state = iota // CreateSandbox done, no process yet
	stateStarting              // the backend is starting the process
	stateRunning               // the process runs: the pod is ready
	stateStopping              // the backend is ending the process and removing its state
	stateStopped               // no process (it exited, or was stopped or never started)
	stateShutdown              // ShutdownSandbox done: the pod is gone
)

func (s state) String() string {
	switch s {
	case stateCreated:
		return "created"
	case stateStarting:
		return "starting"
	case stateRunning:
		return "running"
	case stateStopping:
		return "stopping"
	case stateStopped:
		return "stopped"
	case stateShutdown:
		return "shut down"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// op is something done to a sandbox; the rules table says in which states
// it may be done and where it takes the sandbox.
type op int

const (
	opStart       op = iota // StartSandbox begins
	opStarted               // the backend started the process
	opStartFailed           // the backend could not: StartSandbox may be retried
	opExit                  // the process exited
	opStop                  // StopSandbox (or ShutdownSandbox's stop) begins
	opStopped               // the process is gone and the backend's state removed
	opStopFailed            // the stop failed and the process still runs
	opShutdown              // ShutdownSandbox removed the pod's files
	numOps
)

type rule struct {
	name string // as refusals say it: "cannot <name> sandbox sb1: it is running"
	// moves maps each state the op is allowed in to where it takes the
	// sandbox.
	moves map[state]state
	// done lists the states in which the op has nothing left to do: it
	// succeeds without moving the sandbox (stopping a shut down sandbox).
	done []state
}

// rules is the sandbox's state machine; transition is the only way through
// it. An exit while stopping stays there: the stop finishes the move once
// the backend's state is gone too.
var rules = [numOps]rule{
	opStart:       {name: "start", moves: map[state]state{stateCreated: stateStarting}},
	opStarted:     {name: "finish starting", moves: map[state]state{stateStarting: stateRunning}},
	opStartFailed: {name: "abort the start of", moves: map[state]state{stateStarting: stateCreated}},
	opExit:        {name: "record the exit of", moves: map[state]state{stateRunning: stateStopped, stateStopping: stateStopping}},
	opStop: {name: "stop", moves: map[state]state{stateCreated: stateStopping, stateRunning: stateStopping, stateStopped: stateStopping},
		done: []state{stateShutdown}},
	opStopped:    {name: "finish stopping", moves: map[state]state{stateStopping: stateStopped}},
	opStopFailed: {name: "abort the stop of", moves: map[state]state{stateStopping: stateRunning}},
	opShutdown:   {name: "shut down", moves: map[state]state{stateStopped: stateShutdown}, done: []state{stateShutdown}},
}

// transitionLocked moves the sandbox as o says; the caller holds sb.mu. It
// reports done when o has nothing to do in the current state, and refuses
// with FailedPrecondition naming the sandbox, its state and the operation.
func (sb *sandbox) transitionLocked(o op) (done bool, err error) {
	r := rules[o]
	if slices.Contains(r.done, sb.st) {
		return true, nil
	}
	next, ok := r.moves[sb.st]
	if !ok {
		return false, fmt.Errorf("cannot %s sandbox %s: it is %s: %w", r.name, sb.id, sb.st, errdefs.ErrFailedPrecondition)
	}
	sb.st = next
	return false, nil
}

func (sb *sandbox) transition(o op) (done bool, err error) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.transitionLocked(o)
}
