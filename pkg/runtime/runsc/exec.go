package runsc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// Exec implements runtime.Backend. The pid returned is that of the
// "runsc exec" process on the host: it stays a child of the shim for as
// long as the process runs in the sandbox and exits with its status. The
// reaper is held off until its pidfd is open, so that pid is still it.
func (b *Backend) Exec(ctx context.Context, id string, e *runtime.ExecConfig) (int, error) {
	resume := b.gate.Pause()
	defer resume()
	pid, err := b.exec(ctx, id, e)
	if err != nil {
		return 0, err
	}
	if err := b.execs.Add(e.ID, pid); err != nil {
		b.killStarted(ctx, id, b.bundle.ExecInternalPidFile(e.ID))
		return 0, err
	}
	return pid, nil
}

func (b *Backend) exec(ctx context.Context, id string, e *runtime.ExecConfig) (int, error) {
	f, err := os.CreateTemp(b.bundle.Path(), "runsc-process-*.json")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	err = json.NewEncoder(f).Encode(e.Spec)
	if cerr := f.Close(); err == nil {
		err = cerr // runsc reads the file: a failed close may have lost it
	}
	if err != nil {
		return 0, err
	}
	internal := b.bundle.ExecInternalPidFile(e.ID)
	// A file left by an earlier exec of this id would name a process that
	// is not this exec's.
	if err := os.Remove(internal); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	args := []string{"exec", "--process", f.Name(), "--detach", "--pid-file", e.PidFile, "--internal-pid-file", internal}
	if e.Console != nil {
		args = append(args, "--console-socket", e.Console.Path)
	}
	if err := b.run(ctx, "exec", e.IO, nil, append(args, id)...); err != nil {
		// runsc's detached exec can fail after the process ran: its parent
		// waits for the child's pid file and gives up if the child (and so
		// a process that exits at once) is gone before it looks. If the
		// child wrote both pid files, the process did start; its exit comes
		// through the reaper like any other.
		pid, perr := bundle.ReadPidFile(e.PidFile)
		if _, ierr := bundle.ReadPidFile(internal); perr != nil || ierr != nil || pid <= 0 {
			b.killStarted(ctx, id, internal)
			return 0, err
		}
		log.G(ctx).WithError(err).WithField("pid", pid).Debug("runsc exec reported a failure after the process started")
		return pid, nil
	}
	pid, err := bundle.ReadPidFile(e.PidFile)
	if err != nil {
		b.killStarted(ctx, id, internal)
		return 0, fmt.Errorf("read exec pid file: %w", err)
	}
	return pid, nil
}

// killStarted ends the sandboxed process of an exec that failed after
// runsc started it, as its internal pid file (written first) says: the
// task layer gets no pid and would never know it. SIGKILL, then "runsc
// wait" reaps it in the sandbox, which also ends its host "runsc exec"
// process if one is left. On a context of its own: the request's may be
// what ended the exec.
func (b *Backend) killStarted(ctx context.Context, id, internal string) {
	ipid, err := bundle.ReadPidFile(internal)
	if err != nil {
		return // never started, as far as runsc told
	}
	defer os.Remove(internal)
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	pid := strconv.Itoa(ipid)
	entry := log.G(ctx).WithField("internal_pid", ipid)
	if err := b.run(kctx, "kill", nil, nil, "kill", "--pid", pid, id, strconv.Itoa(int(unix.SIGKILL))); err != nil {
		if !errdefs.IsNotFound(err) {
			entry.WithError(err).Warn("kill exec process after a failed start")
		}
		return
	}
	if err := b.run(kctx, "wait", nil, io.Discard, "wait", "--pid", pid, id); err != nil {
		entry.WithError(err).Debug("wait for exec process killed after a failed start")
	}
}

// Signal implements runtime.Backend: runsc signals a sandboxed process by
// its pid inside the sandbox, which is the exec's only while its host
// "runsc exec" process runs (it waits for the sandboxed one).
func (b *Backend) Signal(ctx context.Context, id string, p runtime.ExecProcess, sig syscall.Signal) error {
	if !b.execs.Running(p.ID, p.Pid) {
		return fmt.Errorf("exec %s of container %s (pid %d) already finished: %w", p.ID, id, p.Pid, errdefs.ErrNotFound)
	}
	ipid, err := bundle.ReadPidFile(b.bundle.ExecInternalPidFile(p.ID))
	if err != nil {
		return fmt.Errorf("exec %s: internal pid: %w", p.ID, err)
	}
	err = b.run(ctx, "kill", nil, nil, "kill", "--pid", strconv.Itoa(ipid), id, strconv.Itoa(int(sig)))
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	return err
}
