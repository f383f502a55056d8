// Package runc is the runc backend, with two drivers: runc's own Go library
// (libcontainer) in the shim's process, the default, and a runc-compatible
// CLI (runc, crun, wrappers) through go-runc, chosen by mode = "cli" or a
// binary_name other than runc.
package runc

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/clilog"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/nsholder"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/pidfd"
)

// Name of this backend.
const Name = "runc"

// DefaultRoot is where runc keeps container state, per namespace.
const DefaultRoot = "/run/containerd/custom/runc"

// Modes of the runc backend.
const (
	// ModeInProcess drives runc's library in the shim's own process.
	ModeInProcess = "in-process"
	// ModeCLI runs binary_name for every runtime command.
	ModeCLI = "cli"
)

// LibraryVersion is the version of runc linked in for the in-process mode.
// runc says its Go API is not stable: an upgrade is a reviewed change of
// go.mod and of this constant.
const LibraryVersion = "1.5.3"

// Config is the [runc] table.
//
//	[runc]
//	mode = "in-process"               # or "cli": run binary_name per command
//	binary_name = "runc"              # any runc-compatible CLI, e.g. crun;
//	                                  # another name than "runc" means mode = "cli"
//	root = "/run/containerd/custom/runc"
//	systemd_cgroup = false
//	no_pivot_root = false
//	no_new_keyring = false
//	criu_work_path = ""               # default: <bundle>/work
type Config struct {
	Mode          string `toml:"mode" json:"mode,omitempty"`
	BinaryName    string `toml:"binary_name" json:"binary_name,omitempty"`
	Root          string `toml:"root" json:"root,omitempty"`
	SystemdCgroup bool   `toml:"systemd_cgroup" json:"systemd_cgroup,omitempty"`
	NoPivotRoot   bool   `toml:"no_pivot_root" json:"no_pivot_root,omitempty"`
	NoNewKeyring  bool   `toml:"no_new_keyring" json:"no_new_keyring,omitempty"`
	CriuWorkPath  string `toml:"criu_work_path" json:"criu_work_path,omitempty"`
}

// Validate implements oci.Section.
func (c *Config) Validate() error {
	if c.BinaryName == "" {
		return fmt.Errorf("field \"runc.binary_name\": must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(c.Root) {
		return fmt.Errorf("field \"runc.root\": %q is not an absolute path: %w", c.Root, errdefs.ErrInvalidArgument)
	}
	switch c.Mode {
	case ModeInProcess, ModeCLI:
	default:
		return fmt.Errorf("field \"runc.mode\": unknown mode %q (want %q or %q): %w", c.Mode, ModeInProcess, ModeCLI, errdefs.ErrInvalidArgument)
	}
	return nil
}

// InProcess reports whether containers run through the linked library:
// the mode says so and binary_name names no other runtime.
func (c *Config) InProcess() bool {
	return c.Mode == ModeInProcess && c.BinaryName == "runc"
}

// Binary implements oci.Section.
func (c *Config) Binary() string { return c.BinaryName }

// ClaimsBinary implements oci.Section: runc is the default backend, chosen
// for any binary no other backend claims.
func (c *Config) ClaimsBinary(string) bool { return false }

// ApplyRuncOptions implements oci.Section.
func (c *Config) ApplyRuncOptions(ro *runcoptions.Options) {
	if ro.BinaryName != "" {
		c.BinaryName = ro.BinaryName
	}
	if ro.Root != "" {
		c.Root = ro.Root
	}
	c.SystemdCgroup = ro.SystemdCgroup
	c.NoPivotRoot = ro.NoPivotRoot
	c.NoNewKeyring = ro.NoNewKeyring
	if ro.CriuWorkPath != "" {
		c.CriuWorkPath = ro.CriuWorkPath
	}
}

// UsesSystemdCgroup implements oci.CgroupDriverSection.
func (c *Config) UsesSystemdCgroup() bool { return c.SystemdCgroup }

// Registration registers the backend with the shim.
func Registration() runtime.Registration {
	return runtime.Registration{
		Name:     Name,
		Settings: func() oci.Section { return &Config{Mode: ModeInProcess, BinaryName: "runc", Root: DefaultRoot} },
		New: func(s oci.Section, c *runtime.Container) (runtime.Backend, error) {
			cfg := *s.(*Config)
			if cfg.InProcess() {
				return newLibBackend(cfg, c), nil
			}
			be, err := New(cfg, c.Namespace, c.Bundle)
			if err != nil {
				return nil, err
			}
			if c.Spec != nil && c.Spec.Linux != nil {
				be.cgroupsPath = c.Spec.Linux.CgroupsPath
			}
			if c.Reaper != nil {
				be.gate = c.Reaper
			}
			return be, nil
		},
		NewPod: func(_ oci.Section, p *runtime.Pod) (runtime.PodSandbox, error) {
			return nsholder.New(p), nil
		},
		Features: func(ctx context.Context, s oci.Section) (*features.Features, error) {
			if s.(*Config).InProcess() {
				return libFeatures(), nil
			}
			return CLIFeatures(ctx, s.Binary())
		},
	}
}

// CLIFeatures asks a runtime CLI for its features ("<binary> features").
func CLIFeatures(ctx context.Context, binary string) (*features.Features, error) {
	path, err := exec.LookPath(binary)
	if err != nil {
		return nil, fmt.Errorf("runtime binary %q not found: %w", binary, errdefs.ErrNotFound)
	}
	return (&gorunc.Runc{Command: path}).Features(ctx)
}

// Backend drives one container through a runc-compatible CLI.
type Backend struct {
	cfg    Config
	bundle bundle.Bundle
	runc   *gorunc.Runc
	// cgroupsPath is the spec's, for a forced delete to remove a cgroup
	// the runtime made but never recorded (killed mid-create).
	cgroupsPath string
	gate        runtime.ReaperGate
	// execs holds a pidfd of each exec process: Signal never uses a pid
	// the reaper may have freed.
	execs pidfd.Table
}

var _ runtime.Backend = (*Backend)(nil)

// New returns the backend for the container in bundle. The binary must
// exist: a missing runtime is reported here, before anything is created.
func New(cfg Config, namespace string, b bundle.Bundle) (*Backend, error) {
	bin, err := exec.LookPath(cfg.BinaryName)
	if err != nil {
		return nil, fmt.Errorf("runc backend: field \"runc.binary_name\": runtime binary %q not found: %w: %w",
			cfg.BinaryName, err, errdefs.ErrFailedPrecondition)
	}
	return &Backend{
		cfg:    cfg,
		bundle: b,
		gate:   runtime.NoReaper{},
		runc: &gorunc.Runc{
			Command:       bin,
			Log:           b.RuntimeLog("log.json"),
			LogFormat:     gorunc.JSON,
			PdeathSignal:  unix.SIGKILL,
			Root:          filepath.Join(cfg.Root, namespace),
			SystemdCgroup: cfg.SystemdCgroup,
		},
	}, nil
}

// cmdIO hands a process's files to a runtime command (go-runc's IO).
type cmdIO struct{ io *runtime.IO }

// CmdIO adapts runtime.IO for go-runc; nil stays nil.
func CmdIO(io *runtime.IO) gorunc.IO {
	if io == nil {
		return nil
	}
	return cmdIO{io}
}

func (c cmdIO) Set(cmd *exec.Cmd) {
	if c.io.Stdin != nil {
		cmd.Stdin = c.io.Stdin
	}
	if c.io.Stdout != nil {
		cmd.Stdout = c.io.Stdout
	}
	if c.io.Stderr != nil {
		cmd.Stderr = c.io.Stderr
	}
}
func (cmdIO) Close() error          { return nil }
func (cmdIO) Stdin() io.WriteCloser { return nil }
func (cmdIO) Stdout() io.ReadCloser { return nil }
func (cmdIO) Stderr() io.ReadCloser { return nil }

type consoleSocket string

func (s consoleSocket) Path() string { return string(s) }

// ConsoleSocket adapts a runtime.Console for go-runc; nil must stay an
// untyped nil interface.
func ConsoleSocket(c *runtime.Console) gorunc.ConsoleSocket {
	if c == nil {
		return nil
	}
	return consoleSocket(c.Path)
}

// Create implements runtime.Backend.
func (b *Backend) Create(ctx context.Context, c *runtime.CreateConfig) (int, error) {
	opts := &gorunc.CreateOpts{
		IO:            CmdIO(c.IO),
		PidFile:       c.PidFile,
		ConsoleSocket: ConsoleSocket(c.Console),
		NoPivot:       b.cfg.NoPivotRoot,
		NoNewKeyring:  b.cfg.NoNewKeyring,
	}
	if err := b.run("create", func() error { return b.runc.Create(ctx, c.ID, c.Bundle.Path(), opts) }); err != nil {
		return 0, err
	}
	pid, err := bundle.ReadPidFile(c.PidFile)
	if err != nil {
		return 0, fmt.Errorf("read init pid file: %w", err)
	}
	return pid, nil
}

// Start implements runtime.Backend.
func (b *Backend) Start(ctx context.Context, id string, _ *runtime.IO) error {
	return b.run("start", func() error { return b.runc.Start(ctx, id) })
}

// Restore implements runtime.Backend.
func (b *Backend) Restore(ctx context.Context, c *runtime.CreateConfig, r *runtime.RestoreConfig) (int, error) {
	if _, err := preflightCriu(ctx); err != nil {
		return 0, fmt.Errorf("restore container %s: %w", c.ID, err)
	}
	work := r.WorkDir
	if work == "" {
		work = b.criuWorkDir()
	}
	opts := &gorunc.RestoreOpts{
		CheckpointOpts: gorunc.CheckpointOpts{
			ImagePath:  r.ImagePath,
			WorkDir:    work,
			ParentPath: r.ParentPath,
		},
		IO:            CmdIO(c.IO),
		PidFile:       c.PidFile,
		ConsoleSocket: ConsoleSocket(c.Console),
		NoPivot:       b.cfg.NoPivotRoot,
		Detach:        true,
		NoSubreaper:   true,
	}
	err := b.run("restore", func() error {
		_, err := b.runc.Restore(ctx, c.ID, c.Bundle.Path(), opts)
		return err
	})
	if err != nil {
		return 0, err
	}
	pid, err := bundle.ReadPidFile(c.PidFile)
	if err != nil {
		return 0, fmt.Errorf("read restored init pid file: %w", err)
	}
	return pid, nil
}

// Exec implements runtime.Backend. The reaper is held off from before
// "runc exec" until the exec's pidfd is open: the process (the shim's
// child once runc exits) cannot be reaped, and its pid reused, meanwhile.
func (b *Backend) Exec(ctx context.Context, id string, e *runtime.ExecConfig) (int, error) {
	opts := &gorunc.ExecOpts{
		IO:            CmdIO(e.IO),
		PidFile:       e.PidFile,
		ConsoleSocket: ConsoleSocket(e.Console),
		Detach:        true,
	}
	resume := b.gate.Pause()
	defer resume()
	if err := b.run("exec", func() error { return b.runc.Exec(ctx, id, *e.Spec, opts) }); err != nil {
		return 0, err
	}
	pid, err := bundle.ReadPidFile(e.PidFile)
	if err != nil {
		return 0, fmt.Errorf("read exec pid file: %w", err)
	}
	if err := b.execs.Add(e.ID, pid); err != nil {
		_ = unix.Kill(pid, unix.SIGKILL) // still the exec: the reaper is held off
		return 0, err
	}
	return pid, nil
}

// Kill implements runtime.Backend.
func (b *Backend) Kill(ctx context.Context, id string, sig syscall.Signal, all bool) error {
	err := b.run("kill", func() error { return b.runc.Kill(ctx, id, int(sig), &gorunc.KillOpts{All: all}) })
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	return err
}

// Delete implements runtime.Backend.
func (b *Backend) Delete(ctx context.Context, id string, force bool) error {
	err := b.run("delete", func() error { return b.runc.Delete(ctx, id, &gorunc.DeleteOpts{Force: force}) })
	if errdefs.IsNotFound(err) {
		err = nil
	}
	if err == nil {
		b.execs.Close()
	}
	if err == nil && force {
		// A runtime killed during create can leave the container's cgroup
		// (and a started init in it) without any state that names them:
		// the runtime's own delete cannot see them.
		if cerr := cgroup.RemoveOrphan(b.cgroupsPath); cerr != nil {
			return fmt.Errorf("remove the cgroup of container %s: %w", id, cerr)
		}
	}
	return err
}

// Pause implements runtime.Backend.
func (b *Backend) Pause(ctx context.Context, id string) error {
	return b.run("pause", func() error { return b.runc.Pause(ctx, id) })
}

// Resume implements runtime.Backend.
func (b *Backend) Resume(ctx context.Context, id string) error {
	return b.run("resume", func() error { return b.runc.Resume(ctx, id) })
}

// Update implements runtime.Backend.
func (b *Backend) Update(ctx context.Context, id string, r *specs.LinuxResources) error {
	return b.run("update", func() error { return b.runc.Update(ctx, id, r) })
}

// Pids implements runtime.Backend.
func (b *Backend) Pids(ctx context.Context, id string) ([]int, error) {
	var pids []int
	err := b.run("ps", func() (err error) {
		pids, err = b.runc.Ps(ctx, id)
		return err
	})
	return pids, err
}

// Signal implements runtime.Backend: an exec is signalled through the
// pidfd taken when it started; one that has exited is NotFound.
func (b *Backend) Signal(ctx context.Context, id string, p runtime.ExecProcess, sig syscall.Signal) error {
	if err := b.execs.Signal(p.ID, p.Pid, sig); err != nil {
		return fmt.Errorf("container %s: %w", id, err)
	}
	return nil
}

// Cgroup implements runtime.Backend.
func (b *Backend) Cgroup(ctx context.Context, id string, pid int) (cgroup.Cgroup, error) {
	return cgroup.Load(pid)
}

// Stats implements runtime.Backend. It reads the cgroup directly instead of
// forking "runc events --stats": Stats is polled every few seconds by CRI
// and containerd's metrics collector.
func (b *Backend) Stats(ctx context.Context, id string, cg cgroup.Cgroup) (*cgroup.Metrics, error) {
	if cg == nil {
		return nil, fmt.Errorf("task %s has no cgroup: %w", id, errdefs.ErrNotFound)
	}
	return cg.Stats()
}

// Checkpoint implements runtime.Backend.
func (b *Backend) Checkpoint(ctx context.Context, id string, c *runtime.CheckpointConfig) error {
	// runc's own failure here would name only criu's log.
	if _, err := preflightCriu(ctx); err != nil {
		return err
	}
	var actions []gorunc.CheckpointAction
	if !c.Exit {
		actions = append(actions, gorunc.LeaveRunning)
	}
	work := c.WorkDir
	if work == "" {
		work = filepath.Join(b.criuWorkDir(), "criu-work")
		defer os.RemoveAll(work)
	}
	err := b.run("checkpoint", func() error {
		return b.runc.Checkpoint(ctx, id, &gorunc.CheckpointOpts{
			WorkDir:                  work,
			ImagePath:                c.ImagePath,
			AllowOpenTCP:             c.AllowOpenTCP,
			AllowExternalUnixSockets: c.AllowExternalUnixSockets,
			AllowTerminal:            c.AllowTerminal,
			FileLocks:                c.FileLocks,
			EmptyNamespaces:          c.EmptyNamespaces,
			ParentPath:               c.ParentPath,
		}, actions...)
	})
	if err != nil {
		// The work directory goes away; criu's log is kept in the bundle.
		return fmt.Errorf("%w%s", err, keepCriuLog(work, "dump.log", b.bundle.CriuDumpLog()))
	}
	return nil
}

func (b *Backend) criuWorkDir() string {
	if b.cfg.CriuWorkPath != "" {
		return b.cfg.CriuWorkPath
	}
	return b.bundle.CriuWork()
}

// run runs one runc command and, when it fails, wraps the failure with the
// error runc logged for it to log.json (far more telling than "exit status
// 1") and the errdefs kind that message implies.
func (b *Backend) run(op string, fn func() error) error {
	off := clilog.Size(b.runc.Log)
	err := fn()
	if err == nil {
		return nil
	}
	msg := clilog.LastError(b.runc.Log, off)
	bin := filepath.Base(b.runc.Command)
	if msg == "" {
		if hint := clilog.SpaceHint(b.bundle.Path()); hint != "" {
			return fmt.Errorf("%s %s failed: %w (%s)", bin, op, err, hint)
		}
		if kind := clilog.Classify(clilog.Runc, op, err.Error()); kind != nil {
			return fmt.Errorf("%s %s failed: %w: %w", bin, op, err, kind)
		}
		return fmt.Errorf("%s %s failed: %w", bin, op, err)
	}
	if kind := clilog.Classify(clilog.Runc, op, msg); kind != nil {
		return fmt.Errorf("%s %s failed: %s: %w", bin, op, msg, kind)
	}
	return fmt.Errorf("%s %s failed: %s: %w", bin, op, msg, err)
}
