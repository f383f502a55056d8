package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// task is a started Task API task and where its exit comes.
type task struct {
	c      client.Container
	t      client.Task
	status <-chan client.ExitStatus
	// mu orders the workers' operations on a resident: pause/resume and
	// Update hold it alone (a second pause of a paused task is refused,
	// rightly, and so is an exec in a paused task); execs and Stats share it.
	mu sync.RWMutex
}

// newTask creates and starts a task; it counts as started once Start
// succeeded. Waits are held off while containerd restarts.
func (s *soak) newTask(id, backend string, specOpts ...oci.SpecOpts) (*task, error) {
	s.restarting.RLock()
	defer s.restarting.RUnlock()
	ctx := s.ctx()
	cl := s.d.Client()
	c, err := cl.NewContainer(ctx, id,
		client.WithNewSnapshot(id+"-snap", s.image),
		client.WithNewSpec(append([]oci.SpecOpts{oci.WithImageConfig(s.image)}, specOpts...)...),
		client.WithRuntime(shimType, s.opts(backend)))
	if err != nil {
		return nil, err
	}
	t, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		_ = c.Delete(ctx, client.WithSnapshotCleanup)
		return nil, err
	}
	status, err := t.Wait(ctx)
	if err == nil {
		err = t.Start(ctx)
	}
	if err != nil {
		_, _ = t.Delete(ctx, client.WithProcessKill)
		_ = c.Delete(ctx, client.WithSnapshotCleanup)
		return nil, err
	}
	s.started.Add(1)
	return &task{c: c, t: t, status: status}, nil
}

// waitExit waits for the task's exit as containerd reports it (Wait
// returns only once containerd received the shim's TaskExit); a Wait cut
// by a containerd restart is made again. No exit within exitWait is lost.
func (s *soak) waitExit(tk *task) (uint32, bool) {
	deadline := time.Now().Add(exitWait)
	status := tk.status
	for time.Now().Before(deadline) {
		select {
		case st := <-status:
			err := st.Error()
			if err == nil {
				s.exited.Add(1)
				return st.ExitCode(), true
			}
			// containerd's client hands Wait's errors over on the channel,
			// in gRPC form: see below for NotFound.
			if errdefs.IsNotFound(errgrpc.ToNative(err)) {
				s.exited.Add(1)
				s.exitedWhileDown.Add(1)
				return 0, false
			}
		case <-time.After(30 * time.Second):
			// No answer yet: ask again (a Wait made just before containerd
			// went down may never be answered), so that a lost exit is the
			// shim's and not a stale stream's.
		}
		// The stream broke (containerd restarting): wait again.
		s.restarting.RLock()
		ch, err := tk.t.Wait(s.ctx())
		s.restarting.RUnlock()
		if errdefs.IsNotFound(err) {
			// The task exited while containerd was down, and containerd,
			// loading the shim, found no process in it and removed it as
			// a leaked shim (core/runtime/v2/shim_load.go), as it does with
			// its runc shim: Wait then answers NotFound.
			s.exited.Add(1)
			s.exitedWhileDown.Add(1)
			return 0, false
		}
		if err != nil {
			time.Sleep(time.Second)
			continue
		}
		status = ch
	}
	s.lostExit(tk.c.ID())
	return 0, false
}

// stopTask kills (if needed), waits for and deletes a task and its container.
func (s *soak) stopTask(tk *task) {
	s.restarting.RLock()
	err := tk.t.Kill(s.ctx(), syscall.SIGKILL)
	s.restarting.RUnlock()
	if err != nil && !strings.Contains(err.Error(), "not found") {
		s.opError("kill "+tk.c.ID(), err)
	}
	s.waitExit(tk)
	s.deleteTask(tk)
}

func (s *soak) deleteTask(tk *task) {
	for i := 0; i < 30; i++ {
		s.restarting.RLock()
		_, err := tk.t.Delete(s.ctx())
		if err == nil || strings.Contains(err.Error(), "not found") {
			err = tk.c.Delete(s.ctx(), client.WithSnapshotCleanup)
		}
		s.restarting.RUnlock()
		if err == nil {
			return
		}
		if i == 29 {
			s.opError("delete "+tk.c.ID(), err)
		}
		time.Sleep(time.Second)
	}
}

// residents are long-lived tasks (one per backend) that the exec, Stats,
// pause/resume and Update operations work on: their shims live through
// the whole run and are judged one by one.
func (s *soak) residents() map[string]*task {
	out := map[string]*task{}
	for _, b := range []string{"runc", "runsc"} {
		tk, err := s.newTask("resident-"+b, b, oci.WithProcessArgs("sleep", "1000000"))
		if err != nil {
			fatal(fmt.Errorf("resident %s task: %w", b, err))
		}
		out[b] = tk
	}
	return out
}

// worker runs operations until ctx ends, a different one each round.
func (s *soak) worker(ctx context.Context, w int, residents map[string]*task) {
	for i := 0; ctx.Err() == nil; i++ {
		backend := []string{"runc", "runsc"}[(w+i)%2]
		id := fmt.Sprintf("w%d-%d", w, i)
		switch (w + i) % 4 {
		case 0, 1: // a lifecycle: run to its exit code
			tk, err := s.newTask(id, backend, oci.WithProcessArgs("sh", "-c", "exit "+strconv.Itoa(i%7)))
			if err != nil {
				s.opError("lifecycle "+id, err)
				break
			}
			if code, ok := s.waitExit(tk); ok && code != uint32(i%7) {
				s.opError("lifecycle "+id, fmt.Errorf("exit %d, want %d", code, i%7))
			}
			s.deleteTask(tk)
		case 2: // execs, Stats, pause/resume and Update on a resident
			s.residentOps(residents[backend], id)
		case 3: // an OOM kill (runc: gVisor's memory accounting is the sandbox's)
			tk, err := s.newTask(id, "runc", oci.WithMemoryLimit(16<<20), oci.WithMemorySwap(16<<20),
				oci.WithProcessArgs("sh", "-c", "x=aaaaaaaaaaaaaaaa; while :; do x=$x$x; done"))
			if err != nil {
				s.opError("oom "+id, err)
				break
			}
			if code, ok := s.waitExit(tk); ok {
				if code == 137 {
					s.oomKills.Add(1)
				} else {
					s.opError("oom "+id, fmt.Errorf("exit %d, want 137", code))
				}
			}
			s.deleteTask(tk)
		}
	}
}

func (s *soak) residentOps(tk *task, id string) {
	s.restarting.RLock()
	defer s.restarting.RUnlock()
	ctx := s.ctx()
	tk.mu.RLock()
	s.residentExecs(ctx, tk, id)
	tk.mu.RUnlock()
	tk.mu.Lock()
	defer tk.mu.Unlock()
	if err := tk.t.Pause(ctx); err != nil {
		s.opError("pause "+id, err)
	} else if err := tk.t.Resume(ctx); err != nil {
		s.opError("resume "+id, err)
	}
	shares := uint64(512 + len(id)%2*512)
	if err := tk.t.Update(ctx, client.WithResources(&specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: &shares}})); err != nil {
		s.opError("update "+id, err)
	}
}

// residentExecs runs three execs and a Stats on a resident (never paused
// meanwhile: the caller holds its read lock).
func (s *soak) residentExecs(ctx context.Context, tk *task, id string) {
	for j := range 3 {
		p, err := tk.t.Exec(ctx, fmt.Sprintf("%s-x%d", id, j), &specs.Process{Args: []string{"sh", "-c", "exit 3"}, Cwd: "/", Env: []string{"PATH=/bin:/usr/bin:/sbin:/usr/sbin"}}, cio.NullIO)
		if err != nil {
			s.opError("exec "+id, err)
			return
		}
		st, err := p.Wait(ctx)
		if err == nil {
			err = p.Start(ctx)
		}
		if err == nil {
			select {
			case e := <-st:
				if e.ExitCode() != 3 {
					err = fmt.Errorf("exec exit %d, want 3", e.ExitCode())
				}
			case <-time.After(exitWait):
				err = errors.New("exec exit not delivered")
			}
		}
		if err != nil {
			s.opError("exec "+id, err)
		}
		if _, err := p.Delete(ctx); err != nil {
			s.opError("exec delete "+id, err)
		}
	}
	if _, err := tk.t.Metrics(ctx); err != nil {
		s.opError("stats "+id, err)
	}
}
