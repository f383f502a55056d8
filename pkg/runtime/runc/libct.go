package runc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/capabilities"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	"github.com/opencontainers/runc/libcontainer/specconv"
	runcfeatures "github.com/opencontainers/runc/types/features"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	// Device rules for libcontainer's cgroup managers.
	_ "github.com/opencontainers/cgroups/devices"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/pidfd"
)

// libBackend drives one container in the shim's own process through
// libcontainer, runc's Go library, instead of three runc CLI processes per
// container. The container's init is the shim binary re-executed as
// "init" (cmd/containerd-shim-custom-v2 calls libcontainer.Init for it).
//
// The traps of embedding libcontainer in a shim, and what is done about
// each:
//   - libcontainer waits for its own children (runc init's stages, hooks,
//     specconv's user namespace helper) by pid, and the shim's reaper (wait4(-1)) would take their statuses
//     first: every call that forks runs under gate.Pause, which holds the
//     full reap off until it returns. The init or exec it started is
//     tracked before the resume (libcontainer never waits for those), so
//     the reaper still collects container exits while another call holds
//     the gate (pkg/reaper).
//   - Container.Start marks every descriptor from 3 up close-on-exec in the
//     calling process (CVE-2024-21626 hardening). The shim hands
//     descriptors to children only through exec.Cmd's ExtraFiles, which
//     clears the flag, so nothing it relies on is lost.
//   - specconv resolves a relative rootfs and bind-mount sources against
//     the process's working directory, and records it as the bundle in the
//     OCI state hooks receive; a grouped shim's working directory is the
//     first task's bundle, so paths are made absolute against this task's
//     bundle and the label is corrected.
//   - The init binary is sealed by libcontainer (exeseal): an overlayfs
//     mount where the kernel allows it, else a memfd copy per container;
//     docs/benchmarks.md records which one runs here and what it costs.
type libBackend struct {
	cfg    Config
	root   string // libcontainer's state root for the namespace
	bundle bundle.Bundle
	spec   *specs.Spec
	gate   runtime.ReaperGate

	mu        sync.Mutex
	container *libcontainer.Container // guarded by mu; nil before Create and after Delete
	// execs holds a pidfd of each exec process that may still run: an
	// exec is signalled only through it, never by a pid the reaper may
	// have freed.
	execs pidfd.Table

	// freeze serialises Pause, Resume, kill --all's freeze and an exec's
	// start, so that a kill never thaws a container paused meanwhile and
	// no exec's runc init is frozen half way. Taken before startMu.
	freeze sync.Mutex

	// startMu orders Update's setting and clearing of the config's
	// SkipDevices, done outside libcontainer's lock, against an exec's
	// start, where libcontainer checks it. Held across those two
	// libcontainer calls only (which hold the container's own lock
	// throughout anyway).
	startMu sync.Mutex
}

var _ runtime.Backend = (*libBackend)(nil)

func newLibBackend(cfg Config, c *runtime.Container) *libBackend {
	return &libBackend{
		cfg:    cfg,
		root:   filepath.Join(cfg.Root, c.Namespace),
		bundle: c.Bundle,
		spec:   c.Spec,
		gate:   c.Reaper,
	}
}

func (b *libBackend) get(id string) (*libcontainer.Container, error) {
	b.mu.Lock()
	c := b.container
	b.mu.Unlock()
	if c != nil {
		return c, nil
	}
	// Not created by this shim (the "delete" action after a shim died).
	c, err := libcontainer.Load(b.root, id)
	if err != nil {
		return nil, libError(err)
	}
	return c, nil
}

// libcontainerConfig converts the bundle's spec as runc create would from
// the bundle directory.
func (b *libBackend) libcontainerConfig(id string) (*configs.Config, error) {
	spec := *b.spec
	if spec.Root != nil && !filepath.IsAbs(spec.Root.Path) {
		root := *spec.Root
		root.Path = filepath.Join(b.bundle.Path(), root.Path)
		spec.Root = &root
	}
	spec.Mounts = slices.Clone(spec.Mounts)
	for i, m := range spec.Mounts {
		if m.Source != "" && !filepath.IsAbs(m.Source) && isBind(m) {
			spec.Mounts[i].Source = filepath.Join(b.bundle.Path(), m.Source)
		}
	}
	// With user namespace mappings specconv forks a helper to read them
	// and waits for it by pid: a child, hence the gate.
	resume := b.gate.Pause()
	config, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		CgroupName:       id,
		UseSystemdCgroup: b.cfg.SystemdCgroup,
		NoPivotRoot:      b.cfg.NoPivotRoot,
		NoNewKeyring:     b.cfg.NoNewKeyring,
		Spec:             &spec,
	})
	resume()
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", b.bundle.Spec(), err, errdefs.ErrInvalidArgument)
	}
	for i, l := range config.Labels {
		if len(l) >= 7 && l[:7] == "bundle=" {
			config.Labels[i] = "bundle=" + b.bundle.Path()
		}
	}
	return config, nil
}

func isBind(m specs.Mount) bool {
	if m.Type == "bind" {
		return true
	}
	return slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}

// Create implements runtime.Backend: runc create.
func (b *libBackend) Create(ctx context.Context, cc *runtime.CreateConfig) (_ int, retErr error) {
	config, err := b.libcontainerConfig(cc.ID)
	if err != nil {
		return 0, err
	}
	c, err := libcontainer.Create(b.root, cc.ID, config)
	if err != nil {
		return 0, fmt.Errorf("create container %s: %w", cc.ID, libError(err))
	}
	defer func() {
		if retErr != nil {
			if err := b.destroy(c); err != nil {
				log.G(ctx).WithError(err).Warn("destroy container after failed create")
			}
		}
	}()
	proc, err := newProcess(b.spec.Process)
	if err != nil {
		return 0, err
	}
	proc.Init = true
	release, err := b.attach(proc, cc.IO, cc.Console)
	if err != nil {
		return 0, err
	}
	defer release()
	resume := b.gate.Pause()
	err = c.Start(proc)
	var pid int
	if err == nil {
		pid, err = b.track(proc)
	}
	resume()
	if err != nil {
		return 0, fmt.Errorf("start container init: %w", startError(err))
	}
	if err := writePidFile(cc.PidFile, pid); err != nil {
		return 0, err
	}
	b.mu.Lock()
	b.container = c
	b.mu.Unlock()
	return pid, nil
}

// attach connects a process's stdio and, with a terminal, the socket its
// pty master goes to. release closes what only the call needed.
func (b *libBackend) attach(proc *libcontainer.Process, io *runtime.IO, console *runtime.Console) (release func(), err error) {
	if io != nil {
		// Typed nils would make exec.Cmd copy through goroutines.
		if io.Stdin != nil {
			proc.Stdin = io.Stdin
		}
		if io.Stdout != nil {
			proc.Stdout = io.Stdout
		}
		if io.Stderr != nil {
			proc.Stderr = io.Stderr
		}
	}
	if console == nil {
		return func() {}, nil
	}
	conn, err := net.Dial("unix", console.Path)
	if err != nil {
		return nil, fmt.Errorf("connect to console socket %s: %w", console.Path, err)
	}
	f, err := conn.(*net.UnixConn).File()
	_ = conn.Close() // f, if any, is a duplicate of its descriptor
	if err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	proc.ConsoleSocket = f
	return func() { _ = f.Close() }, nil // only the shim's copy of the socket
}

// track hands the reaper the pid of a process libcontainer started, before
// the caller resumes the gate it held across the start: libcontainer never
// waits for it once started, so the reaper may collect its exit while
// another create holds the gate.
func (b *libBackend) track(proc *libcontainer.Process) (int, error) {
	pid, err := proc.Pid()
	if err != nil {
		return 0, err
	}
	b.gate.Track(pid)
	return pid, nil
}

// Start implements runtime.Backend: runc start.
func (b *libBackend) Start(ctx context.Context, id string, _ *runtime.IO) error {
	c, err := b.get(id)
	if err != nil {
		return err
	}
	resume := b.gate.Pause() // poststart hooks are children
	err = c.Exec()
	resume()
	if err != nil {
		return fmt.Errorf("start container %s: %w", id, libError(err))
	}
	return nil
}

// Restore implements runtime.Backend.
func (b *libBackend) Restore(ctx context.Context, cc *runtime.CreateConfig, r *runtime.RestoreConfig) (_ int, retErr error) {
	if _, err := lookCriu(); err != nil {
		return 0, err
	}
	config, err := b.libcontainerConfig(cc.ID)
	if err != nil {
		return 0, err
	}
	c, err := libcontainer.Create(b.root, cc.ID, config)
	if err != nil {
		return 0, fmt.Errorf("create container %s: %w", cc.ID, libError(err))
	}
	defer func() {
		if retErr != nil {
			// A step after CRIU's restore can fail with the container
			// running, which Destroy refuses: end it first.
			if err := b.kill(context.WithoutCancel(ctx), c); err != nil {
				log.G(ctx).WithError(err).Warn("kill container after failed restore")
			}
			if err := b.destroy(c); err != nil {
				log.G(ctx).WithError(err).Warn("destroy container after failed restore")
			}
		}
	}()
	proc, err := newProcess(b.spec.Process)
	if err != nil {
		return 0, err
	}
	proc.Init = true
	release, err := b.attach(proc, cc.IO, cc.Console)
	if err != nil {
		return 0, err
	}
	defer release()
	work := r.WorkDir
	if work == "" {
		work = b.criuWorkDir()
	}
	resume := b.gate.Pause()
	err = c.Restore(proc, &libcontainer.CriuOpts{
		ImagesDirectory:         r.ImagePath,
		ParentImage:             r.ParentPath,
		WorkDirectory:           work,
		ExternalUnixConnections: true,
		ShellJob:                cc.Console != nil,
	})
	var pid int
	if err == nil {
		pid, err = b.track(proc)
	}
	resume()
	if err != nil {
		return 0, fmt.Errorf("restore container %s: %w", cc.ID, libError(err))
	}
	if err := writePidFile(cc.PidFile, pid); err != nil {
		return 0, err
	}
	b.mu.Lock()
	b.container = c
	b.mu.Unlock()
	return pid, nil
}

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

// Delete implements runtime.Backend: runc delete.
func (b *libBackend) Delete(ctx context.Context, id string, force bool) error {
	c, err := b.get(id)
	if errdefs.IsNotFound(err) {
		// An aborted create can leave a state directory without a state
		// file, which Load does not see (runc delete does the same).
		// As runc delete, a leftover that will not go is reported, not
		// returned: the container is gone either way.
		if err := os.RemoveAll(filepath.Join(b.root, id)); err != nil {
			log.G(ctx).WithError(err).Warn("remove container state directory")
		}
		return nil
	}
	if err != nil {
		return err
	}
	st, err := c.Status()
	if err != nil {
		return libError(err)
	}
	switch {
	case force || st == libcontainer.Created:
		if err := b.kill(ctx, c); err != nil {
			return err
		}
	case st == libcontainer.Stopped:
	default:
		return fmt.Errorf("cannot delete container %s that is %s: %w", id, st, errdefs.ErrFailedPrecondition)
	}
	if err := b.destroy(c); err != nil {
		return err
	}
	b.mu.Lock()
	b.container = nil
	b.mu.Unlock()
	b.execs.Close()
	return nil
}

// kill ends every process of the container and waits for its init to go,
// as runc delete --force does.
func (b *libBackend) kill(ctx context.Context, c *libcontainer.Container) error {
	_ = c.Signal(unix.SIGKILL)
	for range 100 {
		if !initRunning(c) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("container %s: init still running after SIGKILL", c.ID())
}

// initRunning reports whether c's init still runs. Signal 0 fails once init
// is gone (libcontainer.ErrNotRunning, or ESRCH if it went between
// libcontainer's check and the signal): that failure is the answer kill
// polls for, not an error to report, so any failure counts as gone.
func initRunning(c *libcontainer.Container) bool {
	return c.Signal(unix.Signal(0)) == nil
}

// destroy removes the container's cgroup and state and runs its poststop
// hooks (children, hence the gate).
func (b *libBackend) destroy(c *libcontainer.Container) error {
	resume := b.gate.Pause()
	err := c.Destroy()
	resume()
	if err != nil {
		return fmt.Errorf("destroy container %s: %w", c.ID(), libError(err))
	}
	return nil
}

// Pause implements runtime.Backend.
func (b *libBackend) Pause(ctx context.Context, id string) error {
	c, err := b.get(id)
	if err != nil {
		return err
	}
	b.freeze.Lock()
	defer b.freeze.Unlock()
	if err := c.Pause(); err != nil {
		return fmt.Errorf("pause container %s: %w", id, libError(err))
	}
	return nil
}

// Resume implements runtime.Backend.
func (b *libBackend) Resume(ctx context.Context, id string) error {
	c, err := b.get(id)
	if err != nil {
		return err
	}
	b.freeze.Lock()
	defer b.freeze.Unlock()
	if err := c.Resume(); err != nil {
		return fmt.Errorf("resume container %s: %w", id, libError(err))
	}
	return nil
}

// Update implements runtime.Backend: runc update --resources.
func (b *libBackend) Update(ctx context.Context, id string, r *specs.LinuxResources) error {
	c, err := b.get(id)
	if err != nil {
		return err
	}
	// Config is a shallow copy: its Cgroups and Resources are the live
	// container's, shared with its cgroup manager, and Set rolls a refused
	// update back to them. The update goes to a copy of its own.
	config := c.Config()
	live := config.Cgroups.Resources
	if live == nil {
		live = &cgroups.Resources{} // nothing to roll back to, nothing shared
	}
	config.Cgroups = cloneCgroup(config.Cgroups)
	applyResources(&config, r)
	// As runc update, skip the device rules, which keeps those a device
	// plugin added; in the rollback of a refused update too, which
	// applies the live resources. Only for this Set: libcontainer refuses
	// to start a process in a container whose config has the flag (runc's
	// CLI never keeps it: state.json leaves it out). startMu orders these
	// writes against that check, the flag's only other reader.
	b.startMu.Lock()
	defer b.startMu.Unlock()
	live.SkipDevices, config.Cgroups.SkipDevices = true, true
	err = c.Set(config)
	live.SkipDevices, config.Cgroups.SkipDevices = false, false
	if err != nil {
		return fmt.Errorf("update container %s: %w", id, libError(err))
	}
	return nil
}

// cloneCgroup copies a cgroup configuration deeply enough for
// applyResources: the structs, and the device lists whose entries it
// changes in place. What it only replaces (maps, pointers to values) stays
// shared.
func cloneCgroup(cg *cgroups.Cgroup) *cgroups.Cgroup {
	c := *cg
	if cg.Resources == nil {
		c.Resources = &cgroups.Resources{}
		return &c
	}
	r := *cg.Resources
	r.BlkioWeightDevice = cloneEntries(r.BlkioWeightDevice)
	r.BlkioThrottleReadBpsDevice = cloneEntries(r.BlkioThrottleReadBpsDevice)
	r.BlkioThrottleWriteBpsDevice = cloneEntries(r.BlkioThrottleWriteBpsDevice)
	r.BlkioThrottleReadIOPSDevice = cloneEntries(r.BlkioThrottleReadIOPSDevice)
	r.BlkioThrottleWriteIOPSDevice = cloneEntries(r.BlkioThrottleWriteIOPSDevice)
	c.Resources = &r
	return &c
}

func cloneEntries[T any](s []*T) []*T {
	if s == nil {
		return nil
	}
	out := make([]*T, len(s))
	for i, e := range s {
		v := *e
		out[i] = &v
	}
	return out
}

// Pids implements runtime.Backend.
func (b *libBackend) Pids(ctx context.Context, id string) ([]int, error) {
	c, err := b.get(id)
	if err != nil {
		return nil, err
	}
	pids, err := c.Processes()
	if err != nil {
		return nil, fmt.Errorf("list processes of container %s: %w", id, libError(err))
	}
	return pids, nil
}

// Cgroup implements runtime.Backend.
func (b *libBackend) Cgroup(ctx context.Context, id string, pid int) (cgroup.Cgroup, error) {
	return cgroup.Load(pid)
}

// Stats implements runtime.Backend: read from the cgroup, as the CLI
// backend does.
func (b *libBackend) Stats(ctx context.Context, id string, cg cgroup.Cgroup) (*cgroup.Metrics, error) {
	if cg == nil {
		return nil, fmt.Errorf("task %s has no cgroup: %w", id, errdefs.ErrNotFound)
	}
	return cg.Stats()
}

// Checkpoint implements runtime.Backend.
func (b *libBackend) Checkpoint(ctx context.Context, id string, cc *runtime.CheckpointConfig) error {
	if _, err := lookCriu(); err != nil {
		return err
	}
	c, err := b.get(id)
	if err != nil {
		return err
	}
	work := cc.WorkDir
	if work == "" {
		work = filepath.Join(b.criuWorkDir(), "criu-work")
		defer os.RemoveAll(work)
	}
	if err := os.MkdirAll(cc.ImagePath, 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(work, 0o700); err != nil {
		return err
	}
	resume := b.gate.Pause() // criu is a child
	err = c.Checkpoint(&libcontainer.CriuOpts{
		ImagesDirectory:         cc.ImagePath,
		WorkDirectory:           work,
		ParentImage:             cc.ParentPath,
		LeaveRunning:            !cc.Exit,
		TcpEstablished:          cc.AllowOpenTCP,
		ExternalUnixConnections: cc.AllowExternalUnixSockets,
		ShellJob:                cc.AllowTerminal,
		FileLocks:               cc.FileLocks,
		EmptyNs:                 emptyNamespaces(cc.EmptyNamespaces),
	})
	resume()
	if err != nil {
		// The work directory goes away; keep criu's log in the bundle.
		// The error names the copy only if there is one.
		if data, rerr := os.ReadFile(filepath.Join(work, "dump.log")); rerr == nil && os.WriteFile(b.bundle.CriuDumpLog(), data, 0o600) == nil {
			return fmt.Errorf("checkpoint container %s: %w (criu log: %s)", id, libError(err), b.bundle.CriuDumpLog())
		}
		return fmt.Errorf("checkpoint container %s: %w", id, libError(err))
	}
	return nil
}

func (b *libBackend) criuWorkDir() string {
	if b.cfg.CriuWorkPath != "" {
		return b.cfg.CriuWorkPath
	}
	return b.bundle.CriuWork()
}

// emptyNamespaces is criu's mask of namespaces not to checkpoint: runc
// never manages network devices, and "network" is the only one it lets a
// caller add (checkpoint.go).
func emptyNamespaces(names []string) uint32 {
	flags := uint32(unix.CLONE_NEWNET)
	for _, n := range names {
		if specs.LinuxNamespaceType(n) == specs.NetworkNamespace {
			flags |= unix.CLONE_NEWNET
		}
	}
	return flags
}

// libError gives libcontainer's errors their errdefs kinds. They are Go
// errors, so no message is matched.
func libError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, libcontainer.ErrNotExist), errors.Is(err, libcontainer.ErrCgroupNotExist):
		return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
	case errors.Is(err, libcontainer.ErrExist):
		return fmt.Errorf("%w: %w", err, errdefs.ErrAlreadyExists)
	case errors.Is(err, libcontainer.ErrNotRunning):
		// The container's processes are gone: a kill is answered NotFound
		// (CRI reads "already stopped"), as the CLI backends do.
		return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
	case errors.Is(err, libcontainer.ErrPaused), errors.Is(err, libcontainer.ErrNotPaused), errors.Is(err, libcontainer.ErrRunning):
		return fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
	case errors.Is(err, libcontainer.ErrInvalidID):
		return fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	return err
}

// startError classifies a failed start of a container process: what runc
// init reports about the process (a missing executable, a bad cwd) is the
// bundle's fault, as runc create says.
func startError(err error) error {
	// An identity test, not errors.Is: libError returns err itself when
	// it knows no kind for it.
	if k := libError(err); k != err { //nolint:errorlint // see above
		return k
	}
	var errno unix.Errno
	if errors.As(err, &errno) && (errno == unix.ENOENT || errno == unix.EACCES || errno == unix.ENOTDIR) {
		return fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	return err
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

// applyResources updates a container's cgroup configuration as runc 1.5.3's
// "update --resources" does (update.go): the same fields, the same
// defaults for what the request leaves out.
func applyResources(config *configs.Config, in *specs.LinuxResources) {
	r := specs.LinuxResources{
		Memory:  &specs.LinuxMemory{CheckBeforeUpdate: ptr(false)},
		CPU:     &specs.LinuxCPU{},
		BlockIO: &specs.LinuxBlockIO{},
		Pids:    &specs.LinuxPids{},
	}
	if in.Memory != nil {
		m := *in.Memory
		if m.CheckBeforeUpdate == nil {
			m.CheckBeforeUpdate = ptr(false)
		}
		r.Memory = &m
	}
	if in.CPU != nil {
		r.CPU = in.CPU
	}
	if in.BlockIO != nil {
		r.BlockIO = in.BlockIO
	}
	if in.Pids != nil {
		r.Pids = in.Pids
	}
	r.Unified = in.Unified
	if r.Memory.Limit != nil && *r.Memory.Limit == -1 && r.Memory.Swap == nil {
		r.Memory.Swap = ptr[int64](0)
	}
	if r.CPU.Idle != nil && r.CPU.Shares == nil {
		r.CPU.Shares = ptr[uint64](0)
	}
	res := config.Cgroups.Resources
	if r.BlockIO.Weight != nil {
		res.BlkioWeight = *r.BlockIO.Weight
	}
	if r.BlockIO.LeafWeight != nil {
		res.BlkioLeafWeight = *r.BlockIO.LeafWeight
	}
	for _, wd := range r.BlockIO.WeightDevice {
		res.BlkioWeightDevice = upsertWeightDevice(res.BlkioWeightDevice, wd)
	}
	for _, td := range r.BlockIO.ThrottleReadBpsDevice {
		res.BlkioThrottleReadBpsDevice = upsertThrottleDevice(res.BlkioThrottleReadBpsDevice, td)
	}
	for _, td := range r.BlockIO.ThrottleWriteBpsDevice {
		res.BlkioThrottleWriteBpsDevice = upsertThrottleDevice(res.BlkioThrottleWriteBpsDevice, td)
	}
	for _, td := range r.BlockIO.ThrottleReadIOPSDevice {
		res.BlkioThrottleReadIOPSDevice = upsertThrottleDevice(res.BlkioThrottleReadIOPSDevice, td)
	}
	for _, td := range r.BlockIO.ThrottleWriteIOPSDevice {
		res.BlkioThrottleWriteIOPSDevice = upsertThrottleDevice(res.BlkioThrottleWriteIOPSDevice, td)
	}
	var (
		p uint64
		q int64
	)
	if r.CPU.Period != nil {
		p = *r.CPU.Period
	}
	if r.CPU.Quota != nil {
		q = *r.CPU.Quota
	}
	switch {
	case (p == 0 && q == 0) || (p != 0 && q != 0):
		res.CpuPeriod, res.CpuQuota = p, q
	case p != 0:
		res.CpuPeriod = p
	default:
		res.CpuQuota = q
	}
	res.CpuBurst = r.CPU.Burst
	if r.CPU.Shares != nil {
		res.CpuShares = *r.CPU.Shares
		res.CpuWeight = cgroups.ConvertCPUSharesToCgroupV2Value(*r.CPU.Shares)
	}
	if r.CPU.RealtimePeriod != nil {
		res.CpuRtPeriod = *r.CPU.RealtimePeriod
	}
	if r.CPU.RealtimeRuntime != nil {
		res.CpuRtRuntime = *r.CPU.RealtimeRuntime
	}
	res.CpusetCpus = r.CPU.Cpus
	res.CpusetMems = r.CPU.Mems
	if r.Memory.Limit != nil {
		res.Memory = *r.Memory.Limit
	}
	res.CPUIdle = r.CPU.Idle
	if r.Memory.Reservation != nil {
		res.MemoryReservation = *r.Memory.Reservation
	}
	if r.Memory.Swap != nil {
		res.MemorySwap = *r.Memory.Swap
	}
	if r.Memory.CheckBeforeUpdate != nil {
		res.MemoryCheckBeforeUpdate = *r.Memory.CheckBeforeUpdate
	}
	res.PidsLimit = r.Pids.Limit
	res.Unified = r.Unified
}

func upsertWeightDevice(devices []*cgroups.WeightDevice, wd specs.LinuxWeightDevice) []*cgroups.WeightDevice {
	for i := len(devices) - 1; i >= 0; i-- {
		if devices[i].Major != wd.Major || devices[i].Minor != wd.Minor {
			continue
		}
		if wd.Weight != nil {
			devices[i].Weight = *wd.Weight
		}
		if wd.LeafWeight != nil {
			devices[i].LeafWeight = *wd.LeafWeight
		}
		return devices
	}
	var weight, leafWeight uint16
	if wd.Weight != nil {
		weight = *wd.Weight
	}
	if wd.LeafWeight != nil {
		leafWeight = *wd.LeafWeight
	}
	return append(devices, cgroups.NewWeightDevice(wd.Major, wd.Minor, weight, leafWeight))
}

func upsertThrottleDevice(devices []*cgroups.ThrottleDevice, td specs.LinuxThrottleDevice) []*cgroups.ThrottleDevice {
	for i := len(devices) - 1; i >= 0; i-- {
		if devices[i].Major == td.Major && devices[i].Minor == td.Minor {
			devices[i].Rate = td.Rate
			return devices
		}
	}
	return append(devices, cgroups.NewThrottleDevice(td.Major, td.Minor, td.Rate))
}

func ptr[T any](v T) *T { return &v }

func writePidFile(path string, pid int) error {
	if path == "" {
		return nil
	}
	if err := bundle.WriteFileAtomic(path, []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	return nil
}

// lookCriu finds criu, which checkpoint and restore need.
func lookCriu() (string, error) {
	p, err := exec.LookPath("criu")
	if err != nil {
		return "", fmt.Errorf("checkpoint and restore need criu: %w: %w", err, errdefs.ErrNotImplemented)
	}
	return p, nil
}

// libFeatures describes the linked libcontainer as "runc features" of the
// same version does (runc's features.go), for containerd's -info.
func libFeatures() *features.Features {
	t := true
	feat := &features.Features{
		OCIVersionMin: "1.0.0",
		OCIVersionMax: specs.Version,
		Annotations: map[string]string{
			runcfeatures.AnnotationRuncVersion:           LibraryVersion,
			runcfeatures.AnnotationRuncCheckpointEnabled: "true",
		},
		Hooks:        configs.KnownHookNames(),
		MountOptions: specconv.KnownMountOptions(),
		Linux: &features.Linux{
			Namespaces:   specconv.KnownNamespaces(),
			Capabilities: capabilities.KnownCapabilities(),
			Cgroup:       &features.Cgroup{V1: &t, V2: &t, Systemd: &t, SystemdUser: &t, Rdma: &t},
			Apparmor:     &features.Apparmor{Enabled: &t},
			Selinux:      &features.Selinux{Enabled: &t},
			IntelRdt:     &features.IntelRdt{Enabled: &t, Schemata: &t, Monitoring: &t},
			MemoryPolicy: &features.MemoryPolicy{
				Modes: specconv.KnownMemoryPolicyModes(),
				Flags: specconv.KnownMemoryPolicyFlags(),
			},
			MountExtensions: &features.MountExtensions{IDMap: &features.IDMap{Enabled: &t}},
			NetDevices:      &features.NetDevices{Enabled: &t},
		},
		PotentiallyUnsafeConfigAnnotations: []string{"bundle", "org.systemd.property.", "org.criu.config"},
	}
	if seccomp.Enabled {
		feat.Linux.Seccomp = &features.Seccomp{
			Enabled:        &t,
			Actions:        seccomp.KnownActions(),
			Operators:      seccomp.KnownOperators(),
			Archs:          seccomp.KnownArchs(),
			KnownFlags:     seccomp.KnownFlags(),
			SupportedFlags: seccomp.SupportedFlags(),
		}
		major, minor, patch := seccomp.Version()
		feat.Annotations[runcfeatures.AnnotationLibseccompVersion] = fmt.Sprintf("%d.%d.%d", major, minor, patch)
	}
	return feat
}
