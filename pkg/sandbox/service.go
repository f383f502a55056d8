// Package sandbox is containerd's Sandbox API (containerd.runtime.sandbox.v1)
// for pods whose CRI runtime handler has sandboxer = "shim": containerd
// starts this shim for the pod, asks it for the pod's sandbox, and runs the
// pod's containers as tasks on the same shim, with no pause container.
//
// A sandbox is a backend's runtime.PodSandbox (runc: a namespace holder;
// gVisor: the runsc sandbox the containers join) plus what CRI's podsandbox
// controller would have given a pause pod: hostname, hosts and resolv.conf
// files and /dev/shm at CRI's paths (files.go).
package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	sandboxapi "github.com/containerd/containerd/api/runtime/sandbox/v1"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// The states SandboxStatus reports, exactly as CRI (and its restart
// recovery) reads them (runtime.v1.PodSandboxState's names): anything else
// is NotReady to the kubelet.
const (
	criReady    = "SANDBOX_READY"
	criNotReady = "SANDBOX_NOTREADY"
)

// specTypeURL is how containerd names an OCI spec in an Any.
const specTypeURL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"

// Service serves containerd's Sandbox API.
type Service struct {
	ctx      context.Context
	backends *runtime.Registry
	reaper   runtime.ReaperGate
	metrics  *metrics.Recorder
	// shutdown asks the shim to exit once it hosts no task either.
	shutdown func()
	// leave tells a shared shim's pool that a Pod is gone (Config.Leave).
	leave func(id string)

	mu        sync.Mutex
	sandboxes map[string]*sandbox // guarded by mu
	// closed: Holds let the shim go, so no sandbox may be created any
	// more; guarded by mu.
	closed bool
	// panicked: sandboxes whose request handler panicked (see Panicked):
	// id → what panicked. Guarded by mu.
	panicked map[string]string
}

// shutdownGrace is how long the shim stays after ShutdownSandbox replied.
const shutdownGrace = 500 * time.Millisecond

// Config wires a Service.
type Config struct {
	Backends *runtime.Registry
	Reaper   runtime.ReaperGate
	Metrics  *metrics.Recorder
	// Shutdown is called after a ShutdownSandbox: the shim exits if no
	// task remains.
	Shutdown func()
	// Leave, if set, is called with a Pod's id after its ShutdownSandbox:
	// a shared shim's slot has room again (docs/shared-shim.md).
	Leave func(id string)
}

// NewService returns a Sandbox service. Exits of the shim's children must
// be fed to HandleExit.
func NewService(ctx context.Context, cfg Config) *Service {
	return &Service{
		ctx:       ctx,
		backends:  cfg.Backends,
		reaper:    cfg.Reaper,
		metrics:   cfg.Metrics,
		shutdown:  cfg.Shutdown,
		leave:     cfg.Leave,
		sandboxes: make(map[string]*sandbox),
	}
}

var _ sandboxapi.TTRPCSandboxService = (*Service)(nil)

// sandbox is one pod's sandbox.
//
// Locks, outermost first: op serialises StartSandbox, StopSandbox and
// ShutdownSandbox, each whole, and is the only lock held across the
// backend's commands; Service.mu; mu guards the fields below it, held for
// field access only. Status, Wait, Platform and exit handling never take
// op. Every state change goes through transition (state.go).
type sandbox struct {
	id        string
	bundle    bundle.Bundle
	cfg       *oci.Config
	pod       *podConfig
	netns     string
	files     *podFiles
	ps        runtime.PodSandbox
	labels    metrics.Labels
	createdAt time.Time

	op sync.Mutex

	mu       sync.Mutex
	st       state
	pid      int // 0 until started
	status   uint32
	exitedAt time.Time
	exited   chan struct{} // closed when the sandbox process is gone (or stopped before it started)
	// pending: while starting, every exit is kept, for the sandbox
	// process may exit before the backend's Start returns its pid. Only
	// one reaped after the start began can be its: the pid may have been
	// another process's before (a recycled pid).
	pending []runtime.Exit
}

// criStateLocked is the sandbox's state as CRI reads it; the caller holds
// sb.mu.
func (sb *sandbox) criStateLocked() string {
	if sb.st == stateRunning {
		return criReady
	}
	return criNotReady
}

// get finds a sandbox for a request; a sandbox whose handler panicked is
// refused (see Panicked).
func (s *Service) get(id string) (*sandbox, error) { return s.lookup(id, false) }

// lookup finds a sandbox; cleanup says whether the caller only ends it or
// reads its state (StopSandbox, WaitSandbox, SandboxStatus,
// ShutdownSandbox), which a sandbox whose handler panicked still allows.
func (s *Service) lookup(id string, cleanup bool) (*sandbox, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb := s.sandboxes[id]
	if sb == nil {
		return nil, fmt.Errorf("sandbox %s: %w", id, errdefs.ErrNotFound)
	}
	if what, ok := s.panicked[id]; ok && !cleanup {
		return nil, fmt.Errorf("sandbox %s: an earlier %s, its state is unknown: only StopSandbox, WaitSandbox, SandboxStatus and ShutdownSandbox are served: %w",
			id, what, errdefs.ErrFailedPrecondition)
	}
	return sb, nil
}

// Panicked marks sandbox id after the server recovered a panic of its
// handler for method (v is the panic's value): its state may be
// half-changed, so its later requests are refused with FailedPrecondition
// naming the panic, but for those containerd needs to end the pod. An id
// that is no sandbox of this shim (a task's) is ignored.
func (s *Service) Panicked(id, method string, v any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sandboxes[id] == nil {
		return
	}
	if s.panicked == nil {
		s.panicked = make(map[string]string)
	}
	if _, ok := s.panicked[id]; !ok { // the first panic says the most
		s.panicked[id] = fmt.Sprintf("%s panicked (%v)", method, v)
	}
}

// Holds reports whether a sandbox still needs the shim: the shim must not
// exit on the last task's Shutdown while its pod lives (containerd 2.4
// sends Task Shutdown after every task delete). False is final: the shim
// may go, so CreateSandbox is refused from then on (a pod must not get a
// sandbox on a shim that is exiting).
func (s *Service) Holds() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sb := range s.sandboxes {
		sb.mu.Lock()
		gone := sb.st == stateShutdown
		sb.mu.Unlock()
		if !gone {
			return true
		}
	}
	s.closed = true
	return false
}

// ContainerCreated records a task the shim created in the pod sandbox it
// belongs to (containerd writes the sandbox's ID into the container's
// bundle), for "delete" to find after a shim death.
func (s *Service) ContainerCreated(id string, b bundle.Bundle) {
	data, err := os.ReadFile(b.SandboxFile())
	if err != nil {
		return
	}
	sb, err := s.lookup(strings.TrimSpace(string(data)), true)
	if err != nil {
		return
	}
	RecordContainer(sb.bundle, id, b.Path())
}

// CreateSandbox prepares a pod's sandbox: its configuration, its backend
// and CRI's files; nothing runs yet. A failure leaves nothing behind.
func (s *Service) CreateSandbox(ctx context.Context, r *sandboxapi.CreateSandboxRequest) (_ *sandboxapi.CreateSandboxResponse, retErr error) {
	if r.GetSandboxID() == "" || r.GetBundlePath() == "" {
		return nil, fmt.Errorf("create sandbox: sandbox_id and bundle_path are required: %w", errdefs.ErrInvalidArgument)
	}
	pod, err := decodePodConfig(r.GetOptions(), r.GetNetnsPath())
	if err != nil {
		return nil, fmt.Errorf("create sandbox %s: %w", r.GetSandboxID(), err)
	}
	b := bundle.Bundle(r.GetBundlePath())
	cfg, err := s.shimConfig(b)
	if err != nil {
		return nil, fmt.Errorf("create sandbox %s: %w", r.GetSandboxID(), err)
	}
	files, err := criDirs(b, r.GetSandboxID(), pod.hostIPC)
	if err != nil {
		return nil, fmt.Errorf("create sandbox %s: %w", r.GetSandboxID(), err)
	}
	sb := &sandbox{
		id:     r.GetSandboxID(),
		bundle: b,
		cfg:    cfg,
		pod:    pod,
		netns:  r.GetNetnsPath(),
		files:  files,
		labels: metrics.Labels{Backend: cfg.Backend, Handler: cfg.RuntimeHandler},
		st:     stateCreated,
		exited: make(chan struct{}),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, fmt.Errorf("create sandbox %s: the shim is shutting down: %w", sb.id, errdefs.ErrFailedPrecondition)
	}
	if _, ok := s.sandboxes[sb.id]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("sandbox %s: %w", sb.id, errdefs.ErrAlreadyExists)
	}
	s.sandboxes[sb.id] = sb
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			_ = files.remove() // undo what create laid out; the error is the one to report
			s.mu.Lock()
			delete(s.sandboxes, sb.id)
			s.mu.Unlock()
		}
	}()
	ps, err := s.backends.NewPod(cfg, &runtime.Pod{
		ID:           sb.id,
		Namespace:    namespaceOf(ctx),
		Bundle:       b,
		NetNS:        sb.netns,
		Hostname:     pod.hostname,
		HostIPC:      pod.hostIPC,
		SharedPID:    pod.sharedPID,
		HostPID:      pod.hostPID,
		Sysctls:      pod.sysctls,
		CgroupParent: pod.cgroupParent,
		Annotations:  podAnnotations(sb.id, pod),
		Reaper:       s.reaper,
		UserNS:       pod.userns,
	})
	if err != nil {
		return nil, fmt.Errorf("create sandbox %s: %w", sb.id, err)
	}
	sb.ps = ps
	if err := files.create(pod.hostname, resolvConf(pod.dns)); err != nil {
		return nil, fmt.Errorf("create sandbox %s: %w", sb.id, err)
	}
	if err := writePodRecord(b, cfg, pod); err != nil {
		return nil, fmt.Errorf("create sandbox %s: %w", sb.id, err)
	}
	sb.createdAt = time.Now()
	s.metrics.SandboxCreated(sb.labels)
	log.G(ctx).WithFields(log.Fields{"sandbox": sb.id, "backend": cfg.Backend, "pod": pod.namespace + "/" + pod.name}).Debug("sandbox created")
	return &sandboxapi.CreateSandboxResponse{}, nil
}

// shimConfig resolves the sandbox's shim configuration from the runtime
// options "start" kept in the bundle (containerd 2.3+ sends the handler's
// options; 2.2 sends none, then the default configuration applies).
func (s *Service) shimConfig(b bundle.Bundle) (*oci.Config, error) {
	var opts *anypb.Any
	if data, err := os.ReadFile(b.RuntimeOptions()); err == nil {
		opts = &anypb.Any{}
		if err := proto.Unmarshal(data, opts); err != nil {
			return nil, fmt.Errorf("runtime options in %s: %w", b.RuntimeOptions(), err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	cfg, err := s.backends.Schema().ConfigFromOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("runtime options: %w", err)
	}
	return cfg, nil
}

// podAnnotations are what a backend's sandbox needs to know the pod by: the
// pod's own annotations (gVisor mount hints among them) and CRI's.
func podAnnotations(id string, pod *podConfig) map[string]string {
	a := make(map[string]string, len(pod.annotations)+5)
	for k, v := range pod.annotations {
		a[k] = v
	}
	a[oci.AnnotationCRIType] = oci.CRITypeSandbox
	a[oci.AnnotationSandboxID] = id
	a[oci.AnnotationPodName] = pod.name
	a[oci.AnnotationPodNS] = pod.namespace
	a["io.kubernetes.cri.sandbox-uid"] = pod.uid
	return a
}

// StartSandbox starts the sandbox's process; the pod's containers join its
// namespaces from then on.
func (s *Service) StartSandbox(ctx context.Context, r *sandboxapi.StartSandboxRequest) (*sandboxapi.StartSandboxResponse, error) {
	sb, err := s.get(r.GetSandboxID())
	if err != nil {
		return nil, err
	}
	sb.op.Lock()
	defer sb.op.Unlock()
	begin := time.Now()
	// From here on HandleExit keeps every exit for this sandbox until its
	// pid is known: the state, the pid and pending change together.
	sb.mu.Lock()
	_, err = sb.transitionLocked(opStart)
	sb.pending = nil
	sb.mu.Unlock()
	if err != nil {
		return nil, err
	}
	pid, err := sb.ps.Start(ctx)
	if err != nil {
		_ = sb.ps.Delete(context.WithoutCancel(ctx)) // the start's error is the one to report
		sb.mu.Lock()
		_, _ = sb.transitionLocked(opStartFailed) // op is held: it is starting
		sb.pending = nil
		sb.mu.Unlock()
		return nil, fmt.Errorf("start sandbox %s: %w", sb.id, err)
	}
	sb.mu.Lock()
	sb.pid = pid
	_, _ = sb.transitionLocked(opStarted) // op is held: it is starting
	pending := sb.pending
	sb.pending = nil
	sb.mu.Unlock()
	s.metrics.SandboxStarted(sb.labels, time.Since(begin))
	for _, e := range pending {
		if e.Pid == pid && !e.Timestamp.Before(begin) {
			s.exited(sb, e) // it died before we knew its pid
			break
		}
	}
	resp := &sandboxapi.StartSandboxResponse{Pid: uint32(pid), CreatedAt: protobuf.ToTimestamp(sb.createdAt)}
	if spec, err := sb.spec(pid); err != nil {
		log.G(ctx).WithError(err).Warn("sandbox spec for NRI")
	} else {
		resp.Spec = spec
	}
	return resp, nil
}

// spec describes the running sandbox as an OCI spec for containerd 2.3+,
// which hands it to NRI plugins: the pod's namespaces, cgroup, hostname
// and sysctls.
func (sb *sandbox) spec(pid int) (*anypb.Any, error) {
	ns := func(t specs.LinuxNamespaceType, name string) specs.LinuxNamespace {
		return specs.LinuxNamespace{Type: t, Path: fmt.Sprintf("/proc/%d/ns/%s", pid, name)}
	}
	s := &specs.Spec{
		Version:     specs.Version,
		Hostname:    sb.pod.hostname,
		Annotations: podAnnotations(sb.id, sb.pod),
		Linux: &specs.Linux{
			CgroupsPath: sb.ps.CgroupPath(),
			Sysctl:      sb.pod.sysctls,
			Namespaces:  []specs.LinuxNamespace{ns(specs.NetworkNamespace, "net"), ns(specs.IPCNamespace, "ipc"), ns(specs.UTSNamespace, "uts")},
		},
	}
	if sb.pod.sharedPID {
		s.Linux.Namespaces = append(s.Linux.Namespaces, ns(specs.PIDNamespace, "pid"))
	}
	data, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	return &anypb.Any{TypeUrl: specTypeURL, Value: data}, nil
}

// relay lays the pod's files out again where CRI looks for them, while the
// sandbox runs.
func (sb *sandbox) relay(ctx context.Context) {
	sb.mu.Lock()
	ready := sb.st == stateRunning
	sb.mu.Unlock()
	if !ready {
		return
	}
	if err := sb.files.lay(); err != nil {
		log.G(ctx).WithError(err).WithField("sandbox", sb.id).Warn("lay out the pod's files for CRI")
	}
}
