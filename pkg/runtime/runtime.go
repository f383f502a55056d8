// Package runtime is the seam between the task service (pkg/task) and the
// OCI runtimes that run containers: the Backend interface, the types that
// cross it (stdio, console, exits, cgroups), and the registry of backends
// built into the shim.
//
// A Backend keeps no task state: the task service owns the process state
// machines, the stdio and the events, and calls a backend only for runtime
// work. One Backend value serves one container (it carries that
// container's settings); its methods are safe for concurrent use.
package runtime

import (
	"context"
	"os"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
)

// Backend runs one OCI container. Every method documents the errdefs kinds
// it returns; other failures come back wrapped with the runtime's own words.
type Backend interface {
	// Create creates the container with its init waiting to be started
	// (OCI "create") and returns the init's host pid.
	// InvalidArgument: the bundle is unusable. AlreadyExists: id is taken.
	Create(ctx context.Context, c *CreateConfig) (pid int, err error)

	// Start starts the created init (OCI "start"). io is the init's stdio
	// once more, for runtimes that connect it at start rather than at
	// create (gVisor sub-containers); others ignore it.
	// NotFound: no such container.
	Start(ctx context.Context, id string, io *IO) error

	// Restore creates and starts the container from a checkpoint image and
	// returns the init pid. NotImplemented where unsupported;
	// FailedPrecondition where this host cannot (runc: a CRIU too old for
	// the kernel).
	Restore(ctx context.Context, c *CreateConfig, r *RestoreConfig) (pid int, err error)

	// Exec starts an additional process in a running container and returns
	// its host pid. NotFound: no such container; FailedPrecondition: not
	// running.
	Exec(ctx context.Context, id string, e *ExecConfig) (pid int, err error)

	// Kill signals the init, or with all every process of the container.
	// NotFound: the container or its init is gone.
	Kill(ctx context.Context, id string, sig syscall.Signal, all bool) error

	// Signal signals one exec, by its id and the pid Exec returned.
	// NotFound: the process is gone.
	Signal(ctx context.Context, id string, p ExecProcess, sig syscall.Signal) error

	// Delete removes the container's runtime state; force kills it first.
	// Deleting a container that does not exist succeeds, so Delete can be
	// retried.
	Delete(ctx context.Context, id string, force bool) error

	// Pause and Resume freeze and thaw every process of the container.
	// FailedPrecondition: wrong state. NotImplemented where unsupported.
	Pause(ctx context.Context, id string) error
	Resume(ctx context.Context, id string) error

	// Update changes the container's resources.
	Update(ctx context.Context, id string, r *specs.LinuxResources) error

	// Pids lists the host pids of the container's processes.
	Pids(ctx context.Context, id string) ([]int, error)

	// Cgroup returns the host cgroup of the container whose init is pid, or
	// nil if it has none. The task service watches it for OOM kills and
	// hands it back to Stats.
	Cgroup(ctx context.Context, id string, pid int) (cgroup.Cgroup, error)

	// Stats returns the container's metrics; cg is what Cgroup returned.
	// NotFound: the container has no cgroup any more.
	Stats(ctx context.Context, id string, cg cgroup.Cgroup) (*cgroup.Metrics, error)

	// Checkpoint dumps the container's state. NotImplemented where
	// unsupported; FailedPrecondition where this host cannot (runc: a CRIU
	// too old for the kernel), with the container left as it was.
	Checkpoint(ctx context.Context, id string, c *CheckpointConfig) error
}

// InitWaiter is implemented by backends whose init pid is not the
// container's process (gVisor: it is the sandbox, shared by a pod's
// containers). The task service then learns the init's exit from WaitInit
// and ignores the reaper's report for that pid. Exec exits still come from
// the reaper: the pid Exec returns must be a child of the shim that exits
// with the process's status.
type InitWaiter interface {
	// WaitInit blocks until the started container's init exits.
	WaitInit(ctx context.Context, id string) (Exit, error)
}

// Exit is a process's exit. Status is the exit code, or 128+signal.
type Exit struct {
	Pid       int
	Status    int
	Timestamp time.Time
}

// IO is the stdio of one process as a runtime sees it: the files the
// process gets. The shim owns them and closes its copies once the process
// has started; a backend must not keep them past the call it got them in.
type IO struct {
	// Stdin, Stdout, Stderr are the process's ends; nil means none
	// (/dev/null for the runtime to choose).
	Stdin, Stdout, Stderr *os.File
}

// Console is the unix socket a runtime sends a terminal's pty master to,
// when the process has a terminal.
type Console struct {
	// Path is the socket's path.
	Path string
}

// ExecProcess names an exec to signal.
type ExecProcess struct {
	ID  string
	Pid int
}

// Container is what a backend is built for: one container of one task.
type Container struct {
	ID        string
	Namespace string
	Bundle    bundle.Bundle
	Spec      *specs.Spec
	// Group is the shim group (a pod) the container belongs to.
	Group string
	// Reaper is the shim's reaper, for backends that wait for children of
	// their own.
	Reaper ReaperGate
}

// ReaperGate holds the shim's full reap off while a backend waits for its
// own children by pid: the reaper's wait4(-1) would otherwise take their
// exit statuses first. Children the backend tracks are still reaped
// meanwhile (pkg/reaper); the others are collected once the last holder
// resumes.
type ReaperGate interface {
	// Pause holds the full reap off until resume is called. It does not
	// wait for other holders.
	Pause() (resume func())
	// Track names pid as a child no one waits for by pid (a container's
	// init or exec, a sandbox holder), so that its exit is collected even
	// while the gate is held. Call it between a Pause taken before the
	// child was started and its resume: the pid is then still that
	// child's.
	Track(pid int)
}

// NoReaper is the gate of a process without a reaper (the "delete" action).
type NoReaper struct{}

// Pause implements ReaperGate.
func (NoReaper) Pause() func() { return func() {} }

// Track implements ReaperGate.
func (NoReaper) Track(int) {}

// CreateConfig describes a container to create.
type CreateConfig struct {
	ID     string
	Bundle bundle.Bundle
	// IO is the init's stdio; nil with a terminal.
	IO *IO
	// Console receives the pty master when the spec asks for a terminal.
	Console *Console
	// PidFile is where the runtime writes the init pid.
	PidFile string
}

// RestoreConfig describes a checkpoint to restore from.
type RestoreConfig struct {
	ImagePath  string
	ParentPath string
	WorkDir    string
}

// ExecConfig describes an additional process.
type ExecConfig struct {
	ID      string
	Spec    *specs.Process
	IO      *IO
	Console *Console
	PidFile string
}

// CheckpointConfig mirrors containerd's runc checkpoint options.
type CheckpointConfig struct {
	ImagePath                string
	WorkDir                  string
	ParentPath               string
	Exit                     bool
	AllowOpenTCP             bool
	AllowExternalUnixSockets bool
	AllowTerminal            bool
	FileLocks                bool
	EmptyNamespaces          []string
}
