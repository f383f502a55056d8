package metrics

import (
	"context"
	"errors"

	"github.com/containerd/errdefs"
)

// Labels are the low-cardinality labels on every task metric.
type Labels struct {
	Backend string // "runc" or "runsc"
	Handler string // CRI runtime handler name, "" when not known
}

// Task identifies one task on the per-task state gauge. Its fields come
// from the container's config.json: see TaskFromAnnotations.
type Task struct {
	Namespace    string // containerd namespace
	ID           string // task (container) id
	Pod          string // io.kubernetes.cri.sandbox-name
	PodNamespace string // io.kubernetes.cri.sandbox-namespace
	Container    string // io.kubernetes.cri.container-name
}

// CRI annotations TaskFromAnnotations reads (pkg/oci has the same names;
// repeated here so that this package depends on nothing of the shim's).
const (
	annotationPodName      = "io.kubernetes.cri.sandbox-name"
	annotationPodNamespace = "io.kubernetes.cri.sandbox-namespace"
	annotationContainer    = "io.kubernetes.cri.container-name"
)

// TaskFromAnnotations builds a Task from the spec's annotations; outside
// Kubernetes the pod fields stay empty.
func TaskFromAnnotations(namespace, id string, annotations map[string]string) Task {
	return Task{
		Namespace:    namespace,
		ID:           id,
		Pod:          annotations[annotationPodName],
		PodNamespace: annotations[annotationPodNamespace],
		Container:    annotations[annotationContainer],
	}
}

// ExitReason classifies a process exit.
type ExitReason uint8

// The exit reasons; String gives the value of the reason label.
const (
	ExitCompleted ExitReason = iota // status 0
	ExitError                       // non-zero status that is not a signal
	ExitSignaled                    // 128+n: killed by signal n, not by the OOM killer
	ExitOOMKilled                   // killed after an OOM in its cgroup
	numExitReasons
)

var exitReasonNames = [numExitReasons]string{"completed", "error", "signaled", "oom_killed"}

func (r ExitReason) String() string { return exitReasonNames[r.valid()] }

// valid maps an out-of-range reason to ExitError.
func (r ExitReason) valid() ExitReason {
	if r < numExitReasons {
		return r
	}
	return ExitError
}

// ExitReasonOf classifies an exit status. oomKilled is whether the OOM
// killer acted in the process's cgroup while it ran; a zero status still
// counts as completed (the killer may have taken a child instead).
func ExitReasonOf(status uint32, oomKilled bool) ExitReason {
	switch {
	case status == 0:
		return ExitCompleted
	case oomKilled:
		return ExitOOMKilled
	case status > 128 && status <= 128+64: // Linux signals are 1..64
		return ExitSignaled
	}
	return ExitError
}

// State is a task's state on the tasks and task_state gauges.
type State uint8

// The task states; String gives the state label value.
const (
	StateCreated State = iota
	StateRunning
	StatePaused
	StateStopped
	numStates
)

var stateNames = [numStates]string{"created", "running", "paused", "stopped"}

func (s State) String() string {
	if s < numStates {
		return stateNames[s]
	}
	return "unknown"
}

// Result is the result label of an RPC: "ok", or the errdefs kind of err in
// snake case ("not_found", "failed_precondition"…), "unknown" otherwise.
func Result(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errdefs.IsNotFound(err):
		return "not_found"
	case errdefs.IsAlreadyExists(err):
		return "already_exists"
	case errdefs.IsInvalidArgument(err):
		return "invalid_argument"
	case errdefs.IsFailedPrecondition(err):
		return "failed_precondition"
	case errdefs.IsNotImplemented(err):
		return "not_implemented"
	case errdefs.IsUnavailable(err):
		return "unavailable"
	case errdefs.IsPermissionDenied(err):
		return "permission_denied"
	case errdefs.IsResourceExhausted(err):
		return "resource_exhausted"
	case errdefs.IsConflict(err):
		return "conflict"
	case errdefs.IsNotModified(err):
		return "not_modified"
	case errdefs.IsAborted(err):
		return "aborted"
	case errdefs.IsOutOfRange(err):
		return "out_of_range"
	case errdefs.IsInternal(err):
		return "internal"
	case errdefs.IsDataLoss(err):
		return "data_loss"
	case errdefs.IsUnauthorized(err):
		return "unauthenticated"
	case errors.Is(err, context.Canceled), errdefs.IsCanceled(err):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded), errdefs.IsDeadlineExceeded(err):
		return "deadline_exceeded"
	}
	return "unknown"
}
