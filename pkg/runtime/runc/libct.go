package runc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/capabilities"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	"github.com/opencontainers/runc/libcontainer/specconv"
	runcfeatures "github.com/opencontainers/runc/types/features"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
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
