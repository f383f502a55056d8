// Package runc is the backend for runc and CLIs compatible with it (crun),
// driven through go-runc.
package runc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/clilog"
)

// Name of this backend.
const Name = oci.BackendRunc

// Backend drives one container through a runc-compatible CLI.
type Backend struct {
	cfg    oci.RuncConfig
	bundle string
	runc   *gorunc.Runc
}

var _ runtime.Backend = (*Backend)(nil)

// New returns the backend for the container in bundle. The binary must
// exist: a missing runtime is reported here, before anything is created.
func New(cfg oci.RuncConfig, namespace, bundle string) (*Backend, error) {
	bin, err := exec.LookPath(cfg.BinaryName)
	if err != nil {
		return nil, fmt.Errorf("runc backend: field \"runc.binary_name\": runtime binary %q not found: %v: %w",
			cfg.BinaryName, err, errdefs.ErrFailedPrecondition)
	}
	return &Backend{
		cfg:    cfg,
		bundle: bundle,
		runc: &gorunc.Runc{
			Command:       bin,
			Log:           filepath.Join(bundle, "log.json"),
			LogFormat:     gorunc.JSON,
			PdeathSignal:  unix.SIGKILL,
			Root:          filepath.Join(cfg.Root, namespace),
			SystemdCgroup: cfg.SystemdCgroup,
		},
	}, nil
}

// Name implements runtime.Backend.
func (b *Backend) Name() string { return Name }

// Create implements runtime.Backend.
func (b *Backend) Create(ctx context.Context, c *runtime.CreateConfig) (int, error) {
	opts := &gorunc.CreateOpts{
		IO:            c.IO,
		PidFile:       c.PidFile,
		ConsoleSocket: c.ConsoleSocket,
		NoPivot:       b.cfg.NoPivotRoot,
		NoNewKeyring:  b.cfg.NoNewKeyring,
	}
	if err := b.run("create", func() error { return b.runc.Create(ctx, c.ID, c.Bundle, opts) }); err != nil {
		return 0, err
	}
	pid, err := gorunc.ReadPidFile(c.PidFile)
	if err != nil {
		return 0, fmt.Errorf("read init pid file: %w", err)
	}
	return pid, nil
}

// Start implements runtime.Backend.
func (b *Backend) Start(ctx context.Context, id string, _ gorunc.IO) error {
	return b.run("start", func() error { return b.runc.Start(ctx, id) })
}

// Restore implements runtime.Backend.
func (b *Backend) Restore(ctx context.Context, c *runtime.CreateConfig, r *runtime.RestoreConfig) (int, error) {
	if _, err := exec.LookPath(b.criu()); err != nil {
		return 0, fmt.Errorf("restore needs criu (%s): %v: %w", b.criu(), err, errdefs.ErrNotImplemented)
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
		IO:            c.IO,
		PidFile:       c.PidFile,
		ConsoleSocket: c.ConsoleSocket,
		NoPivot:       b.cfg.NoPivotRoot,
		Detach:        true,
		NoSubreaper:   true,
	}
	err := b.run("restore", func() error {
		_, err := b.runc.Restore(ctx, c.ID, c.Bundle, opts)
		return err
	})
	if err != nil {
		return 0, err
	}
	pid, err := gorunc.ReadPidFile(c.PidFile)
	if err != nil {
		return 0, fmt.Errorf("read restored init pid file: %w", err)
	}
	return pid, nil
}

// Exec implements runtime.Backend.
func (b *Backend) Exec(ctx context.Context, id string, e *runtime.ExecConfig) (int, error) {
	opts := &gorunc.ExecOpts{
		IO:            e.IO,
		PidFile:       e.PidFile,
		ConsoleSocket: e.ConsoleSocket,
		Detach:        true,
	}
	if err := b.run("exec", func() error { return b.runc.Exec(ctx, id, *e.Spec, opts) }); err != nil {
		return 0, err
	}
	pid, err := gorunc.ReadPidFile(e.PidFile)
	if err != nil {
		return 0, fmt.Errorf("read exec pid file: %w", err)
	}
	return pid, nil
}

// Kill implements runtime.Backend.
func (b *Backend) Kill(ctx context.Context, id string, signal int, all bool) error {
	err := b.run("kill", func() error { return b.runc.Kill(ctx, id, signal, &gorunc.KillOpts{All: all}) })
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	return err
}

// Delete implements runtime.Backend.
func (b *Backend) Delete(ctx context.Context, id string, force bool) error {
	err := b.run("delete", func() error { return b.runc.Delete(ctx, id, &gorunc.DeleteOpts{Force: force}) })
	if errdefs.IsNotFound(err) {
		return nil
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

// Signal implements runtime.Backend: exec processes are the shim's children
// (runc exec --detach reparents them to the subreaper), so a plain kill(2).
func (b *Backend) Signal(ctx context.Context, id, execID string, pid int, signal int) error {
	if err := unix.Kill(pid, unix.Signal(signal)); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("process %d already finished: %w", pid, errdefs.ErrNotFound)
		}
		return fmt.Errorf("signal process %d: %w", pid, err)
	}
	return nil
}

// Cgroup implements runtime.Backend.
func (b *Backend) Cgroup(ctx context.Context, id string, pid int) (any, error) {
	return cgroup.Load(pid)
}

// Stats implements runtime.Backend. It reads the cgroup directly instead of
// forking "runc events --stats": Stats is polled every few seconds by CRI
// and containerd's metrics collector.
func (b *Backend) Stats(ctx context.Context, id string, cg any) (any, error) {
	if cg == nil {
		return nil, fmt.Errorf("task %s has no cgroup: %w", id, errdefs.ErrNotFound)
	}
	return cgroup.Stats(cg)
}

// Checkpoint implements runtime.Backend.
func (b *Backend) Checkpoint(ctx context.Context, id string, c *runtime.CheckpointConfig) error {
	if _, err := exec.LookPath(b.criu()); err != nil {
		return fmt.Errorf("checkpoint needs criu (%s): %v: %w", b.criu(), err, errdefs.ErrNotImplemented)
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
		// The work directory goes away; keep criu's log in the bundle.
		dumpLog := filepath.Join(b.bundle, "criu-dump.log")
		if data, rerr := os.ReadFile(filepath.Join(work, "dump.log")); rerr == nil {
			os.WriteFile(dumpLog, data, 0o600)
			return fmt.Errorf("%w (criu log: %s)", err, dumpLog)
		}
		return err
	}
	return nil
}

// criu is looked up on PATH: runc ignores its --criu flag nowadays.
func (b *Backend) criu() string { return "criu" }

func (b *Backend) criuWorkDir() string {
	if b.cfg.CriuWorkPath != "" {
		return b.cfg.CriuWorkPath
	}
	return filepath.Join(b.bundle, "work")
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
		if hint := clilog.SpaceHint(b.bundle); hint != "" {
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
