// Package reaper collects the exits of the shim's children and hands them
// to subscribers, as containerd's pkg/sys/reaper does, with a gate that
// does not stop the shim while it is held.
//
// The shim is a subreaper: container inits and execs (CLONE_PARENT
// children of the shim under libcontainer), sandbox holders, the runtime
// binaries go-runc starts, and every orphan of a container without a PID
// namespace end up as its children, and a SIGCHLD makes it reap them all
// with wait4(-1). libcontainer, though, waits for some children of its own
// by pid (runc init's stages, hooks, criu, specconv's user namespace
// helper), and wait4(-1) would take their statuses first; a backend holds
// the gate (Pause) while libcontainer may do so.
//
// While the gate is held the reaper does not wait for the holder: it
// collects only the children it was told no one else waits for (Track),
// each with wait4(pid, WNOHANG), and owes a full reap, which the last
// holder's resume does. So the exits of other containers keep flowing
// while a create waits on a slow hook, Pause never queues behind a reap,
// and the signal loop that calls Reap is never stuck in it.
package reaper

import (
	"errors"
	"os/exec"
	goruntime "runtime"
	"sync"
	"time"

	gorunc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// ErrNoSuchProcess is Wait's answer when the subscription ends before the
// command's exit came.
var ErrNoSuchProcess = errors.New("no such process")

// Reaper is the shim's reaper and its gate (runtime.ReaperGate). It is
// also go-runc's process monitor (gorunc.ProcessMonitor).
type Reaper struct {
	mu sync.Mutex
	// holders counts Pause calls not yet resumed; guarded by mu.
	holders int
	// owed is set when a reap was asked for while the gate was held: the
	// last resume does a full one. Guarded by mu.
	owed bool
	// tracked are children not yet reaped that no one waits for by pid,
	// so they may be reaped while the gate is held; guarded by mu. A pid
	// leaves the set when it is reaped, so it always names the child it
	// was tracked for.
	tracked map[int]struct{}

	// subMu guards subs; taken under mu (exits are queued in reap order).
	subMu sync.Mutex
	subs  map[chan gorunc.Exit]*subscriber
}

// New returns a reaper with no subscribers.
func New() *Reaper {
	return &Reaper{
		tracked: make(map[int]struct{}),
		subs:    make(map[chan gorunc.Exit]*subscriber),
	}
}

// Pause holds the full reap off until resume is called (once; later calls
// do nothing). It never waits for another holder or for a subscriber.
func (r *Reaper) Pause() (resume func()) {
	r.mu.Lock()
	r.holders++
	r.mu.Unlock()
	var once sync.Once
	return func() { once.Do(r.resume) }
}

func (r *Reaper) resume() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.holders--
	if r.holders > 0 || !r.owed {
		return
	}
	r.owed = false
	if err := r.reapAllLocked(); err != nil {
		log.L.WithError(err).Error("reap exited children")
	}
}

// Track names pid as a child no one waits for by pid (a container's init
// or exec, a sandbox holder, a command the monitor started): the reaper
// may collect it while the gate is held. The caller must hold the gate
// from before the child was started until after Track: no full reap can
// have collected it meanwhile, so pid is still that child's.
func (r *Reaper) Track(pid int) {
	if pid <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.holders == 0 {
		// A misuse: the child may be gone and its pid reused by a
		// child libcontainer waits for. Not tracking only delays its
		// exit to the next full reap.
		log.L.WithField("pid", pid).Warn("reaper: pid tracked without holding the gate; ignored")
		return
	}
	r.tracked[pid] = struct{}{}
	// Its SIGCHLD may have come already, and the reap it caused skipped
	// it, untracked then: none may come again, so look now.
	if err := r.reapTrackedPidLocked(pid, time.Now()); err != nil {
		log.L.WithError(err).WithField("pid", pid).Warn("reaper: reap a tracked child")
	}
}

// Reap collects exited children; the shim calls it on SIGCHLD. With the
// gate free it reaps every child; while it is held, only the tracked ones,
// and the full reap is left to the last resume. It does not block.
func (r *Reaper) Reap() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.holders > 0 {
		r.owed = true
		return r.reapTrackedLocked()
	}
	return r.reapAllLocked()
}

func (r *Reaper) reapAllLocked() error {
	now := time.Now()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECHILD):
			return nil
		case err != nil:
			return err
		case pid <= 0:
			return nil
		}
		delete(r.tracked, pid)
		r.notifyLocked(gorunc.Exit{Timestamp: now, Pid: pid, Status: exitStatus(ws)})
	}
}

func (r *Reaper) reapTrackedLocked() error {
	now := time.Now()
	var firstErr error
	for pid := range r.tracked {
		if err := r.reapTrackedPidLocked(pid, now); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// reapTrackedPidLocked collects the tracked child pid if it has exited.
func (r *Reaper) reapTrackedPidLocked(pid int, now time.Time) error {
	var ws unix.WaitStatus
	got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
	for errors.Is(err, unix.EINTR) {
		got, err = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
	}
	switch {
	case errors.Is(err, unix.ECHILD):
		// Not (or no longer) our child: once its parent reaps it, its
		// pid may go to a child libcontainer waits for.
		delete(r.tracked, pid)
	case err != nil:
		return err
	case got == pid:
		delete(r.tracked, pid)
		r.notifyLocked(gorunc.Exit{Timestamp: now, Pid: pid, Status: exitStatus(ws)})
	}
	return nil
}

// exitStatus is the status containerd expects: the exit code, or 128 plus
// the signal that ended the process.
func exitStatus(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// Subscribe returns a channel that receives every exit reaped from now on,
// in reap order, until Unsubscribe. A subscriber that does not keep up
// holds no one up: its exits queue (in memory) until it reads them.
func (r *Reaper) Subscribe() chan gorunc.Exit {
	c := make(chan gorunc.Exit, 32)
	r.subMu.Lock()
	r.subs[c] = &subscriber{c: c, done: make(chan struct{})}
	r.subMu.Unlock()
	return c
}

// Unsubscribe ends a subscription and closes its channel; exits queued
// for it are dropped.
func (r *Reaper) Unsubscribe(c chan gorunc.Exit) {
	r.subMu.Lock()
	s, ok := r.subs[c]
	delete(r.subs, c)
	r.subMu.Unlock()
	if ok {
		s.close()
	}
}

func (r *Reaper) notifyLocked(e gorunc.Exit) {
	r.subMu.Lock()
	defer r.subMu.Unlock()
	for _, s := range r.subs {
		s.send(e)
	}
}

// subscriber is one subscription: exits go straight into its channel
// while there is room, else into a queue that a goroutine of its own
// drains, so that the reaper never waits for a reader.
type subscriber struct {
	c    chan gorunc.Exit
	done chan struct{} // closed by close

	mu      sync.Mutex
	queue   []gorunc.Exit // guarded by mu; exits not yet in c, oldest first
	pumping bool          // guarded by mu; a pump goroutine owns the queue's head
	closed  bool          // guarded by mu
}

func (s *subscriber) send(e gorunc.Exit) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if !s.pumping {
		select {
		case s.c <- e:
			return
		default:
		}
		s.pumping = true
		go s.pump()
	}
	s.queue = append(s.queue, e)
}

func (s *subscriber) pump() {
	for {
		s.mu.Lock()
		if s.closed {
			// c is ours to close: close saw the pump running.
			s.pumping, s.queue = false, nil
			close(s.c)
			s.mu.Unlock()
			return
		}
		if len(s.queue) == 0 {
			s.pumping, s.queue = false, nil
			s.mu.Unlock()
			return
		}
		e := s.queue[0]
		s.mu.Unlock()
		select {
		case s.c <- e:
			s.mu.Lock()
			s.queue = s.queue[1:]
			s.mu.Unlock()
		case <-s.done:
		}
	}
}

func (s *subscriber) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	close(s.done)
	if !s.pumping {
		close(s.c)
	}
}

// Start implements gorunc.ProcessMonitor: it starts c under the gate and
// tracks it, so that its exit is collected even while a backend holds the
// gate.
func (r *Reaper) Start(c *exec.Cmd) (chan gorunc.Exit, error) {
	ec := r.Subscribe()
	resume := r.Pause()
	err := c.Start()
	if err == nil {
		r.Track(c.Process.Pid)
	}
	resume()
	if err != nil {
		r.Unsubscribe(ec)
		return nil, err
	}
	return ec, nil
}

// StartLocked implements gorunc.ProcessMonitor: Start on a locked thread
// (for a Pdeathsig that must not fire when the starting thread ends).
func (r *Reaper) StartLocked(c *exec.Cmd) (chan gorunc.Exit, error) {
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	return r.Start(c)
}

// Wait implements gorunc.ProcessMonitor: the status of c, which Start
// started, from the reaper. It lets go of the process's handle: Go keeps a
// pidfd per os.Process until Wait or Release, and the reaper's wait4 is
// neither.
func (r *Reaper) Wait(c *exec.Cmd, ec chan gorunc.Exit) (int, error) {
	defer r.Unsubscribe(ec)
	for e := range ec {
		if e.Pid == c.Process.Pid {
			// Reaped already: this only waits for c's I/O copies.
			_ = c.Wait()
			_ = c.Process.Release() // never fails on unix
			return e.Status, nil
		}
	}
	return -1, ErrNoSuchProcess
}
