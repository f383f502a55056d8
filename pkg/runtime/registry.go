package runtime

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go/features"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
)

// Registration describes one backend to the shim. A backend package
// exports one; the shim lists them in one place (pkg/shim/backends.go).
type Registration struct {
	// Name selects the backend in configurations ("backend = <Name>") and
	// names its settings table ([<Name>]).
	Name string
	// Settings returns the backend's settings with their defaults.
	Settings func() oci.Section
	// New returns the backend for one container. A missing runtime binary
	// or unusable settings are reported here, before anything exists.
	New func(s oci.Section, c *Container) (Backend, error)
	// Features describes what the runtime supports, for containerd's
	// "-info" call (2.2+). nil: the backend has nothing to say.
	Features func(ctx context.Context, s oci.Section) (*features.Features, error)
	// NewPod returns the backend's sandbox for a pod (containerd's Sandbox
	// API). nil: the backend has no pod sandboxes.
	NewPod func(s oci.Section, p *Pod) (PodSandbox, error)
}

// Registry is the set of backends built into the shim.
type Registry struct {
	regs   map[string]Registration
	schema *oci.Schema
	reaper ReaperGate
}

// NewRegistry registers backends; the first is the default backend.
func NewRegistry(regs ...Registration) *Registry {
	r := &Registry{regs: make(map[string]Registration), schema: oci.NewSchema(), reaper: NoReaper{}}
	for _, reg := range regs {
		r.regs[reg.Name] = reg
		r.schema.Add(reg.Name, reg.Settings)
	}
	return r
}

// WithReaper hands the shim's reaper gate to the backends it builds.
func (r *Registry) WithReaper(g ReaperGate) *Registry {
	r.reaper = g
	return r
}

// Schema is the configuration schema of the registered backends.
func (r *Registry) Schema() *oci.Schema { return r.schema }

// Names lists the backends, the default first.
func (r *Registry) Names() []string { return r.schema.Names() }

// New builds the backend cfg selects for container c.
func (r *Registry) New(cfg *oci.Config, c *Container) (Backend, error) {
	reg, ok := r.regs[cfg.Backend]
	if !ok {
		return nil, fmt.Errorf("%s: backend %q is not available in this shim: %w", cfg.Source, cfg.Backend, errdefs.ErrNotImplemented)
	}
	if c.Reaper == nil {
		c.Reaper = r.reaper
	}
	if c.Spec != nil && c.Spec.Linux != nil {
		if err := oci.CheckCgroupsPath(cfg, c.Spec.Linux.CgroupsPath); err != nil {
			return nil, err
		}
	}
	b, err := reg.New(cfg.Section(), c)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.Source, err)
	}
	return b, nil
}

// Features describes the runtime cfg selects; nil when it has nothing to
// say.
func (r *Registry) Features(ctx context.Context, cfg *oci.Config) (*features.Features, error) {
	reg, ok := r.regs[cfg.Backend]
	if !ok || reg.Features == nil {
		return nil, nil
	}
	return reg.Features(ctx, cfg.Section())
}

// NewPod builds the pod sandbox cfg's backend provides.
func (r *Registry) NewPod(cfg *oci.Config, p *Pod) (PodSandbox, error) {
	reg, ok := r.regs[cfg.Backend]
	if !ok {
		return nil, fmt.Errorf("%s: backend %q is not available in this shim: %w", cfg.Source, cfg.Backend, errdefs.ErrNotImplemented)
	}
	if reg.NewPod == nil {
		return nil, fmt.Errorf("backend %q has no pod sandboxes: %w", cfg.Backend, errdefs.ErrNotImplemented)
	}
	if p.Reaper == nil {
		p.Reaper = r.reaper
	}
	if err := oci.CheckCgroupParent(cfg, p.CgroupParent); err != nil {
		return nil, err
	}
	return reg.NewPod(cfg.Section(), p)
}
