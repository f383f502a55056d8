// Package runsc is the gVisor backend. runsc's CLI is close to runc's but
// not the same (stdio of sub-containers is connected at start, sandboxed
// processes are not the shim's children, exec needs an internal pid), so it
// has its own small wrapper, as gVisor's shim does (runsccmd).
package runsc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/pidfd"
	runcbackend "github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/runc"
)

// Name of this backend.
const Name = "runsc"

// DefaultRoot is where runsc keeps container state, per namespace and pod.
const DefaultRoot = "/run/containerd/custom/runsc"

// Config is the [runsc] table.
//
//	[runsc]
//	binary_name = "runsc"
//	root = "/run/containerd/custom/runsc"
//	platform = "systrap"              # systrap, ptrace or kvm
//	network = "sandbox"               # sandbox, host or none
//	debug_log = ""
//	flags = { "overlay2" = "root:memory" }
type Config struct {
	BinaryName string            `toml:"binary_name" json:"binary_name,omitempty"`
	Root       string            `toml:"root" json:"root,omitempty"`
	Platform   string            `toml:"platform" json:"platform,omitempty"`
	Network    string            `toml:"network" json:"network,omitempty"`
	DebugLog   string            `toml:"debug_log" json:"debug_log,omitempty"`
	Flags      map[string]string `toml:"flags" json:"flags,omitempty"`
	// SystemdCgroup runs runsc with --systemd-cgroup: the sandbox's cgroup
	// is a scope unit in the Pod's slice (kubelet's cgroupDriver: systemd).
	SystemdCgroup bool `toml:"systemd_cgroup" json:"systemd_cgroup,omitempty"`
}

// Validate implements oci.Section.
func (c *Config) Validate() error {
	if c.BinaryName == "" {
		return fmt.Errorf("field \"runsc.binary_name\": must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(c.Root) {
		return fmt.Errorf("field \"runsc.root\": %q is not an absolute path: %w", c.Root, errdefs.ErrInvalidArgument)
	}
	switch c.Platform {
	case "systrap", "ptrace", "kvm":
	default:
		return fmt.Errorf("field \"runsc.platform\": unknown platform %q (want systrap, ptrace or kvm): %w", c.Platform, errdefs.ErrInvalidArgument)
	}
	switch c.Network {
	case "sandbox", "host", "none":
	default:
		return fmt.Errorf("field \"runsc.network\": unknown network %q (want sandbox, host or none): %w", c.Network, errdefs.ErrInvalidArgument)
	}
	for k := range c.Flags {
		if k == "" || strings.HasPrefix(k, "-") || strings.ContainsAny(k, "= \t\n") {
			return fmt.Errorf("field \"runsc.flags\": invalid flag name %q (write it without dashes, e.g. \"overlay2\"): %w", k, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// Binary implements oci.Section.
func (c *Config) Binary() string { return c.BinaryName }

// ClaimsBinary implements oci.Section: containerd's runc options whose
// BinaryName names runsc select gVisor.
func (c *Config) ClaimsBinary(name string) bool { return strings.Contains(name, "runsc") }

// ApplyRuncOptions implements oci.Section.
func (c *Config) ApplyRuncOptions(ro *runcoptions.Options) {
	if ro.BinaryName != "" {
		c.BinaryName = ro.BinaryName
	}
	if ro.Root != "" {
		c.Root = ro.Root
	}
	c.SystemdCgroup = ro.SystemdCgroup
}

// UsesSystemdCgroup implements oci.CgroupDriverSection.
func (c *Config) UsesSystemdCgroup() bool { return c.SystemdCgroup }

// Registration registers the backend with the shim.
func Registration() runtime.Registration {
	return runtime.Registration{
		Name: Name,
		Settings: func() oci.Section {
			return &Config{BinaryName: "runsc", Root: DefaultRoot, Platform: "systrap", Network: "sandbox"}
		},
		New: func(s oci.Section, c *runtime.Container) (runtime.Backend, error) {
			return New(*s.(*Config), c)
		},
		NewPod: func(s oci.Section, p *runtime.Pod) (runtime.PodSandbox, error) {
			if p.UserNS != nil {
				// Not advertised either (withoutUserNamespaces): kubelet
				// sends no such pod; CRI clients that ask are told.
				return nil, fmt.Errorf("user namespaces (hostUsers: false) on gVisor: runsc cannot join the pod's user namespace: %w", errdefs.ErrNotImplemented)
			}
			return NewPod(*s.(*Config), p), nil
		},
		Features: func(ctx context.Context, s oci.Section) (*features.Features, error) {
			f, err := runcbackend.CLIFeatures(ctx, s.Binary())
			if err != nil {
				return nil, err
			}
			withoutUserNamespaces(f)
			return f, nil
		},
	}
}

// withoutUserNamespaces drops what "runsc features" claims but runsc cannot
// do through containerd: join CRI's pinned user namespace or idmap mounts.
// Advertised, CRI would send user-namespaced pods that then fail in the
// gofer; withheld, CRI refuses them cleanly.
func withoutUserNamespaces(f *features.Features) {
	if f.Linux == nil {
		return
	}
	f.Linux.Namespaces = slices.DeleteFunc(f.Linux.Namespaces, func(ns string) bool { return ns == "user" })
	if m := f.Linux.MountExtensions; m != nil && m.IDMap != nil {
		off := false
		m.IDMap.Enabled = &off
	}
}

// Backend drives one container through runsc.
type Backend struct {
	bin    string
	global []string // flags before the subcommand
	bundle bundle.Bundle
	log    string // runsc's log file, for error messages
	// sandbox is true for a pod's first container (or a lone container):
	// runsc create starts the sandbox and hands it the stdio. The others
	// join it and get their stdio at start.
	sandbox bool
	spec    *specs.Spec
	root    string // runsc --root
	gate    runtime.ReaperGate
	// execs holds a pidfd of each exec's host "runsc exec" process, which
	// lives as long as the sandboxed process: a signal by the sandbox's
	// pid goes only to an exec whose host process still runs.
	execs pidfd.Table
	// sandboxProc holds a pidfd of the sandbox process, to end a wedged
	// sandbox on the host (wedged.go).
	sandboxProc pidfd.Table
	mu          sync.Mutex
	sandboxPid  int // guarded by mu; 0 while none is held
}

// subContainer is the backend of a container that joins a pod's sandbox.
// Its pid is the sandbox's, shared with the pod, so its exit comes from
// "runsc wait". A sandbox's own container needs no waiting: the sandbox
// process is the shim's child and exits with the container's status.
type subContainer struct{ *Backend }

var (
	_ runtime.Backend    = (*Backend)(nil)
	_ runtime.InitWaiter = subContainer{}
)

// New returns the backend for the container in bundle. A missing binary,
// or a platform this runsc does not have, is reported here, before
// anything is created.
func New(cfg Config, c *runtime.Container) (runtime.Backend, error) {
	b, err := newBackend(cfg, c.Namespace, c.Bundle, c.Spec, c.Group)
	if err != nil {
		return nil, err
	}
	if c.Reaper != nil {
		b.gate = c.Reaper
	}
	if !b.sandbox {
		return subContainer{b}, nil
	}
	return b, nil
}

func newBackend(cfg Config, namespace string, bdl bundle.Bundle, spec *specs.Spec, group string) (*Backend, error) {
	bin, err := exec.LookPath(cfg.BinaryName)
	if err != nil {
		return nil, fmt.Errorf("runsc backend: field \"runsc.binary_name\": runtime binary %q not found: %w: %w",
			cfg.BinaryName, err, errdefs.ErrFailedPrecondition)
	}
	b := &Backend{
		bin:     bin,
		bundle:  bdl,
		log:     bdl.RuntimeLog("runsc.log"),
		sandbox: spec.Annotations[oci.AnnotationCRIType] != oci.CRITypeContainer,
		spec:    spec,
		// One root per shim group (a pod): runsc finds containers by id
		// prefix, so "web" would be ambiguous next to "web2" in a shared
		// root; a pod's containers must share one to find their sandbox.
		root: filepath.Join(cfg.Root, namespace, group),
		gate: runtime.NoReaper{},
	}
	flags := []string{"--network=" + sandboxNetwork(cfg.Network, b.sandbox, spec)}
	if _, set := cfg.Flags["oci-seccomp"]; !set {
		// Without it runsc ignores the spec's seccomp profile.
		flags = append(flags, "--oci-seccomp=true")
	}
	if cfg.DebugLog != "" {
		flags = append(flags, "--debug", "--debug-log="+cfg.DebugLog)
	}
	if _, set := cfg.Flags["systemd-cgroup"]; cfg.SystemdCgroup && !set {
		flags = append(flags, "--systemd-cgroup=true")
	}
	keys := make([]string, 0, len(cfg.Flags))
	for k := range cfg.Flags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		flags = append(flags, "--"+k+"="+cfg.Flags[k])
	}
	platform, flags, err := checkFlags(bin, cfg.Platform, flags)
	if err != nil {
		return nil, err
	}
	b.global = append([]string{
		"--root=" + b.root,
		"--log=" + b.log,
		"--log-format=json",
		"--platform=" + platform,
	}, flags...)
	return b, nil
}

// sandboxNetwork picks runsc's --network. "sandbox" copies the interfaces
// of the network namespace the spec names; a sandbox whose spec asks for a
// fresh namespace (ctr, nerdctl --net none: no path, no CNI) has nothing to
// copy there, not even an "up" loopback, so gVisor's own stack with its own
// loopback ("none") gives it what runc would: a working lo. A spec without a
// network namespace shares the host's ("host").
func sandboxNetwork(configured string, sandbox bool, spec *specs.Spec) string {
	if configured != "sandbox" || !sandbox || spec.Linux == nil {
		return configured
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			if ns.Path == "" {
				return "none"
			}
			return configured
		}
	}
	// No network namespace: the host's network (CRI hostNetwork pods);
	// "sandbox" would make runsc create an empty one.
	return "host"
}

// Create implements runtime.Backend.
func (b *Backend) Create(ctx context.Context, c *runtime.CreateConfig) (int, error) {
	// runc reports a missing executable at create; runsc only when the
	// process fails to start, too late for the Task API's contract.
	if err := checkExecutable(c.Bundle, b.spec); err != nil {
		return 0, err
	}
	if b.sandbox {
		if err := shareHostname(c.Bundle, b.spec); err != nil {
			return 0, err
		}
		if err := hostCgroupParent(b.spec); err != nil {
			return 0, err
		}
	}
	args := []string{"create", "--bundle", c.Bundle.Path(), "--pid-file", c.PidFile}
	if c.Console != nil {
		args = append(args, "--console-socket", c.Console.Path)
	}
	var cio *runtime.IO
	if b.sandbox {
		cio = c.IO
	}
	// The reaper is held off until the sandbox process is held: its pid
	// cannot be reaped and reused meanwhile.
	resume := b.gate.Pause()
	defer resume()
	if err := b.run(ctx, "create", cio, nil, append(args, c.ID)...); err != nil {
		return 0, err
	}
	pid, err := bundle.ReadPidFile(c.PidFile)
	if err != nil {
		return 0, fmt.Errorf("read init pid file: %w", err)
	}
	b.holdSandbox(ctx, pid)
	if !b.sandbox {
		warnUnenforcedLimit(ctx, c.ID, b.spec, pid)
	}
	return pid, nil
}

// Start implements runtime.Backend.
func (b *Backend) Start(ctx context.Context, id string, cio *runtime.IO) error {
	if b.sandbox {
		cio = nil
	}
	return b.run(ctx, "start", cio, nil, "start", id)
}

// WaitInit implements runtime.InitWaiter for sub-containers.
func (b subContainer) WaitInit(ctx context.Context, id string) (runtime.Exit, error) {
	var out bytes.Buffer
	if err := b.run(ctx, "wait", nil, &out, "wait", id); err != nil {
		return runtime.Exit{}, err
	}
	var res struct {
		ExitStatus int `json:"exitStatus"`
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		return runtime.Exit{}, fmt.Errorf("decode runsc wait output %q: %w", out.String(), err)
	}
	return runtime.Exit{Status: res.ExitStatus, Timestamp: time.Now()}, nil
}

// Restore implements runtime.Backend: create the container, then restore
// its state from a runsc checkpoint image instead of starting it.
func (b *Backend) Restore(ctx context.Context, c *runtime.CreateConfig, r *runtime.RestoreConfig) (int, error) {
	// A rootfs restored with its read-write layer carries the checkpointed
	// sandbox's overlay filestore, which runsc refuses to reuse.
	stale, _ := filepath.Glob(filepath.Join(c.Bundle.Rootfs(), ".gvisor.filestore.*"))
	for _, f := range stale {
		_ = os.Remove(f) // one that stays makes runsc refuse the restore, saying so
	}
	pid, err := b.Create(ctx, c)
	if err != nil {
		return 0, err
	}
	var cio *runtime.IO
	if !b.sandbox {
		cio = c.IO
	}
	if err := b.run(ctx, "restore", cio, nil, "restore", "--detach", "--image-path="+r.ImagePath, c.ID); err != nil {
		if derr := b.Delete(context.WithoutCancel(ctx), c.ID, true); derr != nil {
			log.G(ctx).WithError(derr).Warn("delete container after failed restore")
		}
		return 0, err
	}
	return pid, nil
}

// Kill implements runtime.Backend.
func (b *Backend) Kill(ctx context.Context, id string, sig syscall.Signal, all bool) error {
	args := []string{"kill"}
	if all {
		args = append(args, "--all")
	}
	kctx := ctx
	if sig == unix.SIGKILL {
		var cancel context.CancelFunc
		kctx, cancel = context.WithTimeout(ctx, killTimeout)
		defer cancel()
	}
	err := b.run(kctx, "kill", nil, nil, append(args, id, strconv.Itoa(int(sig)))...)
	if err != nil && kctx.Err() != nil && ctx.Err() == nil && b.killSandboxOnHost(ctx, id, err) {
		return nil
	}
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	return err
}

// Delete implements runtime.Backend. runsc refuses to delete an exited
// container whose sandbox is gone without --force, and the task service
// deletes only stopped or never-started containers, so always force.
func (b *Backend) Delete(ctx context.Context, id string, force bool) error {
	if force && b.sandbox && id == filepath.Base(b.root) {
		// The pod's own container, deleted after its shim died: its
		// sub-containers whose bundles containerd removed without a
		// "delete" of their own (2.2 does) are only known to runsc now:
		// delete them first, or their state and the root's null-netns
		// mount stay.
		for _, other := range b.list(ctx) {
			if other == id {
				continue
			}
			if err := b.Delete(ctx, other, false); err != nil {
				log.G(ctx).WithError(err).WithField("id", other).Warn("delete a container left in the pod's sandbox")
			}
		}
	}
	err := b.run(ctx, "delete", nil, nil, "delete", "--force", id)
	if errdefs.IsNotFound(err) {
		err = nil
	}
	if err == nil {
		b.execs.Close()
		b.sandboxProc.Close()
	}
	// Even when runsc's delete failed: after a shim's death containerd
	// deletes a Pod's containers concurrently, and a sub-container's
	// delete fails ("no control socket found for sandbox") once its
	// sandbox's went first, yet runsc removed its state. The last delete
	// of the group must still take the root and its null-netns mount;
	// removeRoot leaves a root that still has a container.
	removeRoot(b.root)
	return err
}

// Pause implements runtime.Backend.
func (b *Backend) Pause(ctx context.Context, id string) error {
	return b.run(ctx, "pause", nil, nil, "pause", id)
}

// Resume implements runtime.Backend.
func (b *Backend) Resume(ctx context.Context, id string) error {
	return b.run(ctx, "resume", nil, nil, "resume", id)
}

// Update implements runtime.Backend.
func (b *Backend) Update(ctx context.Context, id string, r *specs.LinuxResources) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	cmd := b.command(ctx, "update", "--resources=-", id)
	cmd.Stdin = bytes.NewReader(data)
	return b.wait(cmd, "update", &bytes.Buffer{})
}

// Checkpoint implements runtime.Backend with runsc's own checkpointing.
func (b *Backend) Checkpoint(ctx context.Context, id string, c *runtime.CheckpointConfig) error {
	args := []string{"checkpoint", "--image-path=" + c.ImagePath}
	if !c.Exit {
		args = append(args, "--leave-running")
	}
	return b.run(ctx, "checkpoint", nil, nil, append(args, id)...)
}
