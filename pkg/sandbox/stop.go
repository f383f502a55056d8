package sandbox

import (
	"context"
	"fmt"
	"time"

	sandboxapi "github.com/containerd/containerd/api/runtime/sandbox/v1"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// StopSandbox ends the sandbox's process and releases WaitSandbox before it
// replies: CRI shows the pod NotReady only once WaitSandbox has returned.
// Stopping a stopped sandbox succeeds.
func (s *Service) StopSandbox(ctx context.Context, r *sandboxapi.StopSandboxRequest) (*sandboxapi.StopSandboxResponse, error) {
	sb, err := s.lookup(r.GetSandboxID(), true)
	if err != nil {
		return nil, err
	}
	sb.op.Lock()
	defer sb.op.Unlock()
	if _, err := sb.stop(ctx); err != nil {
		return nil, err
	}
	return &sandboxapi.StopSandboxResponse{}, nil
}

// stop ends the sandbox's process, if it runs, and removes the backend's
// state and the pod's /dev/shm mount; the caller holds sb.op. done: the
// sandbox was shut down, there is nothing to stop.
func (sb *sandbox) stop(ctx context.Context) (done bool, err error) {
	sb.mu.Lock()
	from := sb.st
	done, err = sb.transitionLocked(opStop)
	sb.mu.Unlock()
	if done || err != nil {
		return done, err
	}
	err = sb.end(ctx, from == stateRunning)
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if err != nil && from == stateRunning && !isClosed(sb.exited) {
		_, _ = sb.transitionLocked(opStopFailed) // the process outlived the stop
		return false, err
	}
	_, _ = sb.transitionLocked(opStopped)
	if !isClosed(sb.exited) {
		close(sb.exited) // never started: release waiters
		sb.exitedAt = time.Now()
	}
	return false, err
}

// end is the work of stop: the backend's commands, run without sb.mu.
func (sb *sandbox) end(ctx context.Context, running bool) error {
	if running && !isClosed(sb.exited) {
		if err := sb.ps.Stop(ctx); err != nil {
			return fmt.Errorf("stop sandbox %s: %w", sb.id, err)
		}
		select {
		case <-sb.exited:
		case <-ctx.Done():
			return fmt.Errorf("stop sandbox %s: %w", sb.id, ctx.Err())
		case <-time.After(30 * time.Second):
			return fmt.Errorf("stop sandbox %s: its process did not exit: %w", sb.id, errdefs.ErrUnavailable)
		}
	}
	if err := sb.ps.Delete(ctx); err != nil {
		return fmt.Errorf("stop sandbox %s: %w", sb.id, err)
	}
	if err := sb.files.unmount(); err != nil {
		return fmt.Errorf("stop sandbox %s: %w", sb.id, err)
	}
	return nil
}

// WaitSandbox blocks until the sandbox's process is gone. CRI keeps one
// call open for the pod's life (one more after each containerd restart).
func (s *Service) WaitSandbox(ctx context.Context, r *sandboxapi.WaitSandboxRequest) (*sandboxapi.WaitSandboxResponse, error) {
	sb, err := s.lookup(r.GetSandboxID(), true)
	if err != nil {
		return nil, err
	}
	select {
	case <-sb.exited:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return &sandboxapi.WaitSandboxResponse{ExitStatus: sb.status, ExitedAt: protobuf.ToTimestamp(sb.exitedAt)}, nil
}

// ShutdownSandbox is the end of the pod: whatever still runs is stopped,
// CRI's files go, and the shim exits once it hosts no task.
func (s *Service) ShutdownSandbox(ctx context.Context, r *sandboxapi.ShutdownSandboxRequest) (*sandboxapi.ShutdownSandboxResponse, error) {
	sb, err := s.lookup(r.GetSandboxID(), true)
	if errdefs.IsNotFound(err) {
		// CreateSandbox failed (containerd shuts the shim down after a
		// refused pod) or it was shut down before: nothing to undo, and the
		// shim, started for this pod, must not stay behind.
		s.left(r.GetSandboxID())
		s.exitAfterReply()
		return &sandboxapi.ShutdownSandboxResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	// op is held from the stop to the end: a StartSandbox waiting for it
	// finds the sandbox shut down, not merely stopped.
	sb.op.Lock()
	defer sb.op.Unlock()
	done, err := sb.stop(ctx)
	if err != nil {
		return nil, err
	}
	if !done {
		if err := sb.files.remove(); err != nil {
			return nil, fmt.Errorf("shut down sandbox %s: %w", sb.id, err)
		}
		if _, err := sb.transition(opShutdown); err != nil {
			return nil, err
		}
		s.metrics.SandboxShutdown(sb.labels)
	}
	s.left(sb.id)
	s.exitAfterReply()
	return &sandboxapi.ShutdownSandboxResponse{}, nil
}

// left tells a shared shim's pool that Pod id is gone.
func (s *Service) left(id string) {
	if s.leave != nil {
		s.leave(id)
	}
}

// exitAfterReply lets the shim exit (once it hosts no task) a moment after
// ShutdownSandbox replies: the reply must reach containerd first (it fails
// RemovePodSandbox on a closed connection), and ttrpc's graceful shutdown
// can close a connection whose response is still queued.
func (s *Service) exitAfterReply() {
	if s.shutdown == nil {
		return
	}
	go func() {
		time.Sleep(shutdownGrace)
		s.shutdown()
	}()
}

// HandleExit is fed every exit the reaper reports; a sandbox's process is
// the shim's child.
func (s *Service) HandleExit(e runtime.Exit) {
	s.mu.Lock()
	var sb *sandbox
	for _, c := range s.sandboxes {
		c.mu.Lock()
		switch {
		case c.st == stateStarting:
			c.pending = append(c.pending, e) // StartSandbox sorts them out
		case c.pid != 0 && c.pid == e.Pid && !isClosed(c.exited):
			sb = c
		}
		c.mu.Unlock()
	}
	s.mu.Unlock()
	if sb != nil {
		s.exited(sb, e)
	}
}

// exited records the end of a sandbox's process and releases its waiters.
func (s *Service) exited(sb *sandbox, e runtime.Exit) {
	sb.mu.Lock()
	if isClosed(sb.exited) {
		sb.mu.Unlock()
		return
	}
	stopped := sb.st == stateStopping // StopSandbox ended it (metrics: stopped, not died)
	if _, err := sb.transitionLocked(opExit); err != nil {
		sb.mu.Unlock()
		log.G(s.ctx).WithError(err).Warn("sandbox process exit")
		return
	}
	sb.status = uint32(e.Status)
	sb.exitedAt = e.Timestamp
	close(sb.exited)
	sb.mu.Unlock()
	s.metrics.SandboxExited(sb.labels, stopped)
	log.G(s.ctx).WithFields(log.Fields{"sandbox": sb.id, "status": e.Status, "stopped": stopped}).Debug("sandbox process exited")
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
