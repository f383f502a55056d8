package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/console"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/containerd/v2/pkg/stdio"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/runc"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/runsc"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/shim/procio"
)

// BackendFactory builds the backend for one container.
type BackendFactory func(cfg *oci.Config, namespace, bundle string, spec *specs.Spec) (runtime.Backend, error)

// DefaultBackends are the backends built into the shim.
var DefaultBackends = map[string]BackendFactory{
	oci.BackendRunc: func(cfg *oci.Config, ns, bundle string, _ *specs.Spec) (runtime.Backend, error) {
		return runc.New(cfg.Runc, ns, bundle)
	},
	oci.BackendRunsc: func(cfg *oci.Config, ns, bundle string, spec *specs.Spec) (runtime.Backend, error) {
		return runsc.New(cfg.Runsc, ns, bundle, spec)
	},
}

const (
	// ioDrainTimeout bounds how long Delete waits for a process's last
	// output to be copied.
	ioDrainTimeout = 10 * time.Second
)

var empty = &emptypb.Empty{}

// Service implements containerd's Task API (v3, and v2 through the same
// methods) over the backends.
type Service struct {
	ctx      context.Context // long-lived, carries the namespace
	events   *eventQueue
	platform stdio.Platform
	backends map[string]BackendFactory
	oom      *oomWatcher
	metrics  *metrics.Recorder // nil: not recorded
	// requestShutdown asks the server to flush events and exit.
	requestShutdown func()

	mu           sync.Mutex
	containers   map[string]*container // guarded by mu; nil value: being created
	shuttingDown bool                  // guarded by mu

	exits exitTracker
}

// ServiceConfig wires a Service.
type ServiceConfig struct {
	Namespace string
	Events    Sender
	Platform  stdio.Platform
	Backends  map[string]BackendFactory
	// Metrics records the task lifecycle; nil records nothing.
	Metrics *metrics.Recorder
	// Shutdown is called once, when containerd shuts the service down with
	// no task left.
	Shutdown func()
}

// NewService returns a task service. Exits of the shim's children must be
// fed to HandleExit.
func NewService(ctx context.Context, cfg ServiceConfig) (*Service, error) {
	if cfg.Backends == nil {
		cfg.Backends = DefaultBackends
	}
	s := &Service{
		ctx:             ctx,
		events:          newEventQueue(cfg.Namespace, cfg.Events),
		platform:        cfg.Platform,
		backends:        cfg.Backends,
		metrics:         cfg.Metrics,
		requestShutdown: cfg.Shutdown,
		containers:      make(map[string]*container),
	}
	s.exits.init()
	s.exits.s = s
	s.oom = newOOMWatcher(ctx, s.publishOOM)
	return s, nil
}

// Close flushes the events still queued; the server calls it before exit.
func (s *Service) Close() error {
	s.oom.close()
	return s.events.Close()
}

func (s *Service) publish(ev any) { s.events.publish(ev) }

func (s *Service) publishOOM(id string) {
	s.publish(&eventstypes.TaskOOM{ContainerID: id})
	s.mu.Lock()
	c := s.containers[id]
	s.mu.Unlock()
	if c != nil {
		c.oomKilled.Store(true)
		s.metrics.OOM(c.labels)
	}
}

func (s *Service) getContainer(id string) (*container, error) {
	s.mu.Lock()
	c := s.containers[id]
	s.mu.Unlock()
	if c == nil {
		return nil, fmt.Errorf("task %s: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

func (s *Service) getProcess(id, execID string) (*container, *process, error) {
	c, err := s.getContainer(id)
	if err != nil {
		return nil, nil, err
	}
	p, err := c.process(execID)
	if err != nil {
		return nil, nil, err
	}
	return c, p, nil
}

// Create creates a task: the rootfs is mounted, the backend creates the
// container with its init waiting, stdio is connected, OOM watching starts.
// A failure undoes all of it.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	if err := identifiers.Validate(r.ID); err != nil {
		return nil, fmt.Errorf("task id: %w", err)
	}
	if !filepath.IsAbs(r.Bundle) {
		return nil, fmt.Errorf("bundle path %q is not absolute: %w", r.Bundle, errdefs.ErrInvalidArgument)
	}
	s.mu.Lock()
	switch {
	case s.shuttingDown:
		s.mu.Unlock()
		return nil, fmt.Errorf("create task %s: shim is shutting down: %w", r.ID, errdefs.ErrFailedPrecondition)
	case s.hasContainerLocked(r.ID):
		s.mu.Unlock()
		return nil, fmt.Errorf("task %s: %w", r.ID, errdefs.ErrAlreadyExists)
	}
	s.containers[r.ID] = nil // reserve the id while creating
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.mu.Lock()
			delete(s.containers, r.ID)
			s.mu.Unlock()
		}
	}()

	ns := namespaceOf(ctx, s.ctx)
	cfg, err := oci.ConfigFromOptions(r.Options)
	if err != nil {
		return nil, fmt.Errorf("create task %s: runtime options: %w", r.ID, err)
	}
	spec, err := oci.ReadSpec(r.Bundle)
	if err != nil {
		return nil, fmt.Errorf("create task %s: %w", r.ID, err)
	}
	if err := oci.SelectBackend(cfg, spec.Annotations); err != nil {
		return nil, fmt.Errorf("create task %s: %w", r.ID, err)
	}
	if err := oci.ValidateSpec(r.Bundle, spec, len(r.Rootfs) > 0); err != nil {
		return nil, fmt.Errorf("create task %s: %w", r.ID, err)
	}
	factory, ok := s.backends[cfg.Backend]
	if !ok {
		return nil, fmt.Errorf("create task %s: %s: backend %q is not available in this shim: %w",
			r.ID, cfg.Source, cfg.Backend, errdefs.ErrNotImplemented)
	}
	b, err := factory(cfg, ns, r.Bundle, spec)
	if err != nil {
		return nil, fmt.Errorf("create task %s: %s: %w", r.ID, cfg.Source, err)
	}
	if err := oci.WriteConfigFile(r.Bundle, cfg); err != nil {
		return nil, fmt.Errorf("create task %s: %w", r.ID, err)
	}
	c := newContainer(r.ID, r.Bundle, ns, cfg, spec, b)
	b = instrument(b, s.metrics, c.labels)
	c.backend = b

	if len(r.Rootfs) > 0 {
		rootfs := filepath.Join(r.Bundle, "rootfs")
		if err := os.Mkdir(rootfs, 0o711); err != nil && !os.IsExist(err) {
			return nil, fmt.Errorf("create task %s: %w", r.ID, err)
		}
		mounts := make([]mount.Mount, 0, len(r.Rootfs))
		for _, m := range r.Rootfs {
			mounts = append(mounts, mount.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
		}
		if err := mount.All(mounts, rootfs); err != nil {
			mount.UnmountRecursive(rootfs, 0)
			return nil, fmt.Errorf("create task %s: mount rootfs: %w", r.ID, err)
		}
		c.rootfs = rootfs
		defer func() {
			if retErr != nil {
				if err := mount.UnmountRecursive(rootfs, 0); err != nil {
					log.G(ctx).WithError(err).Warn("unmount rootfs after failed create")
				}
			}
		}()
	}

	init := newProcess(c, "", stdioRequest{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal})
	c.init = init
	pio, err := procio.New(ctx, r.ID, c.cfg.Runc.IoUID, c.cfg.Runc.IoGID, stdio.Stdio(init.stdio))
	if err != nil {
		return nil, fmt.Errorf("create task %s: stdio: %w", r.ID, err)
	}
	defer func() {
		if retErr != nil {
			pio.Close()
		}
	}()
	init.io = pio

	handleStarted, cleanup := s.exits.preStart(nil)
	defer cleanup()

	cc := &runtime.CreateConfig{
		ID:            r.ID,
		Bundle:        r.Bundle,
		IO:            pio.RuntimeIO(),
		ConsoleSocket: pio.ConsoleSocket(),
		PidFile:       c.pidFile(""),
	}
	if r.Checkpoint != "" {
		// The checkpoint is restored at Start, as containerd's runc shim does.
		c.restore = &runtime.RestoreConfig{ImagePath: r.Checkpoint, ParentPath: r.ParentCheckpoint, WorkDir: c.cfg.Runc.CriuWorkPath}
		c.restoreConfig = cc
	} else {
		pid, err := b.Create(ctx, cc)
		if err != nil {
			// A failed create may leave runtime state or a half-made init.
			if derr := b.Delete(context.WithoutCancel(ctx), r.ID, true); derr != nil {
				log.G(ctx).WithError(derr).Warn("delete after failed create")
			}
			return nil, fmt.Errorf("create task %s: %w", r.ID, err)
		}
		defer func() {
			if retErr != nil {
				b.Delete(context.WithoutCancel(ctx), r.ID, true)
			}
		}()
		init.pid = pid
		if err := pio.Start(ctx, s.platform); err != nil {
			return nil, fmt.Errorf("create task %s: stdio: %w", r.ID, err)
		}
		// The cgroup holds a waiting init now: watch for OOM kills from
		// here on, so an early OOM is not missed.
		cg, err := b.Cgroup(ctx, r.ID, pid)
		if err != nil {
			log.G(ctx).WithError(err).WithField("id", r.ID).Warn("no cgroup to watch for OOM kills")
		}
		c.cgroup = cg
		s.oom.add(r.ID, cg)
	}

	c.createdAt = time.Now()
	s.mu.Lock()
	s.containers[r.ID] = c
	s.mu.Unlock()

	s.metrics.TaskCreated(c.labels, c.ident)
	s.publish(&eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO:          &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Checkpoint:  r.Checkpoint,
		Pid:         uint32(init.pid),
	})
	handleStarted(c, init)
	log.G(ctx).WithFields(log.Fields{"id": r.ID, "backend": b.Name(), "pid": init.pid}).Debug("task created")
	return &taskAPI.CreateTaskResponse{Pid: uint32(init.pid)}, nil
}

func (s *Service) hasContainerLocked(id string) bool {
	_, ok := s.containers[id]
	return ok
}

// Start starts the init process or an exec.
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if p.isInit() {
		return s.startInit(ctx, c, p)
	}
	return s.startExec(ctx, c, p)
}

func (s *Service) startInit(ctx context.Context, c *container, p *process) (*taskAPI.StartResponse, error) {
	handleStarted, cleanup := s.exits.preStart(c)
	defer cleanup()

	p.mu.Lock()
	if p.state != stateCreated {
		err := p.invalidLocked("start")
		p.mu.Unlock()
		handleStarted(c, p)
		return nil, err
	}
	var err error
	if c.restore != nil {
		err = s.restoreLocked(ctx, c, p)
	} else {
		err = c.backend.Start(ctx, c.id, p.io.RuntimeIO())
	}
	if err != nil {
		p.mu.Unlock()
		handleStarted(c, p)
		return nil, fmt.Errorf("start task %s: %w", c.id, err)
	}
	p.transitionLocked(stateRunning, "start")
	pid := p.pid
	c.startedAt = time.Now()
	p.mu.Unlock()
	s.metrics.TaskStarted(c.labels, c.ident, c.startedAt.Sub(c.createdAt))

	s.publish(&eventstypes.TaskStart{ContainerID: c.id, Pid: uint32(pid)})
	handleStarted(c, p)
	return &taskAPI.StartResponse{Pid: uint32(pid)}, nil
}

func (s *Service) restoreLocked(ctx context.Context, c *container, p *process) error {
	pid, err := c.backend.Restore(ctx, c.restoreConfig, c.restore)
	if err != nil {
		return err
	}
	p.pid = pid
	if err := p.io.Start(ctx, s.platform); err != nil {
		return err
	}
	cg, err := c.backend.Cgroup(ctx, c.id, pid)
	if err == nil {
		c.cgroup = cg
		s.oom.add(c.id, cg)
	}
	return nil
}

func (s *Service) startExec(ctx context.Context, c *container, p *process) (*taskAPI.StartResponse, error) {
	if err := s.exits.execStarting(c); err != nil {
		return nil, err
	}
	handleStarted, cleanup := s.exits.preStart(nil)
	defer cleanup()

	pid, err := s.runExec(ctx, c, p)
	if err != nil {
		s.exits.execDone(c)
		handleStarted(c, p)
		return nil, fmt.Errorf("start exec %s of task %s: %w", p.id, c.id, err)
	}
	s.metrics.ExecStarted(c.labels)
	s.publish(&eventstypes.TaskExecStarted{ContainerID: c.id, ExecID: p.id, Pid: uint32(pid)})
	handleStarted(c, p)
	return &taskAPI.StartResponse{Pid: uint32(pid)}, nil
}

// runExec starts an exec's process. On failure the exec is stopped (status
// 255) so that Wait returns and Delete works; it never started, so no
// TaskExit is published for it.
func (s *Service) runExec(ctx context.Context, c *container, p *process) (_ int, retErr error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != stateCreated {
		return 0, p.invalidLocked("start")
	}
	defer func() {
		if retErr != nil {
			if p.io != nil {
				p.io.Close()
			}
			p.setExitedLocked(255, time.Now())
		}
	}()
	pio, err := procio.New(ctx, p.id, c.cfg.Runc.IoUID, c.cfg.Runc.IoGID, stdio.Stdio(p.stdio))
	if err != nil {
		return 0, err
	}
	p.io = pio
	pid, err := c.backend.Exec(ctx, c.id, &runtime.ExecConfig{
		ID:            p.id,
		Spec:          p.spec,
		IO:            pio.RuntimeIO(),
		ConsoleSocket: pio.ConsoleSocket(),
		PidFile:       c.pidFile(p.id),
	})
	if err != nil {
		return 0, err
	}
	p.pid = pid
	if err := pio.Start(ctx, s.platform); err != nil {
		c.backend.Signal(ctx, c.id, p.id, pid, int(unix.SIGKILL))
		return 0, err
	}
	p.state = stateRunning
	return pid, nil
}

// Delete deletes an exec, or the task once its init has stopped (or was
// never started).
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if !p.isInit() {
		return s.deleteExec(c, p)
	}
	return s.deleteInit(ctx, c, p)
}

func (s *Service) deleteExec(c *container, p *process) (*taskAPI.DeleteResponse, error) {
	p.mu.Lock()
	switch p.state {
	case stateCreated:
		p.setExitedLocked(0, time.Time{})
	case stateStopped:
	default:
		err := p.invalidLocked("delete")
		p.mu.Unlock()
		return nil, err
	}
	p.state = stateDeleted
	pio := p.io
	resp := &taskAPI.DeleteResponse{Pid: uint32(p.pid), ExitStatus: uint32(p.status), ExitedAt: protobuf.ToTimestamp(p.exitedAt)}
	p.mu.Unlock()
	if pio != nil {
		if err := pio.Wait(ioDrainTimeout); err != nil {
			log.G(s.ctx).WithError(err).Warn("delete exec")
		}
		pio.Close()
	}
	os.Remove(c.pidFile(p.id))
	c.setExec(p.id, nil)
	return resp, nil
}

func (s *Service) deleteInit(ctx context.Context, c *container, p *process) (*taskAPI.DeleteResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.state {
	case stateCreated:
		// Never started: the backend's delete kills the waiting init. Its
		// exit is ours to record now, and the reaper's report is dropped.
		s.exits.forget(p.pid)
		p.setExitedLocked(128+int(unix.SIGKILL), time.Now())
	case stateStopped:
	default:
		return nil, p.invalidLocked("delete")
	}
	if p.io != nil {
		if err := p.io.Wait(ioDrainTimeout); err != nil {
			log.G(ctx).WithError(err).Warn("delete task")
		}
	}
	if err := c.backend.Delete(ctx, c.id, false); err != nil {
		// Still stopped: containerd may retry.
		return nil, fmt.Errorf("delete task %s: %w", c.id, err)
	}
	if p.io != nil {
		p.io.Close()
	}
	if c.rootfs != "" {
		if err := mount.UnmountRecursive(c.rootfs, 0); err != nil {
			return nil, fmt.Errorf("delete task %s: unmount rootfs: %w", c.id, err)
		}
	}
	for _, e := range c.execList() {
		e.mu.Lock()
		if e.io != nil {
			e.io.Close()
		}
		e.mu.Unlock()
	}
	s.oom.remove(c.id)
	p.state = stateDeleted

	s.mu.Lock()
	delete(s.containers, c.id)
	s.mu.Unlock()
	s.exits.deleted(c)
	s.metrics.TaskDeleted(c.labels, c.ident)

	resp := &taskAPI.DeleteResponse{Pid: uint32(p.pid), ExitStatus: uint32(p.status), ExitedAt: protobuf.ToTimestamp(p.exitedAt)}
	s.publish(&eventstypes.TaskDelete{
		ContainerID: c.id,
		Pid:         resp.Pid,
		ExitStatus:  resp.ExitStatus,
		ExitedAt:    resp.ExitedAt,
	})
	return resp, nil
}

// Exec registers an exec; Start runs it.
func (s *Service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	if err := identifiers.Validate(r.ExecID); err != nil {
		return nil, fmt.Errorf("exec id: %w", err)
	}
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	if r.Spec == nil {
		return nil, fmt.Errorf("exec %s of task %s: no process spec: %w", r.ExecID, r.ID, errdefs.ErrInvalidArgument)
	}
	var spec specs.Process
	if err := json.Unmarshal(r.Spec.GetValue(), &spec); err != nil {
		return nil, fmt.Errorf("exec %s of task %s: process spec: %v: %w", r.ExecID, r.ID, err, errdefs.ErrInvalidArgument)
	}
	if len(spec.Args) == 0 {
		return nil, fmt.Errorf("exec %s of task %s: process spec: field \"args\": must not be empty: %w", r.ExecID, r.ID, errdefs.ErrInvalidArgument)
	}
	spec.Terminal = r.Terminal
	if err := s.exits.initAlive(c); err != nil {
		return nil, err
	}
	if err := c.reserveExec(r.ExecID); err != nil {
		return nil, err
	}
	p := newProcess(c, r.ExecID, stdioRequest{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal})
	p.spec = &spec
	c.setExec(r.ExecID, p)
	s.publish(&eventstypes.TaskExecAdded{ContainerID: c.id, ExecID: r.ExecID})
	return empty, nil
}

// ResizePty resizes a process's terminal.
func (s *Service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stdio.Terminal {
		return nil, fmt.Errorf("resize %s: process has no terminal: %w", p.name(), errdefs.ErrFailedPrecondition)
	}
	if p.state == stateStopped || p.state == stateDeleted {
		return nil, p.invalidLocked("resize the terminal of")
	}
	if p.io == nil || !p.io.HasConsole() {
		return nil, p.invalidLocked("resize the terminal of")
	}
	if err := p.io.Resize(console.WinSize{Width: uint16(r.Width), Height: uint16(r.Height)}); err != nil {
		return nil, fmt.Errorf("resize %s: %w", p.name(), err)
	}
	return empty, nil
}

// State reports a process's state. It never calls the backend, so it stays
// fast while a slow runtime command runs for another process.
func (s *Service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	i := p.info()
	return &taskAPI.StateResponse{
		ID:         p.name(),
		Bundle:     c.bundle,
		Pid:        uint32(i.pid),
		Status:     i.state.status(),
		Stdin:      p.stdio.Stdin,
		Stdout:     p.stdio.Stdout,
		Stderr:     p.stdio.Stderr,
		Terminal:   p.stdio.Terminal,
		ExitStatus: uint32(i.status),
		ExitedAt:   protobuf.ToTimestamp(i.exitedAt),
		ExecID:     r.ExecID,
	}, nil
}

// Pause freezes the task.
func (s *Service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	p := c.init
	p.mu.Lock()
	if p.state != stateRunning {
		err := p.invalidLocked("pause")
		p.mu.Unlock()
		return nil, err
	}
	if err := c.backend.Pause(ctx, c.id); err != nil {
		p.mu.Unlock()
		return nil, fmt.Errorf("pause task %s: %w", c.id, err)
	}
	p.state = statePaused
	p.mu.Unlock()
	s.metrics.TaskState(c.labels, c.ident, metrics.StatePaused)
	s.publish(&eventstypes.TaskPaused{ContainerID: c.id})
	return empty, nil
}

// Resume thaws the task.
func (s *Service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	p := c.init
	p.mu.Lock()
	if p.state != statePaused {
		err := p.invalidLocked("resume")
		p.mu.Unlock()
		return nil, err
	}
	if err := c.backend.Resume(ctx, c.id); err != nil {
		p.mu.Unlock()
		return nil, fmt.Errorf("resume task %s: %w", c.id, err)
	}
	p.state = stateRunning
	p.mu.Unlock()
	s.metrics.TaskState(c.labels, c.ident, metrics.StateRunning)
	s.publish(&eventstypes.TaskResumed{ContainerID: c.id})
	return empty, nil
}

// Kill signals the init (with all, every process of the task) or an exec.
func (s *Service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.All && !p.isInit() {
		return nil, fmt.Errorf("kill exec %s of task %s: \"all\" applies to the task only: %w", p.id, c.id, errdefs.ErrInvalidArgument)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.isInit() {
		switch p.state {
		case stateDeleted:
			return nil, fmt.Errorf("kill task %s: already deleted: %w", c.id, errdefs.ErrNotFound)
		case stateStopped:
			if !r.All {
				return nil, fmt.Errorf("kill task %s: process already finished: %w", c.id, errdefs.ErrNotFound)
			}
		}
		if err := c.backend.Kill(ctx, c.id, int(r.Signal), r.All); err != nil {
			return nil, fmt.Errorf("kill task %s: %w", c.id, err)
		}
		return empty, nil
	}
	switch p.state {
	case stateCreated:
		return nil, fmt.Errorf("kill exec %s of task %s: process not started: %w", p.id, c.id, errdefs.ErrFailedPrecondition)
	case stateStopped, stateDeleted:
		return nil, fmt.Errorf("kill exec %s of task %s: process already finished: %w", p.id, c.id, errdefs.ErrNotFound)
	}
	if err := c.backend.Signal(ctx, c.id, p.id, p.pid, int(r.Signal)); err != nil {
		return nil, fmt.Errorf("kill exec %s of task %s: %w", p.id, c.id, err)
	}
	return empty, nil
}

// Pids lists the task's processes, naming the execs among them.
func (s *Service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	pids, err := c.backend.Pids(ctx, c.id)
	if err != nil {
		return nil, fmt.Errorf("list processes of task %s: %w", c.id, err)
	}
	execs := make(map[int]string)
	for _, e := range c.execList() {
		if pid := e.getPid(); pid > 0 {
			execs[pid] = e.id
		}
	}
	out := make([]*task.ProcessInfo, 0, len(pids))
	for _, pid := range pids {
		pi := &task.ProcessInfo{Pid: uint32(pid)}
		if id, ok := execs[pid]; ok {
			a, err := typeurl.MarshalAnyToProto(&options.ProcessDetails{ExecID: id})
			if err != nil {
				return nil, fmt.Errorf("marshal process %d details: %w", pid, err)
			}
			pi.Info = a
		}
		out = append(out, pi)
	}
	return &taskAPI.PidsResponse{Processes: out}, nil
}

// CloseIO closes a process's stdin.
func (s *Service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if !r.Stdin {
		return empty, nil
	}
	p.mu.Lock()
	pio := p.io
	p.mu.Unlock()
	if pio != nil {
		if err := pio.CloseStdin(); err != nil {
			return nil, fmt.Errorf("close stdin of %s: %w", p.name(), err)
		}
	}
	return empty, nil
}

// Checkpoint dumps the task with criu, where the backend supports it.
func (s *Service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	var opts options.CheckpointOptions
	if r.Options != nil && len(r.Options.GetValue()) > 0 {
		if err := r.Options.UnmarshalTo(&opts); err != nil {
			return nil, fmt.Errorf("checkpoint task %s: options %s: %v: %w", c.id, r.Options.GetTypeUrl(), err, errdefs.ErrInvalidArgument)
		}
	}
	p := c.init
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != stateRunning && p.state != statePaused {
		return nil, p.invalidLocked("checkpoint")
	}
	path := r.Path
	if path == "" {
		path = opts.ImagePath
	}
	err = c.backend.Checkpoint(ctx, c.id, &runtime.CheckpointConfig{
		ImagePath:                path,
		WorkDir:                  opts.WorkPath,
		Exit:                     opts.Exit,
		AllowOpenTCP:             opts.OpenTcp,
		AllowExternalUnixSockets: opts.ExternalUnixSockets,
		AllowTerminal:            opts.Terminal,
		FileLocks:                opts.FileLocks,
		EmptyNamespaces:          opts.EmptyNamespaces,
	})
	if err != nil {
		return nil, fmt.Errorf("checkpoint task %s: %w", c.id, err)
	}
	return empty, nil
}

// Update changes the task's resources.
func (s *Service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*emptypb.Empty, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	if r.Resources == nil {
		return nil, fmt.Errorf("update task %s: no resources: %w", c.id, errdefs.ErrInvalidArgument)
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(r.Resources.GetValue(), &res); err != nil {
		return nil, fmt.Errorf("update task %s: resources: %v: %w", c.id, err, errdefs.ErrInvalidArgument)
	}
	p := c.init
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.state {
	case stateCreated, stateRunning, statePaused:
	default:
		return nil, p.invalidLocked("update")
	}
	if err := c.backend.Update(ctx, c.id, &res); err != nil {
		return nil, fmt.Errorf("update task %s: %w", c.id, err)
	}
	return empty, nil
}

// Wait blocks until the process exits.
func (s *Service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	i := p.info()
	return &taskAPI.WaitResponse{ExitStatus: uint32(i.status), ExitedAt: protobuf.ToTimestamp(i.exitedAt)}, nil
}

// Stats returns the task's cgroup metrics.
func (s *Service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	st, err := c.backend.Stats(ctx, c.id, c.cgroup)
	if err != nil {
		return nil, fmt.Errorf("stats of task %s: %w", c.id, err)
	}
	a, err := typeurl.MarshalAnyToProto(st)
	if err != nil {
		return nil, fmt.Errorf("marshal stats of task %s: %w", c.id, err)
	}
	return &taskAPI.StatsResponse{Stats: a}, nil
}

// Connect returns the shim's pid and the task's.
func (s *Service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	var pid int
	if c, err := s.getContainer(r.ID); err == nil {
		pid = c.init.getPid()
	}
	return &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: uint32(pid)}, nil
}

// Shutdown ends the shim once it hosts no task; containerd calls it after
// every task delete, so with tasks left it does nothing.
func (s *Service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	if len(s.containers) > 0 || s.shuttingDown {
		s.mu.Unlock()
		return empty, nil
	}
	s.shuttingDown = true
	s.mu.Unlock()
	if s.requestShutdown != nil {
		s.requestShutdown()
	}
	return empty, nil
}
