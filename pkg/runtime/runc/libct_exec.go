package runc

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// Exec implements runtime.Backend: runc exec --detach.
func (b *libBackend) Exec(ctx context.Context, id string, e *runtime.ExecConfig) (int, error) {
	c, err := b.get(id)
	if err != nil {
		return 0, err
	}
	// No freeze between the state check and the exec's start: a runc
	// init frozen while it joins the container would never report to
	// libcontainer, which waits for it holding the container's lock, so
	// that no Resume could thaw it (found by make soak: pause racing
	// execs left the container frozen for good).
	b.freeze.Lock()
	defer b.freeze.Unlock()
	switch st, err := c.Status(); {
	case err != nil:
		return 0, libError(err)
	case st == libcontainer.Paused:
		return 0, fmt.Errorf("cannot exec in a paused container: %w", errdefs.ErrFailedPrecondition)
	case st == libcontainer.Stopped:
		return 0, fmt.Errorf("cannot exec in a stopped container: %w", errdefs.ErrFailedPrecondition)
	}
	proc, err := newProcess(e.Spec)
	if err != nil {
		return 0, err
	}
	release, err := b.attach(proc, e.IO, e.Console)
	if err != nil {
		return 0, err
	}
	defer release()
	b.startMu.Lock()
	resume := b.gate.Pause()
	err = c.Run(proc)
	var pid int
	if err == nil {
		// Still under the gate: the process cannot have been reaped, so
		// its pid is still its own.
		pid, err = b.trackExec(e.ID, proc)
	}
	resume()
	b.startMu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("exec in container %s: %w", id, startError(err))
	}
	if err := writePidFile(e.PidFile, pid); err != nil {
		// The process runs, and the task layer, which gets no pid, would
		// never know it.
		b.killStarted(ctx, proc)
		return 0, err
	}
	return pid, nil
}

// killStarted ends an exec process whose start failed after it ran:
// SIGKILL (through its pidfd: Go's os.Process keeps one), and reaped here,
// under the gate, so that its exit never reaches the reaper as a pid no
// process claims.
func (b *libBackend) killStarted(ctx context.Context, proc *libcontainer.Process) {
	resume := b.gate.Pause()
	defer resume()
	if err := proc.Signal(unix.SIGKILL); err != nil {
		log.G(ctx).WithError(err).Warn("kill exec process after a failed start")
	}
	// ECHILD: the reaper collected it first (its pid is tracked).
	var exitErr *exec.ExitError
	if _, err := proc.Wait(); err != nil && !errors.As(err, &exitErr) && !errors.Is(err, unix.ECHILD) {
		log.G(ctx).WithError(err).Warn("wait for exec process killed after a failed start")
	}
}

// Kill implements runtime.Backend: runc kill. With all, every process of
// the container gets the signal, as runc 1.1's kill --all did (runc 1.5
// signals only the init unless the signal is SIGKILL).
func (b *libBackend) Kill(ctx context.Context, id string, sig syscall.Signal, all bool) error {
	c, err := b.get(id)
	if err != nil {
		if all && errdefs.IsNotFound(err) {
			return nil
		}
		return err
	}
	if all && sig != unix.SIGKILL {
		return b.signalAll(c, sig)
	}
	err = c.Signal(sig)
	switch {
	case err == nil:
		return nil
	case all && errors.Is(err, libcontainer.ErrNotRunning):
		return nil
	}
	return fmt.Errorf("signal container %s: %w", id, libError(err))
}

// signalAll signals every process of the container as runc kill --all
// does: with the cgroup frozen, so that no listed process can exit, be
// reaped and leave its pid to another before it is signalled. libcontainer
// 1.5 does this itself only for SIGKILL (Container.Signal). A container
// already paused stays paused; it gets the signal when resumed.
func (b *libBackend) signalAll(c *libcontainer.Container, sig unix.Signal) error {
	st, err := c.State()
	if err != nil {
		return fmt.Errorf("signal container %s: %w", c.ID(), libError(err))
	}
	cfg := c.Config()
	m, err := manager.NewWithPaths(cfg.Cgroups, st.CgroupPaths)
	if err != nil {
		return fmt.Errorf("signal container %s: cgroup: %w", c.ID(), err)
	}
	b.freeze.Lock()
	defer b.freeze.Unlock()
	if fs, err := m.GetFreezerState(); err == nil && fs != cgroups.Frozen {
		if err := m.Freeze(cgroups.Frozen); err != nil {
			return fmt.Errorf("freeze container %s to signal its processes: %w", c.ID(), err)
		}
		defer func() { _ = m.Freeze(cgroups.Thawed) }()
	}
	pids, err := m.GetAllPids()
	if err != nil {
		return fmt.Errorf("list processes of container %s: %w", c.ID(), err)
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("signal process %d of container %s: %w", pid, c.ID(), err)
		}
	}
	return nil
}

// trackExec keeps a pidfd of a started exec for Signal, then lets the
// reaper collect it: the caller holds the reaper off, so until Track the
// pid is still the process's, if only as a zombie. (Tracked first, an exec
// that exits at once could be reaped, and its pid reused, before the
// pidfd was open.)
func (b *libBackend) trackExec(id string, proc *libcontainer.Process) (int, error) {
	pid, err := proc.Pid()
	if err != nil {
		return 0, err
	}
	if err := b.execs.Add(id, pid); err != nil {
		_ = proc.Signal(unix.SIGKILL) // no safe way to signal it later
		b.gate.Track(pid)
		return 0, err
	}
	b.gate.Track(pid)
	return pid, nil
}

// Signal implements runtime.Backend: an exec is signalled through the
// pidfd taken when it started. One that has exited, or that this backend
// did not start, is NotFound: its pid may be another process's now.
func (b *libBackend) Signal(ctx context.Context, id string, p runtime.ExecProcess, sig syscall.Signal) error {
	if err := b.execs.Signal(p.ID, p.Pid, sig); err != nil {
		return fmt.Errorf("container %s: %w", id, err)
	}
	return nil
}

// newProcess turns an OCI process into a libcontainer one, as runc's own
// newProcess (utils_linux.go) does.
func newProcess(p *specs.Process) (*libcontainer.Process, error) {
	if p == nil {
		return nil, fmt.Errorf("field \"process\": missing: %w", errdefs.ErrInvalidArgument)
	}
	lp := &libcontainer.Process{
		Args:            p.Args,
		Env:             p.Env,
		UID:             int(p.User.UID),
		GID:             int(p.User.GID),
		Cwd:             p.Cwd,
		Label:           p.SelinuxLabel,
		NoNewPrivileges: &p.NoNewPrivileges,
		AppArmorProfile: p.ApparmorProfile,
		Scheduler:       p.Scheduler,
		IOPriority:      p.IOPriority,
		LogLevel:        strconv.Itoa(int(logrus.GetLevel())),
	}
	if p.ConsoleSize != nil {
		lp.ConsoleWidth = uint16(p.ConsoleSize.Width)
		lp.ConsoleHeight = uint16(p.ConsoleSize.Height)
	}
	if c := p.Capabilities; c != nil {
		lp.Capabilities = &configs.Capabilities{
			Bounding: c.Bounding, Effective: c.Effective, Inheritable: c.Inheritable, Permitted: c.Permitted, Ambient: c.Ambient,
		}
	}
	for _, g := range p.User.AdditionalGids {
		lp.AdditionalGroups = append(lp.AdditionalGroups, int(g))
	}
	for _, rl := range p.Rlimits {
		t, ok := rlimits[rl.Type]
		if !ok {
			return nil, fmt.Errorf("field \"process.rlimits\": unknown rlimit %q: %w", rl.Type, errdefs.ErrInvalidArgument)
		}
		lp.Rlimits = append(lp.Rlimits, configs.Rlimit{Type: t, Hard: rl.Hard, Soft: rl.Soft})
	}
	aff, err := configs.ConvertCPUAffinity(p.ExecCPUAffinity)
	if err != nil {
		return nil, fmt.Errorf("field \"process.execCPUAffinity\": %w: %w", err, errdefs.ErrInvalidArgument)
	}
	lp.CPUAffinity = aff
	return lp, nil
}

var rlimits = map[string]int{
	"RLIMIT_CPU": unix.RLIMIT_CPU, "RLIMIT_FSIZE": unix.RLIMIT_FSIZE, "RLIMIT_DATA": unix.RLIMIT_DATA,
	"RLIMIT_STACK": unix.RLIMIT_STACK, "RLIMIT_CORE": unix.RLIMIT_CORE, "RLIMIT_RSS": unix.RLIMIT_RSS,
	"RLIMIT_NPROC": unix.RLIMIT_NPROC, "RLIMIT_NOFILE": unix.RLIMIT_NOFILE, "RLIMIT_MEMLOCK": unix.RLIMIT_MEMLOCK,
	"RLIMIT_AS": unix.RLIMIT_AS, "RLIMIT_LOCKS": unix.RLIMIT_LOCKS, "RLIMIT_SIGPENDING": unix.RLIMIT_SIGPENDING,
	"RLIMIT_MSGQUEUE": unix.RLIMIT_MSGQUEUE, "RLIMIT_NICE": unix.RLIMIT_NICE, "RLIMIT_RTPRIO": unix.RLIMIT_RTPRIO,
	"RLIMIT_RTTIME": unix.RLIMIT_RTTIME,
}
