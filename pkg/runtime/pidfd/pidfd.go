// Package pidfd keeps a pidfd for each exec process a backend started, so
// that a signal reaches that process or none: once the reaper has
// collected an exec, its pid may be another process's.
package pidfd

import (
	"errors"
	"fmt"
	"sync"
	"syscall"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Table holds the pidfds of a container's exec processes, by exec id.
// The zero value is ready to use.
type Table struct {
	mu    sync.Mutex
	procs map[string]proc // guarded by mu, held while a pidfd is used
}

type proc struct{ pid, fd int }

// Add opens a pidfd for exec id's process pid. The caller must have held
// the reaper off (runtime.ReaperGate) since before the process started, so
// that pid is still that process, if only as a zombie. Processes that have
// exited are dropped meanwhile: an exec id per health probe would
// otherwise keep one descriptor each.
func (t *Table) Add(id string, pid int) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd of exec %s (pid %d): %w", id, pid, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.procs == nil {
		t.procs = make(map[string]proc)
	}
	for eid, p := range t.procs {
		if eid == id || exited(p.fd) {
			_ = unix.Close(p.fd)
			delete(t.procs, eid)
		}
	}
	t.procs[id] = proc{pid: pid, fd: fd}
	return nil
}

// Signal sends sig to exec id's process. One that has exited, or that the
// table does not hold with that pid, is NotFound.
func (t *Table) Signal(id string, pid int, sig syscall.Signal) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.procs[id]
	if !ok || p.pid != pid {
		return fmt.Errorf("exec %s (pid %d) is not running: %w", id, pid, errdefs.ErrNotFound)
	}
	if err := unix.PidfdSendSignal(p.fd, sig, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("exec %s (pid %d) already finished: %w", id, pid, errdefs.ErrNotFound)
		}
		return fmt.Errorf("signal exec %s (pid %d): %w", id, pid, err)
	}
	return nil
}

// Running reports whether exec id's process, with that pid, is held and
// has not exited.
func (t *Table) Running(id string, pid int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.procs[id]
	return ok && p.pid == pid && !exited(p.fd)
}

// Close closes every pidfd; the table can be used again.
func (t *Table) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for eid, p := range t.procs {
		_ = unix.Close(p.fd)
		delete(t.procs, eid)
	}
}

// exited reports whether the process of pidfd has exited (a pidfd polls
// readable then, zombie or reaped).
func exited(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}
