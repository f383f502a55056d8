package task

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/stdio"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/task/procio"
)

// ioDrainTimeout bounds how long a delete waits for a process's last output
// to be copied.
const ioDrainTimeout = 10 * time.Second

// host is what a task uses of the shim around it.
type host struct {
	ctx      context.Context // long-lived, carries the namespace
	publish  func(event any)
	exits    *exitTracker
	oom      *cgroup.OOMWatcher
	metrics  *metrics.Recorder // nil: not recorded
	platform stdio.Platform
}

// container is one task: its init, its execs and the backend that runs
// them. Fields without a guard are set before the container is published
// in the service's map and read-only after.
type container struct {
	h         *host
	id        string
	bundle    bundle.Bundle
	namespace string
	backend   runtime.Backend
	cfg       *oci.Config
	// waiter is set when the backend reports the init's exit itself (runsc).
	waiter runtime.InitWaiter
	// rootfs is the mount the shim made, "" when the bundle brought its own.
	rootfs string
	// sharedPidNS: without its own pid namespace, the init's exit does not
	// take the container's other processes with it.
	sharedPidNS bool
	// restore is set when the task was created from a checkpoint: Start
	// restores instead of starting.
	restore *runtime.RestoreConfig
	create  *runtime.CreateConfig

	init *process

	// For metrics: labels, identity, and when the task was created/started.
	labels    metrics.Labels
	ident     metrics.Task
	createdAt time.Time
	startedAt atomic.Pointer[time.Time]
	oomKilled atomic.Bool
	// cgroup is the container's host cgroup, nil when it has none (yet).
	cgroup atomic.Pointer[cgroupRef]
	// gone is set once the task is deleted, for RPCs that looked it up
	// just before.
	gone atomic.Bool

	mu    sync.Mutex
	execs map[string]*process // guarded by mu; a nil value reserves the id
}

type cgroupRef struct{ cg cgroup.Cgroup }

func (c *container) getCgroup() cgroup.Cgroup {
	if r := c.cgroup.Load(); r != nil {
		return r.cg
	}
	return nil
}

// undo collects the steps that reverse a half-done create, run newest
// first.
type undo []func()

func (u *undo) add(f func()) { *u = append(*u, f) }

func (u undo) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

// newContainer resolves what a create asks for (configuration, spec,
// backend) without side effects: a bad input leaves nothing behind.
func newContainer(ctx context.Context, h *host, reg *runtime.Registry, ns string, r *taskAPI.CreateTaskRequest) (*container, error) {
	b := bundle.Bundle(r.Bundle)
	schema := reg.Schema()
	cfg, err := schema.ConfigFromOptions(r.Options)
	if err != nil {
		return nil, fmt.Errorf("runtime options: %w", err)
	}
	spec, err := oci.ReadSpec(b)
	if err != nil {
		return nil, err
	}
	if err := schema.SelectBackend(cfg, spec.Annotations); err != nil {
		return nil, err
	}
	if err := oci.ValidateSpec(b, spec, len(r.Rootfs) > 0); err != nil {
		return nil, err
	}
	backend, err := reg.New(cfg, &runtime.Container{
		ID: r.ID, Namespace: ns, Bundle: b, Spec: spec, Group: oci.GroupID(r.ID, spec.Annotations),
	})
	if err != nil {
		return nil, err
	}
	c := &container{
		h:           h,
		id:          r.ID,
		bundle:      b,
		namespace:   ns,
		cfg:         cfg,
		execs:       make(map[string]*process),
		sharedPidNS: true,
		labels:      metrics.Labels{Backend: cfg.Backend, Handler: cfg.RuntimeHandler},
		ident:       metrics.TaskFromAnnotations(ns, r.ID, spec.Annotations),
	}
	c.backend = instrument(backend, h.metrics, c.labels)
	if w, ok := backend.(runtime.InitWaiter); ok {
		c.waiter = w
	}
	if spec.Linux != nil {
		for _, n := range spec.Linux.Namespaces {
			if n.Type == specs.PIDNamespace && n.Path == "" {
				c.sharedPidNS = false
			}
		}
	}
	c.init = newProcess(c, "", stdioRequest{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal})
	return c, nil
}

// createInit mounts the rootfs, prepares stdio and has the backend create
// the container with its init waiting (or, from a checkpoint, prepares the
// restore that Start does). A failure undoes every step.
func (c *container) createInit(ctx context.Context, r *taskAPI.CreateTaskRequest) (retErr error) {
	var u undo
	defer func() {
		if retErr != nil {
			u.run()
		}
	}()
	if err := oci.WriteConfigFile(c.bundle, c.cfg); err != nil {
		return err
	}
	if len(r.Rootfs) > 0 {
		rootfs := c.bundle.Rootfs()
		if err := os.Mkdir(rootfs, 0o711); err != nil && !os.IsExist(err) {
			return err
		}
		mounts := make([]mount.Mount, 0, len(r.Rootfs))
		for _, m := range r.Rootfs {
			mounts = append(mounts, mount.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
		}
		u.add(func() {
			if err := mount.UnmountRecursive(rootfs, 0); err != nil {
				log.G(ctx).WithError(err).Warn("unmount rootfs after failed create")
			}
		})
		if err := mount.All(mounts, rootfs); err != nil {
			return fmt.Errorf("mount rootfs: %w", err)
		}
		c.rootfs = rootfs
	}

	pio, err := procio.New(ctx, c.id, c.cfg.IoUID, c.cfg.IoGID, stdio.Stdio(c.init.stdio))
	if err != nil {
		return fmt.Errorf("stdio: %w", err)
	}
	u.add(func() { _ = pio.Close() }) // its error is of no use (procio.IO.Close)
	c.init.setIO(pio)

	c.create = &runtime.CreateConfig{
		ID:      c.id,
		Bundle:  c.bundle,
		IO:      pio.RuntimeIO(),
		Console: pio.Console(),
		PidFile: c.bundle.InitPidFile(),
	}
	if r.Checkpoint != "" {
		// The checkpoint is restored at Start, as containerd's runc shim does.
		c.restore = &runtime.RestoreConfig{ImagePath: r.Checkpoint, ParentPath: r.ParentCheckpoint}
		return nil
	}
	// A failed create may leave runtime state or a half-made init.
	u.add(func() {
		if err := c.backend.Delete(context.WithoutCancel(ctx), c.id, true); err != nil {
			log.G(ctx).WithError(err).WithField("id", c.id).Warn("delete after failed create")
		}
	})
	pid, err := c.backend.Create(ctx, c.create)
	if err != nil {
		return err
	}
	c.init.pid.Store(int64(pid))
	if err := pio.Start(ctx, c.h.platform); err != nil {
		return fmt.Errorf("stdio: %w", err)
	}
	// The cgroup holds a waiting init now: watch for OOM kills from here
	// on, so an early one is not missed.
	c.watchCgroup(ctx, pid)
	return nil
}

func (c *container) watchCgroup(ctx context.Context, pid int) {
	cg, err := c.backend.Cgroup(ctx, c.id, pid)
	if err != nil {
		log.G(ctx).WithError(err).WithField("id", c.id).WithField("pid", pid).Warn("cannot load the task's cgroup: no stats or OOM events until it loads")
		return
	}
	if cg == nil {
		return
	}
	// Only the first load is kept and watched (stats may retry a failed
	// one concurrently).
	if !c.cgroup.CompareAndSwap(nil, &cgroupRef{cg}) {
		return
	}
	c.h.oom.Add(c.id, cg)
	// A Stats retry may get here after the init stopped and deleteInit
	// removed the task's watch: an init that stopped has had its exit's
	// OOM check, and a watch added now would outlive the task (and, on a
	// gVisor pod's shared cgroup, keep the pod's watch open for good).
	if c.init.current() >= stateStopped {
		c.h.oom.Remove(c.id)
	}
}

// startInit starts (or restores) the created init and returns its pid.
func (c *container) startInit(ctx context.Context) (int, error) {
	p := c.init
	p.op.Lock()
	defer p.op.Unlock()
	// Exits of the init are held back until TaskStart is out.
	handleStarted, cleanup := c.h.exits.preStart(c)
	defer cleanup()
	if err := p.allowed(opStart); err != nil {
		handleStarted(c, p)
		return 0, err
	}
	pio := p.getIO()
	var err error
	if c.restore != nil {
		err = c.restoreInit(ctx, pio)
	} else {
		err = c.backend.Start(ctx, c.id, pio.RuntimeIO())
	}
	if err != nil {
		handleStarted(c, p)
		return 0, fmt.Errorf("start task %s: %w", c.id, err)
	}
	pio.CloseAfterStart()
	if err := p.transition(opStart); err != nil {
		handleStarted(c, p)
		return 0, err
	}
	now := time.Now()
	c.startedAt.Store(&now)
	pid := p.getPid()
	c.h.metrics.TaskStarted(c.labels, c.ident, now.Sub(c.createdAt))
	c.h.publish(&eventstypes.TaskStart{ContainerID: c.id, Pid: uint32(pid)})
	handleStarted(c, p)
	return pid, nil
}

func (c *container) restoreInit(ctx context.Context, pio *procio.IO) error {
	pid, err := c.backend.Restore(ctx, c.create, c.restore)
	if err != nil {
		return err
	}
	c.init.pid.Store(int64(pid))
	if err := pio.Start(ctx, c.h.platform); err != nil {
		return err
	}
	c.watchCgroup(ctx, pid)
	return nil
}

// deleteInit deletes the task once its init has stopped or if it never
// started; the backend's delete kills a waiting init.
func (c *container) deleteInit(ctx context.Context) (*taskAPI.DeleteResponse, error) {
	p := c.init
	p.op.Lock()
	defer p.op.Unlock()
	created := false
	switch st := p.current(); st {
	case stateCreated:
		// Never started: the backend's delete kills the waiting init. Its
		// exit is ours to record once that delete succeeded; the reaper's
		// report is dropped (an exit that came first was recorded already
		// and stands).
		c.h.exits.forget(p.getPid(), p)
		created = true
	case stateStopped:
	default:
		return nil, p.refusal("delete", st)
	}
	pio := p.getIO()
	if pio != nil {
		pio.CloseAfterStart()
		if err := pio.Wait(ioDrainTimeout); err != nil {
			log.G(ctx).WithError(err).Warn("delete task")
		}
	}
	if err := c.backend.Delete(ctx, c.id, false); err != nil {
		// Still created or stopped: containerd may retry. A created init
		// may still run, so no exit is recorded and Wait keeps waiting.
		return nil, fmt.Errorf("delete task %s: %w", c.id, err)
	}
	if created {
		p.setExited(128+int(syscall.SIGKILL), time.Now())
	}
	if pio != nil {
		_ = pio.Close() // its error is of no use (procio.IO.Close)
	}
	if c.rootfs != "" {
		if err := mount.UnmountRecursive(c.rootfs, 0); err != nil {
			return nil, fmt.Errorf("delete task %s: unmount rootfs: %w", c.id, err)
		}
	}
	for _, e := range c.execList() {
		if eio := e.getIO(); eio != nil {
			_ = eio.Close() // its error is of no use (procio.IO.Close)
		}
	}
	c.h.oom.Remove(c.id)
	p.mu.Lock()
	err := p.transitionLocked(opDelete)
	resp := &taskAPI.DeleteResponse{Pid: uint32(p.getPid()), ExitStatus: uint32(p.status), ExitedAt: timestamp(p.exitedAt)}
	p.mu.Unlock()
	if err != nil {
		return nil, err
	}
	c.gone.Store(true)
	return resp, nil
}

// pause freezes the task.
func (c *container) pause(ctx context.Context) error {
	p := c.init
	p.op.Lock()
	defer p.op.Unlock()
	if err := p.allowed(opPause); err != nil {
		return err
	}
	if err := c.backend.Pause(ctx, c.id); err != nil {
		return fmt.Errorf("pause task %s: %w", c.id, err)
	}
	if err := p.transition(opPause); err != nil {
		return err
	}
	c.h.metrics.TaskState(c.labels, c.ident, metrics.StatePaused)
	c.h.publish(&eventstypes.TaskPaused{ContainerID: c.id})
	return nil
}

// resume thaws the task.
func (c *container) resume(ctx context.Context) error {
	p := c.init
	p.op.Lock()
	defer p.op.Unlock()
	if err := p.allowed(opResume); err != nil {
		return err
	}
	if err := c.backend.Resume(ctx, c.id); err != nil {
		return fmt.Errorf("resume task %s: %w", c.id, err)
	}
	if err := p.transition(opResume); err != nil {
		return err
	}
	c.h.metrics.TaskState(c.labels, c.ident, metrics.StateRunning)
	c.h.publish(&eventstypes.TaskResumed{ContainerID: c.id})
	return nil
}

// update changes the task's resources.
func (c *container) update(ctx context.Context, res *specs.LinuxResources) error {
	p := c.init
	p.op.Lock()
	defer p.op.Unlock()
	if err := p.allowed(opUpdate); err != nil {
		return err
	}
	if err := c.backend.Update(ctx, c.id, res); err != nil {
		return fmt.Errorf("update task %s: %w", c.id, err)
	}
	return nil
}

// checkpoint dumps the task.
func (c *container) checkpoint(ctx context.Context, cc *runtime.CheckpointConfig) error {
	p := c.init
	p.op.Lock()
	defer p.op.Unlock()
	if err := p.allowed(opCheckpoint); err != nil {
		return err
	}
	if err := c.backend.Checkpoint(ctx, c.id, cc); err != nil {
		return fmt.Errorf("checkpoint task %s: %w", c.id, err)
	}
	return nil
}

// kill signals the init (with all, every process of the task) or an exec.
// It takes no lifecycle lock: a kill must get through while a slow start
// or delete runs.
func (c *container) kill(ctx context.Context, p *process, sig syscall.Signal, all bool) error {
	st := p.current()
	if err := p.allowed(opKill); err != nil {
		return err
	}
	if p.isInit() {
		if st == stateStopped && !all {
			return fmt.Errorf("kill task %s: process already finished: %w", c.id, errdefs.ErrNotFound)
		}
		if err := c.backend.Kill(ctx, c.id, sig, all); err != nil {
			return fmt.Errorf("kill task %s: %w", c.id, err)
		}
		return nil
	}
	switch st {
	case stateCreated:
		return fmt.Errorf("kill exec %s of task %s: process not started: %w", p.id, c.id, errdefs.ErrFailedPrecondition)
	case stateStopped:
		return fmt.Errorf("kill exec %s of task %s: process already finished: %w", p.id, c.id, errdefs.ErrNotFound)
	}
	if err := c.backend.Signal(ctx, c.id, runtime.ExecProcess{ID: p.id, Pid: p.getPid()}, sig); err != nil {
		return fmt.Errorf("kill exec %s of task %s: %w", p.id, c.id, err)
	}
	return nil
}

// killAllAfterInitExit ends what is left of a task without its own pid
// namespace once its init has exited, so their exits come first.
func (c *container) killAllAfterInitExit(ctx context.Context) {
	if !c.sharedPidNS {
		return
	}
	if err := c.backend.Kill(ctx, c.id, syscall.SIGKILL, true); err != nil && !errdefs.IsNotFound(err) {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("kill remaining processes after init exit")
	}
}

// stats reads the task's metrics.
func (c *container) stats(ctx context.Context) (*cgroup.Metrics, error) {
	cg := c.getCgroup()
	if cg == nil {
		// Loading at create failed (logged there): try again while the
		// init lives, so one bad moment does not cost the task its stats
		// and OOM events for good.
		if pid := c.init.getPid(); pid > 0 && c.init.current() < stateStopped {
			c.watchCgroup(ctx, pid)
			cg = c.getCgroup()
		}
	}
	st, err := c.backend.Stats(ctx, c.id, cg)
	if err != nil {
		return nil, fmt.Errorf("stats of task %s: %w", c.id, err)
	}
	return st, nil
}
