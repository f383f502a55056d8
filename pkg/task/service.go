package task

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/console"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/containerd/v2/pkg/stdio"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/events"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
)

var empty = &emptypb.Empty{}

// Service implements containerd's Task API over the backends. It holds the
// tasks and the shim-wide bookkeeping; each task runs its own lifecycle
// (container.go).
type Service struct {
	host
	events   *events.Queue
	backends *runtime.Registry
	// requestShutdown asks the server to flush events and exit.
	requestShutdown func()
	// hold reports whether something else (a pod sandbox) still needs the
	// shim when its last task goes; false is final. Called under mu: it
	// takes only the sandbox service's own locks and never calls back.
	hold func() bool
	// created tells the shim about each task created (pod sandboxes record
	// their containers).
	created func(id string, b bundle.Bundle)
	// deletedHook: Config.Deleted.
	deletedHook func(id string)

	mu           sync.Mutex
	containers   map[string]*container // guarded by mu; nil value: being created
	shuttingDown bool                  // guarded by mu
	// panicked holds the tasks whose request handler panicked (see
	// Panicked): id → what panicked. Guarded by mu.
	panicked map[string]string
}

// Config wires a Service.
type Config struct {
	Namespace string
	Events    events.Sender
	Platform  stdio.Platform
	Backends  *runtime.Registry
	// Metrics records the task lifecycle; nil records nothing.
	Metrics *metrics.Recorder
	// Shutdown is called once, when containerd shuts the service down with
	// no task left.
	Shutdown func()
	// Hold, if set, keeps the shim up while it returns true even with no
	// task left (a pod sandbox the shim hosts). Once it returned false the
	// shim goes: it must refuse whatever would need the shim afterwards.
	Hold func() bool
	// Created, if set, is told of every task created.
	Created func(id string, b bundle.Bundle)
	// Deleted, if set, is told of every task deleted (a pause task's
	// delete ends its Pod's place in a shared shim).
	Deleted func(id string)
}

// NewService returns a task service. Exits of the shim's children must be
// fed to HandleExit.
func NewService(ctx context.Context, cfg Config) *Service {
	s := &Service{
		events:          events.NewQueue(cfg.Namespace, cfg.Events, cfg.Metrics),
		backends:        cfg.Backends,
		requestShutdown: cfg.Shutdown,
		hold:            cfg.Hold,
		created:         cfg.Created,
		deletedHook:     cfg.Deleted,
		containers:      make(map[string]*container),
		panicked:        make(map[string]string),
	}
	s.host = host{
		ctx:      ctx,
		publish:  s.events.Publish,
		metrics:  cfg.Metrics,
		platform: cfg.Platform,
	}
	s.exits = newExitTracker(ctx, s.processExited)
	s.oom = cgroup.NewOOMWatcher(ctx, s.publishOOM)
	return s
}

// Close flushes the events still queued; the server calls it before exit.
func (s *Service) Close() error {
	s.oom.Close()
	return s.events.Close()
}

// getContainer finds a task for a request; a task whose handler panicked
// is refused (see Panicked).
func (s *Service) getContainer(id string) (*container, error) { return s.lookup(id, false) }

// lookup finds a task; cleanup says whether the caller only cleans it up
// (kill, wait, delete), which a task whose handler panicked still allows.
func (s *Service) lookup(id string, cleanup bool) (*container, error) {
	s.mu.Lock()
	c := s.containers[id]
	what, panicked := s.panicked[id]
	s.mu.Unlock()
	if c == nil {
		return nil, fmt.Errorf("task %s: %w", id, errdefs.ErrNotFound)
	}
	if panicked && !cleanup {
		return nil, fmt.Errorf("task %s: an earlier %s, its state is unknown: only Kill, Wait and Delete are served: %w",
			id, what, errdefs.ErrFailedPrecondition)
	}
	return c, nil
}

func (s *Service) getProcess(id, execID string) (*container, *process, error) {
	return s.findProcess(id, execID, false)
}

// cleanupProcess is getProcess for Kill, Wait and Delete.
func (s *Service) cleanupProcess(id, execID string) (*container, *process, error) {
	return s.findProcess(id, execID, true)
}

func (s *Service) findProcess(id, execID string, cleanup bool) (*container, *process, error) {
	c, err := s.lookup(id, cleanup)
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
	if err := s.reserve(r.ID); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			s.mu.Lock()
			delete(s.containers, r.ID)
			s.mu.Unlock()
		}
	}()

	c, err := newContainer(ctx, &s.host, s.backends, s.namespace(ctx), r)
	if err != nil {
		return nil, fmt.Errorf("create task %s: %w", r.ID, err)
	}
	// The init's exit is tracked from before the backend creates it: a
	// waiting init can be killed before Start.
	handleStarted, cleanup := s.exits.preStart(nil)
	defer cleanup()
	if err := c.createInit(ctx, r); err != nil {
		return nil, fmt.Errorf("create task %s: %w", r.ID, err)
	}
	c.createdAt = time.Now()
	s.mu.Lock()
	s.containers[r.ID] = c
	s.mu.Unlock()

	pid := c.init.getPid()
	s.metrics.TaskCreated(c.labels, c.ident)
	s.publish(&eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO:          &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Checkpoint:  r.Checkpoint,
		Pid:         uint32(pid),
	})
	handleStarted(c, c.init)
	if s.created != nil {
		s.created(r.ID, c.bundle)
	}
	log.G(ctx).WithFields(log.Fields{"id": r.ID, "backend": c.cfg.Backend, "pid": pid}).Debug("task created")
	return &taskAPI.CreateTaskResponse{Pid: uint32(pid)}, nil
}

// reserve claims a task id while it is created.
func (s *Service) reserve(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shuttingDown {
		return fmt.Errorf("create task %s: shim is shutting down: %w", id, errdefs.ErrFailedPrecondition)
	}
	if _, ok := s.containers[id]; ok {
		return fmt.Errorf("task %s: %w", id, errdefs.ErrAlreadyExists)
	}
	// A task of that id whose handler panicked is gone: the mark was its.
	delete(s.panicked, id)
	s.containers[id] = nil
	return nil
}

// Panicked marks task id after the server recovered a panic of its
// handler for method (v is the panic's value). The task's state may be
// half-changed, so its later requests are refused with FailedPrecondition
// naming the panic, but for those containerd needs to clean it up: Kill
// and Wait (Delete refuses a running init), Delete, and the shim-wide
// Connect and Shutdown. A Create that panicked leaves no task: its
// reservation goes, or the shim could never exit.
func (s *Service) Panicked(id, method string, v any) {
	if method == "Connect" || method == "Shutdown" {
		return // shim-wide: they change no task's state
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.containers[id]; !ok {
		return // no task of this shim (a pod sandbox's id)
	}
	if _, ok := s.panicked[id]; !ok { // the first panic says the most
		s.panicked[id] = fmt.Sprintf("%s panicked (%v)", method, v)
	}
	if c, ok := s.containers[id]; ok && c == nil && method == "Create" {
		delete(s.containers, id)
	}
}

// namespace is the request's namespace, else the shim's.
func (s *Service) namespace(ctx context.Context) string {
	if ns, ok := namespaces.Namespace(ctx); ok {
		return ns
	}
	ns, _ := namespaces.Namespace(s.ctx)
	return ns
}

// Start starts the init process or an exec.
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	var pid int
	if p.isInit() {
		pid, err = c.startInit(ctx)
	} else {
		pid, err = c.startExec(ctx, p)
	}
	if err != nil {
		return nil, err
	}
	return &taskAPI.StartResponse{Pid: uint32(pid)}, nil
}

// Delete deletes an exec, or the task once its init has stopped (or was
// never started).
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.cleanupProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if !p.isInit() {
		return c.deleteExec(p)
	}
	resp, err := c.deleteInit(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	delete(s.containers, c.id)
	delete(s.panicked, c.id)
	s.mu.Unlock()
	s.exits.deleted(c)
	s.metrics.TaskDeleted(c.labels, c.ident)
	if s.deletedHook != nil {
		s.deletedHook(c.id)
	}
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
		return nil, fmt.Errorf("exec %s of task %s: process spec: %w: %w", r.ExecID, r.ID, err, errdefs.ErrInvalidArgument)
	}
	if len(spec.Args) == 0 {
		return nil, fmt.Errorf("exec %s of task %s: process spec: field \"args\": must not be empty: %w", r.ExecID, r.ID, errdefs.ErrInvalidArgument)
	}
	spec.Terminal = r.Terminal
	if err := c.addExec(r.ExecID, &spec, stdioRequest{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}); err != nil {
		return nil, err
	}
	return empty, nil
}

// ResizePty resizes a process's terminal.
func (s *Service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if !p.stdio.Terminal {
		return nil, fmt.Errorf("resize %s: process has no terminal: %w", p.name(), errdefs.ErrFailedPrecondition)
	}
	if err := p.allowed(opResize); err != nil {
		return nil, err
	}
	pio := p.getIO()
	if pio == nil || !pio.HasConsole() {
		return nil, p.refusal("resize the terminal of", p.current())
	}
	if err := pio.Resize(console.WinSize{Width: uint16(r.Width), Height: uint16(r.Height)}); err != nil {
		return nil, fmt.Errorf("resize %s: %w", p.name(), err)
	}
	return empty, nil
}

// State reports a process's state. It never calls the backend nor waits
// for a command in progress, so it stays fast while a slow runtime command
// runs (containerd gives it 2 s).
func (s *Service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	i := p.info()
	return &taskAPI.StateResponse{
		ID:         p.name(),
		Bundle:     c.bundle.Path(),
		Pid:        uint32(p.getPid()),
		Status:     i.state.status(),
		Stdin:      p.stdio.Stdin,
		Stdout:     p.stdio.Stdout,
		Stderr:     p.stdio.Stderr,
		Terminal:   p.stdio.Terminal,
		ExitStatus: uint32(i.status),
		ExitedAt:   timestamp(i.exitedAt),
		ExecID:     r.ExecID,
	}, nil
}

// Pause freezes the task.
func (s *Service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	return empty, c.pause(ctx)
}

// Resume thaws the task.
func (s *Service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	return empty, c.resume(ctx)
}

// Kill signals the init (with all, every process of the task) or an exec.
func (s *Service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	c, p, err := s.cleanupProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.All && !p.isInit() {
		return nil, fmt.Errorf("kill exec %s of task %s: \"all\" applies to the task only: %w", p.id, c.id, errdefs.ErrInvalidArgument)
	}
	return empty, c.kill(ctx, p, syscall.Signal(r.Signal), r.All)
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
	if pio := p.getIO(); pio != nil {
		if err := pio.CloseStdin(); err != nil {
			return nil, fmt.Errorf("close stdin of %s: %w", p.name(), err)
		}
	}
	return empty, nil
}

// Checkpoint dumps the task, where the backend supports it.
func (s *Service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	var opts options.CheckpointOptions
	if r.Options != nil && len(r.Options.GetValue()) > 0 {
		if err := r.Options.UnmarshalTo(&opts); err != nil {
			return nil, fmt.Errorf("checkpoint task %s: options %s: %w: %w", c.id, r.Options.GetTypeUrl(), err, errdefs.ErrInvalidArgument)
		}
	}
	path := r.Path
	if path == "" {
		path = opts.ImagePath
	}
	return empty, c.checkpoint(ctx, &runtime.CheckpointConfig{
		ImagePath:                path,
		WorkDir:                  opts.WorkPath,
		Exit:                     opts.Exit,
		AllowOpenTCP:             opts.OpenTcp,
		AllowExternalUnixSockets: opts.ExternalUnixSockets,
		AllowTerminal:            opts.Terminal,
		FileLocks:                opts.FileLocks,
		EmptyNamespaces:          opts.EmptyNamespaces,
	})
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
		return nil, fmt.Errorf("update task %s: resources: %w: %w", c.id, err, errdefs.ErrInvalidArgument)
	}
	return empty, c.update(ctx, &res)
}

// Wait blocks until the process exits.
func (s *Service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.cleanupProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	i := p.info()
	return &taskAPI.WaitResponse{ExitStatus: uint32(i.status), ExitedAt: timestamp(i.exitedAt)}, nil
}

// Stats returns the task's cgroup metrics.
func (s *Service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	st, err := c.stats(ctx)
	if err != nil {
		return nil, err
	}
	a, err := typeurl.MarshalAnyToProto(st.Proto())
	if err != nil {
		return nil, fmt.Errorf("marshal stats of task %s: %w", c.id, err)
	}
	return &taskAPI.StatsResponse{Stats: a}, nil
}

// Connect returns the shim's pid and the task's.
func (s *Service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	var pid int
	if c, err := s.lookup(r.ID, true); err == nil {
		pid = c.init.getPid()
	}
	return &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: uint32(pid)}, nil
}

// Shutdown ends the shim once it hosts no task (and no pod sandbox);
// containerd calls it after every task delete, so with tasks left it does
// nothing.
func (s *Service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.ShutdownIfIdle()
	return empty, nil
}

// ShutdownIfIdle ends the shim if it hosts no task and nothing holds it.
// hold is asked under s.mu, so that neither a task (reserve) nor a pod
// sandbox (hold's false is final: the sandbox service refuses new ones)
// can be created between the decision and the shutdown.
func (s *Service) ShutdownIfIdle() {
	s.mu.Lock()
	if len(s.containers) > 0 || s.shuttingDown || (s.hold != nil && s.hold()) {
		s.mu.Unlock()
		return
	}
	s.shuttingDown = true
	s.mu.Unlock()
	if s.requestShutdown != nil {
		s.requestShutdown()
	}
}

func timestamp(t time.Time) *timestamppb.Timestamp { return protobuf.ToTimestamp(t) }
