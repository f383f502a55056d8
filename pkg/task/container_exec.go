// A container's exec processes: added, started, deleted, looked up.

package task

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/stdio"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/task/procio"
)

// addExec registers an exec; startExec runs it.
func (c *container) addExec(execID string, spec *specs.Process, s stdioRequest) error {
	// No exec joins a task whose init is gone (containerd's runc shim,
	// containerInitExit).
	if err := c.init.allowed(opExec); err != nil {
		return err
	}
	if c.h.exits.initExited(c) {
		return fmt.Errorf("cannot exec in task %s: init process is not running: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	p := newProcess(c, execID, s)
	p.spec = spec
	c.mu.Lock()
	if _, ok := c.execs[execID]; ok {
		c.mu.Unlock()
		return fmt.Errorf("exec %s of task %s: %w", execID, c.id, errdefs.ErrAlreadyExists)
	}
	c.execs[execID] = p
	c.mu.Unlock()
	if c.gone.Load() {
		c.removeExec(execID)
		return fmt.Errorf("task %s: %w", c.id, errdefs.ErrNotFound)
	}
	c.h.publish(&eventstypes.TaskExecAdded{ContainerID: c.id, ExecID: execID})
	return nil
}

// startExec starts a registered exec and returns its pid. On failure the
// exec is stopped (status 255) so that Wait returns and Delete works; it
// never started, so no TaskExit is published for it.
func (c *container) startExec(ctx context.Context, p *process) (int, error) {
	p.op.Lock()
	defer p.op.Unlock()
	if err := p.allowed(opStart); err != nil {
		return 0, err
	}
	if err := c.h.exits.execStarting(c); err != nil {
		return 0, err
	}
	handleStarted, cleanup := c.h.exits.preStart(nil)
	defer cleanup()
	pid, err := c.runExec(ctx, p)
	if err != nil {
		if pio := p.getIO(); pio != nil {
			_ = pio.Close() // its error is of no use (procio.IO.Close)
		}
		p.setExited(255, time.Now())
		c.h.exits.execDone(c)
		handleStarted(c, p)
		return 0, fmt.Errorf("start exec %s of task %s: %w", p.id, c.id, err)
	}
	c.h.metrics.ExecStarted(c.labels)
	c.h.publish(&eventstypes.TaskExecStarted{ContainerID: c.id, ExecID: p.id, Pid: uint32(pid)})
	handleStarted(c, p)
	return pid, nil
}

func (c *container) runExec(ctx context.Context, p *process) (int, error) {
	pio, err := procio.New(ctx, p.id, c.cfg.IoUID, c.cfg.IoGID, stdio.Stdio(p.stdio))
	if err != nil {
		return 0, err
	}
	p.setIO(pio)
	pid, err := c.backend.Exec(ctx, c.id, &runtime.ExecConfig{
		ID:      p.id,
		Spec:    p.spec,
		IO:      pio.RuntimeIO(),
		Console: pio.Console(),
		PidFile: c.bundle.ExecPidFile(p.id),
	})
	if err != nil {
		return 0, err
	}
	p.pid.Store(int64(pid))
	pio.CloseAfterStart()
	if err := pio.Start(ctx, c.h.platform); err != nil {
		if kerr := c.backend.Signal(ctx, c.id, runtime.ExecProcess{ID: p.id, Pid: pid}, syscall.SIGKILL); kerr != nil {
			log.G(ctx).WithError(kerr).Warn("kill exec whose stdio failed")
		}
		return 0, err
	}
	if err := p.transition(opStart); err != nil {
		return 0, err
	}
	return pid, nil
}

// deleteExec deletes a stopped or never-started exec.
func (c *container) deleteExec(p *process) (*taskAPI.DeleteResponse, error) {
	p.op.Lock()
	defer p.op.Unlock()
	p.mu.Lock()
	if p.state == stateCreated {
		p.setExitedLocked(0, time.Time{})
	}
	err := p.transitionLocked(opDelete)
	pio := p.io
	resp := &taskAPI.DeleteResponse{Pid: uint32(p.getPid()), ExitStatus: uint32(p.status), ExitedAt: timestamp(p.exitedAt)}
	p.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if pio != nil {
		pio.CloseAfterStart()
		if err := pio.Wait(ioDrainTimeout); err != nil {
			log.G(c.h.ctx).WithError(err).Warn("delete exec")
		}
		_ = pio.Close() // its error is of no use (procio.IO.Close)
	}
	// An exec that never started has no pid file; the bundle's removal
	// takes one that stays.
	_ = os.Remove(c.bundle.ExecPidFile(p.id))
	c.removeExec(p.id)
	return resp, nil
}

// process returns the init ("") or an exec.
func (c *container) process(execID string) (*process, error) {
	if execID == "" {
		return c.init, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.execs[execID]
	if p == nil {
		return nil, fmt.Errorf("exec %s of task %s: %w", execID, c.id, errdefs.ErrNotFound)
	}
	return p, nil
}

func (c *container) removeExec(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.execs, id)
}

func (c *container) execList() []*process {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*process, 0, len(c.execs))
	for _, p := range c.execs {
		out = append(out, p)
	}
	return out
}
