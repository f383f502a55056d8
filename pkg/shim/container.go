package shim

import (
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// container is one task: its init process, its execs and the backend that
// runs them.
type container struct {
	id        string
	bundle    string
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
	restore       *runtime.RestoreConfig
	restoreConfig *runtime.CreateConfig
	// cgroup is the container's cgroup (cgroup1.Cgroup or *cgroup2.Manager),
	// nil when the backend has none on the host.
	cgroup      any
	annotations map[string]string

	init *process

	// For metrics: labels, identity, and when the task was created/started.
	labels    metrics.Labels
	ident     metrics.Task
	createdAt time.Time
	startedAt time.Time // guarded by init.mu
	oomKilled atomic.Bool

	mu    sync.Mutex
	execs map[string]*process // guarded by mu; a nil value reserves the id
}

func newContainer(id, bundle, ns string, cfg *oci.Config, spec *specs.Spec, b runtime.Backend) *container {
	c := &container{
		id:          id,
		bundle:      bundle,
		namespace:   ns,
		backend:     b,
		cfg:         cfg,
		annotations: spec.Annotations,
		execs:       make(map[string]*process),
		sharedPidNS: true,
		labels:      metrics.Labels{Backend: cfg.Backend, Handler: cfg.RuntimeHandler},
		ident:       metrics.TaskFromAnnotations(ns, id, spec.Annotations),
	}
	if w, ok := b.(runtime.InitWaiter); ok {
		c.waiter = w
	}
	if spec.Linux != nil {
		for _, ns := range spec.Linux.Namespaces {
			if ns.Type == specs.PIDNamespace && ns.Path == "" {
				c.sharedPidNS = false
			}
		}
	}
	return c
}

// reserveExec claims an exec id; AlreadyExists if taken.
func (c *container) reserveExec(id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.execs[id]; ok {
		return fmt.Errorf("exec %s of task %s: %w", id, c.id, errdefs.ErrAlreadyExists)
	}
	c.execs[id] = nil
	return nil
}

func (c *container) setExec(id string, p *process) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p == nil {
		delete(c.execs, id)
		return
	}
	c.execs[id] = p
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

func (c *container) execList() []*process {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*process, 0, len(c.execs))
	for _, p := range c.execs {
		if p != nil {
			out = append(out, p)
		}
	}
	return out
}

func (c *container) pidFile(execID string) string {
	if execID == "" {
		return filepath.Join(c.bundle, "init.pid")
	}
	return runtime.ExecPidFile(c.bundle, execID)
}
