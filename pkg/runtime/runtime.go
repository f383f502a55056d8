// Package runtime is the seam between the task service (pkg/shim) and the
// OCI runtimes that run containers.
//
// A Backend keeps no task state: the task service owns the process state
// machines, the stdio and the events, and calls a backend only for runtime
// work. One Backend value serves one container (it carries that container's
// configuration); its methods are safe for concurrent use.
package runtime

import (
	"context"
	"path/filepath"
	"time"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Backend runs one OCI bundle. Every method documents the errdefs kinds it
// returns; other failures come back wrapped with the runtime's own message.
type Backend interface {
	// Name is the backend's name, e.g. "runc".
	Name() string

	// Create creates the container with its init process waiting to be
	// started (OCI "create") and returns the init pid.
	// InvalidArgument: the bundle is unusable. AlreadyExists: id is taken.
	Create(ctx context.Context, c *CreateConfig) (pid int, err error)

	// Start starts the created init process (OCI "start"). io is the init's
	// stdio once more, for runtimes that connect it at start rather than at
	// create (gVisor sub-containers); others ignore it.
	// NotFound: no such container.
	Start(ctx context.Context, id string, io runc.IO) error

	// Restore creates and starts the container from a checkpoint image and
	// returns the init pid. NotImplemented where unsupported.
	Restore(ctx context.Context, c *CreateConfig, r *RestoreConfig) (pid int, err error)

	// Exec starts an additional process in a running container and returns
	// its pid. NotFound: no such container; FailedPrecondition: not running.
	Exec(ctx context.Context, id string, e *ExecConfig) (pid int, err error)

	// Kill signals the init process, or with all every process of the
	// container. NotFound: the container or its init is gone.
	Kill(ctx context.Context, id string, signal int, all bool) error

	// Signal signals one exec process, by its exec id and the pid Exec
	// returned. NotFound: the process is gone.
	Signal(ctx context.Context, id, execID string, pid int, signal int) error

	// Delete removes the container's runtime state; force kills it first.
	// Deleting a container that does not exist succeeds, so Delete can be
	// retried.
	Delete(ctx context.Context, id string, force bool) error

	// Pause and Resume freeze and thaw every process of the container.
	// NotImplemented where unsupported.
	Pause(ctx context.Context, id string) error
	Resume(ctx context.Context, id string) error

	// Update changes the container's resources.
	Update(ctx context.Context, id string, r *specs.LinuxResources) error

	// Pids lists the host pids of the container's processes.
	Pids(ctx context.Context, id string) ([]int, error)

	// Cgroup returns the host cgroup of the container whose init is pid, a
	// cgroup1.Cgroup or a *cgroup2.Manager, or nil if it has none. The task
	// service watches it for OOM kills and hands it back to Stats.
	Cgroup(ctx context.Context, id string, pid int) (any, error)

	// Stats returns metrics as *cgroup1stats.Metrics or
	// *cgroup2stats.Metrics (what containerd's runc shim returns); cgroup is
	// what Cgroup returned. NotFound: the container has no cgroup any more.
	Stats(ctx context.Context, id string, cgroup any) (any, error)

	// Checkpoint dumps the container's state. NotImplemented where
	// unsupported.
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

// Exit describes a process exit. Status is the exit code, or 128+signal.
type Exit = runc.Exit

// CreateConfig describes a container to create.
type CreateConfig struct {
	ID     string
	Bundle string
	// IO is the stdio handed to the runtime; nil with a terminal.
	IO runc.IO
	// ConsoleSocket receives the pty master when Terminal is set.
	ConsoleSocket runc.ConsoleSocket
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
	ID            string
	Spec          *specs.Process
	IO            runc.IO
	ConsoleSocket runc.ConsoleSocket
	PidFile       string
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

// ExitedAt is a convenience for backends that synthesise exits.
func ExitedAt(pid, status int) Exit {
	return Exit{Pid: pid, Status: status, Timestamp: time.Now()}
}

// ExecPidFile is where an exec's pid file goes in its task's bundle; a
// backend may keep files of its own next to it.
func ExecPidFile(bundle, execID string) string {
	return filepath.Join(bundle, "exec-"+execID+".pid")
}
