package runc

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/log"
	"github.com/opencontainers/runc/libcontainer"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// Restore implements runtime.Backend.
func (b *libBackend) Restore(ctx context.Context, cc *runtime.CreateConfig, r *runtime.RestoreConfig) (_ int, retErr error) {
	if _, err := preflightCriu(ctx); err != nil {
		return 0, fmt.Errorf("restore container %s: %w", cc.ID, err)
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
	// The restored object does not know its init's start time (runc's CLI
	// loads the state Restore saved for every later command), so Signal
	// would call the restored init not running, here and in the cleanup
	// above: use that state from now on.
	loaded, err := libcontainer.Load(b.root, cc.ID)
	if err != nil {
		// The restored process's handle (os.FindProcess: a pidfd) still
		// names it, whatever became of its pid.
		_ = proc.Signal(unix.SIGKILL)
		return 0, fmt.Errorf("restore container %s: load its state: %w", cc.ID, libError(err))
	}
	c = loaded
	if err := writePidFile(cc.PidFile, pid); err != nil {
		return 0, err
	}
	b.mu.Lock()
	b.container = c
	b.mu.Unlock()
	return pid, nil
}

// Checkpoint implements runtime.Backend.
func (b *libBackend) Checkpoint(ctx context.Context, id string, cc *runtime.CheckpointConfig) error {
	// libcontainer's own failure here would name only criu's log.
	if _, err := preflightCriu(ctx); err != nil {
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
		// The work directory goes away; criu's log is kept in the bundle.
		return fmt.Errorf("checkpoint container %s: %w%s", id, libError(err), keepCriuLog(work, "dump.log", b.bundle.CriuDumpLog()))
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
