// Package runsc is the gVisor backend. runsc's CLI is close to runc's but
// not the same (stdio of sub-containers is connected at start, sandboxed
// processes are not the shim's children, exec needs an internal pid), so it
// has its own small wrapper, as gVisor's shim does (runsccmd).
package runsc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

	cgroup1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	cgroup2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/clilog"
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

// checkFlags runs runsc once with the configured flags ("runsc list"), so an
// unknown flag, a bad value or a platform this runsc lacks is reported at
// create in runsc's own words, before anything exists. systrap (the
// default) falls back to ptrace on older runsc builds (Debian 12's 2022
// package); kvm is used only when asked for. Results are cached per shim.
func checkFlags(bin, platform string, flags []string) (string, []string, error) {
	err := probe(bin, platform, flags)
	if err != nil && strings.Contains(err.Error(), "oci-seccomp") {
		log.L.WithField("runsc", bin).Warn("runsc has no --oci-seccomp: seccomp profiles will not be enforced")
		flags = slices.DeleteFunc(slices.Clone(flags), func(f string) bool { return f == "--oci-seccomp=true" })
		err = probe(bin, platform, flags)
	}
	if err != nil && platform == "systrap" && strings.Contains(err.Error(), "platform") && probe(bin, "ptrace", flags) == nil {
		log.L.WithField("runsc", bin).Warn("runsc has no systrap platform; falling back to ptrace")
		return "ptrace", flags, nil
	}
	if err != nil {
		return "", nil, fmt.Errorf("runsc backend: fields \"runsc.platform\", \"runsc.network\", \"runsc.flags\": %s rejects %s: %w: %w",
			bin, strings.Join(append([]string{"--platform=" + platform}, flags...), " "), err, errdefs.ErrInvalidArgument)
	}
	return platform, flags, nil
}

var probes sync.Map // bin and flags -> error (nil: accepted)

// probeCacheDir keeps the flag sets a runsc binary accepted, across shim
// processes: every container without a pod gets a shim of its own, and a
// probe is a runsc run (~20 ms) on its create path. Entries are named by
// the binary's identity (path, size, mtime) and the flags, so an upgraded
// runsc is probed again; the directory is on /run, cleared at boot.
var probeCacheDir = filepath.Join(DefaultRoot, ".accepted-flags")

func probe(bin, platform string, flags []string) error {
	args := append([]string{"--platform=" + platform}, flags...)
	key := bin + "\x00" + strings.Join(args, "\x00")
	if v, ok := probes.Load(key); ok {
		err, _ := v.(error)
		return err
	}
	marker := acceptedMarker(bin, args)
	if marker != "" {
		if _, err := os.Stat(marker); err == nil {
			probes.Store(key, nil)
			return nil
		}
	}
	root, err := os.MkdirTemp("", "runsc-probe-")
	if err != nil {
		return nil // cannot tell; create will say
	}
	defer os.RemoveAll(root)
	out, err := combinedOutput(exec.Command(bin, append(append([]string{"--root=" + root}, args...), "list")...))
	if err != nil {
		// The first line says what is wrong; usage text follows.
		msg, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		err = errors.New(msg)
	} else if marker != "" {
		// Only acceptance is remembered: a refusal is rare and its message
		// should come from runsc each time.
		if mkErr := os.MkdirAll(filepath.Dir(marker), 0o700); mkErr == nil {
			_ = os.WriteFile(marker, nil, 0o600) // a cache: losing it costs one probe
		}
	}
	probes.Store(key, err)
	return err
}

// acceptedMarker names the cache entry for bin and args, "" when the
// binary cannot be identified.
func acceptedMarker(bin string, args []string) string {
	fi, err := os.Stat(bin)
	if err != nil {
		return ""
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%d\x00%d\x00%s", bin, fi.Size(), fi.ModTime().UnixNano(), strings.Join(args, "\x00"))
	return filepath.Join(probeCacheDir, hex.EncodeToString(h.Sum(nil)))
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

// Exec implements runtime.Backend. The pid returned is that of the
// "runsc exec" process on the host: it stays a child of the shim for as
// long as the process runs in the sandbox and exits with its status. The
// reaper is held off until its pidfd is open, so that pid is still it.
func (b *Backend) Exec(ctx context.Context, id string, e *runtime.ExecConfig) (int, error) {
	resume := b.gate.Pause()
	defer resume()
	pid, err := b.exec(ctx, id, e)
	if err != nil {
		return 0, err
	}
	if err := b.execs.Add(e.ID, pid); err != nil {
		b.killStarted(ctx, id, b.bundle.ExecInternalPidFile(e.ID))
		return 0, err
	}
	return pid, nil
}

func (b *Backend) exec(ctx context.Context, id string, e *runtime.ExecConfig) (int, error) {
	f, err := os.CreateTemp(b.bundle.Path(), "runsc-process-*.json")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	err = json.NewEncoder(f).Encode(e.Spec)
	if cerr := f.Close(); err == nil {
		err = cerr // runsc reads the file: a failed close may have lost it
	}
	if err != nil {
		return 0, err
	}
	internal := b.bundle.ExecInternalPidFile(e.ID)
	// A file left by an earlier exec of this id would name a process that
	// is not this exec's.
	if err := os.Remove(internal); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	args := []string{"exec", "--process", f.Name(), "--detach", "--pid-file", e.PidFile, "--internal-pid-file", internal}
	if e.Console != nil {
		args = append(args, "--console-socket", e.Console.Path)
	}
	if err := b.run(ctx, "exec", e.IO, nil, append(args, id)...); err != nil {
		// runsc's detached exec can fail after the process ran: its parent
		// waits for the child's pid file and gives up if the child (and so
		// a process that exits at once) is gone before it looks. If the
		// child wrote both pid files, the process did start; its exit comes
		// through the reaper like any other.
		pid, perr := bundle.ReadPidFile(e.PidFile)
		if _, ierr := bundle.ReadPidFile(internal); perr != nil || ierr != nil || pid <= 0 {
			b.killStarted(ctx, id, internal)
			return 0, err
		}
		log.G(ctx).WithError(err).WithField("pid", pid).Debug("runsc exec reported a failure after the process started")
		return pid, nil
	}
	pid, err := bundle.ReadPidFile(e.PidFile)
	if err != nil {
		b.killStarted(ctx, id, internal)
		return 0, fmt.Errorf("read exec pid file: %w", err)
	}
	return pid, nil
}

// killStarted ends the sandboxed process of an exec that failed after
// runsc started it, as its internal pid file (written first) says: the
// task layer gets no pid and would never know it. SIGKILL, then "runsc
// wait" reaps it in the sandbox, which also ends its host "runsc exec"
// process if one is left. On a context of its own: the request's may be
// what ended the exec.
func (b *Backend) killStarted(ctx context.Context, id, internal string) {
	ipid, err := bundle.ReadPidFile(internal)
	if err != nil {
		return // never started, as far as runsc told
	}
	defer os.Remove(internal)
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	pid := strconv.Itoa(ipid)
	entry := log.G(ctx).WithField("internal_pid", ipid)
	if err := b.run(kctx, "kill", nil, nil, "kill", "--pid", pid, id, strconv.Itoa(int(unix.SIGKILL))); err != nil {
		if !errdefs.IsNotFound(err) {
			entry.WithError(err).Warn("kill exec process after a failed start")
		}
		return
	}
	if err := b.run(kctx, "wait", nil, io.Discard, "wait", "--pid", pid, id); err != nil {
		entry.WithError(err).Debug("wait for exec process killed after a failed start")
	}
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

// Signal implements runtime.Backend: runsc signals a sandboxed process by
// its pid inside the sandbox, which is the exec's only while its host
// "runsc exec" process runs (it waits for the sandboxed one).
func (b *Backend) Signal(ctx context.Context, id string, p runtime.ExecProcess, sig syscall.Signal) error {
	if !b.execs.Running(p.ID, p.Pid) {
		return fmt.Errorf("exec %s of container %s (pid %d) already finished: %w", p.ID, id, p.Pid, errdefs.ErrNotFound)
	}
	ipid, err := bundle.ReadPidFile(b.bundle.ExecInternalPidFile(p.ID))
	if err != nil {
		return fmt.Errorf("exec %s: internal pid: %w", p.ID, err)
	}
	err = b.run(ctx, "kill", nil, nil, "kill", "--pid", strconv.Itoa(ipid), id, strconv.Itoa(int(sig)))
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	return err
}

// Delete implements runtime.Backend. runsc refuses to delete an exited
// container whose sandbox is gone without --force, and the task service
// deletes only stopped or never-started containers, so always force.
func (b *Backend) Delete(ctx context.Context, id string, _ bool) error {
	err := b.run(ctx, "delete", nil, nil, "delete", "--force", id)
	if errdefs.IsNotFound(err) {
		err = nil
	}
	if err == nil {
		b.execs.Close()
		b.sandboxProc.Close()
		removeRoot(b.root)
	}
	return err
}

// list returns the ids of the containers in the backend's runsc root
// (none when runsc cannot tell).
func (b *Backend) list(ctx context.Context) []string {
	var out bytes.Buffer
	if err := b.run(ctx, "list", nil, &out, "list", "--quiet"); err != nil {
		log.G(ctx).WithError(err).Debug("runsc list")
		return nil
	}
	return strings.Fields(out.String())
}

// removeRoot removes a group's runsc root once its last container is gone.
// runsc leaves two things of its own there: "null-netns", a network
// namespace bind-mounted for sandboxes without network, which must be
// unmounted or it pins the namespace, and the lock file of a container
// whose create ended before its state was written (found by make soak: a
// pod removed while its crash-looping container was being created kept
// its root and null-netns). Anything else means a container of the group
// still lives there.
func removeRoot(root string) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.Name() != "null-netns" && !removeOrphanLock(root, e.Name()) {
			return
		}
	}
	nullNetns := filepath.Join(root, "null-netns")
	// The delete succeeded whatever happens here. The unmount fails if
	// nothing is mounted; a mount that stays makes the remove fail (EBUSY).
	_ = unix.Unmount(nullNetns, unix.MNT_DETACH)
	if err := os.Remove(nullNetns); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.L.WithError(err).WithField("root", root).Warn("runsc: null-netns left: it pins a network namespace")
	}
	_ = os.Remove(root) // not empty: a container of the group came meanwhile, and it is theirs
}

// removeOrphanLock removes name, in root, if it is a container's lock file
// ("<id>_sandbox:<sandbox>.lock") with no state file beside it that nobody
// holds (runsc takes it with flock while it works on the container); it
// reports whether name is gone.
func removeOrphanLock(root, name string) bool {
	base, ok := strings.CutSuffix(name, ".lock")
	if !ok || !strings.Contains(base, "_sandbox:") {
		return false
	}
	if _, err := os.Stat(filepath.Join(root, base+".state")); !errors.Is(err, os.ErrNotExist) {
		return false
	}
	f, err := os.Open(filepath.Join(root, name))
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return false // runsc is at work on it
	}
	return os.Remove(f.Name()) == nil
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

// Pids implements runtime.Backend.
func (b *Backend) Pids(ctx context.Context, id string) ([]int, error) {
	var out bytes.Buffer
	if err := b.run(ctx, "ps", nil, &out, "ps", "--format", "json", id); err != nil {
		return nil, err
	}
	var pids []int
	if err := json.Unmarshal(out.Bytes(), &pids); err != nil {
		return nil, fmt.Errorf("decode runsc ps output: %w", err)
	}
	return b.hostPids(pids), nil
}

// hostPids maps the pids runsc reports (inside the sandbox) to the host
// pids containerd knows where there are any: the container's first process
// to the task's pid, each exec to its host "runsc exec" process. Other
// sandboxed processes have no host process and keep their sandbox pid.
func (b *Backend) hostPids(pids []int) []int {
	if len(pids) == 0 {
		return pids
	}
	host := map[int]int{}
	if hp, err := bundle.ReadPidFile(b.bundle.InitPidFile()); err == nil {
		host[slices.Min(pids)] = hp
	}
	for _, execID := range b.bundle.ExecInternalPidFiles() {
		ip, err1 := bundle.ReadPidFile(b.bundle.ExecInternalPidFile(execID))
		hp, err2 := bundle.ReadPidFile(b.bundle.ExecPidFile(execID))
		if err1 == nil && err2 == nil {
			host[ip] = hp
		}
	}
	out := make([]int, len(pids))
	for i, p := range pids {
		if hp, ok := host[p]; ok {
			p = hp
		}
		out[i] = p
	}
	return out
}

// Cgroup implements runtime.Backend: the sandbox's host cgroup (pid is the
// sandbox process), where the host's OOM killer acts.
func (b *Backend) Cgroup(ctx context.Context, id string, pid int) (cgroup.Cgroup, error) {
	return cgroup.Load(pid)
}

// Stats implements runtime.Backend: the sandbox's own accounting ("runsc
// events --stats") in the cgroup metric types of the host's mode, with the
// OOM kill count of the host cgroup, which gVisor's own shim leaves out.
func (b *Backend) Stats(ctx context.Context, id string, cg cgroup.Cgroup) (*cgroup.Metrics, error) {
	var out bytes.Buffer
	if err := b.run(ctx, "events", nil, &out, "events", "--stats", id); err != nil {
		// Once the sandbox is gone (an exited task before its delete, an
		// OOM kill) runsc fails without a word; its host cgroup still has
		// the last figures.
		if cg != nil {
			if st, cerr := cg.Stats(); cerr == nil {
				return st, nil
			}
		}
		return nil, err
	}
	var ev gorunc.Event
	if err := json.Unmarshal(out.Bytes(), &ev); err != nil {
		return nil, fmt.Errorf("decode runsc events output: %w", err)
	}
	if ev.Type != "stats" || ev.Stats == nil {
		return nil, fmt.Errorf("runsc events --stats returned %q without stats", ev.Type)
	}
	// The sandbox does not know the host's memory limit or OOM kills; its
	// host cgroup does.
	var kills uint64
	if cg != nil {
		kills, _ = cg.OOMKills()
		if ev.Stats.Memory.Usage.Limit == 0 {
			ev.Stats.Memory.Usage.Limit = cg.MemoryLimit()
		}
	}
	if cgroup.Unified() {
		return &cgroup.Metrics{V2: v2Metrics(ev.Stats, kills)}, nil
	}
	return &cgroup.Metrics{V1: v1Metrics(ev.Stats, kills)}, nil
}

func v1Metrics(s *gorunc.Stats, oomKills uint64) *cgroup1stats.Metrics {
	entry := func(m gorunc.MemoryEntry) *cgroup1stats.MemoryEntry {
		return &cgroup1stats.MemoryEntry{Limit: m.Limit, Usage: m.Usage, Max: m.Max, Failcnt: m.Failcnt}
	}
	return &cgroup1stats.Metrics{
		CPU: &cgroup1stats.CPUStat{
			Usage: &cgroup1stats.CPUUsage{
				Total: s.Cpu.Usage.Total, Kernel: s.Cpu.Usage.Kernel, User: s.Cpu.Usage.User, PerCPU: s.Cpu.Usage.Percpu,
			},
			Throttling: &cgroup1stats.Throttle{
				Periods: s.Cpu.Throttling.Periods, ThrottledPeriods: s.Cpu.Throttling.ThrottledPeriods, ThrottledTime: s.Cpu.Throttling.ThrottledTime,
			},
		},
		Memory: &cgroup1stats.MemoryStat{
			Cache:     s.Memory.Cache,
			Usage:     entry(s.Memory.Usage),
			Swap:      entry(s.Memory.Swap),
			Kernel:    entry(s.Memory.Kernel),
			KernelTCP: entry(s.Memory.KernelTCP),
		},
		Pids:             &cgroup1stats.PidsStat{Current: s.Pids.Current, Limit: s.Pids.Limit},
		MemoryOomControl: &cgroup1stats.MemoryOomControl{OomKill: oomKills},
	}
}

func v2Metrics(s *gorunc.Stats, oomKills uint64) *cgroup2stats.Metrics {
	return &cgroup2stats.Metrics{
		CPU: &cgroup2stats.CPUStat{
			UsageUsec:  s.Cpu.Usage.Total / 1000,
			UserUsec:   s.Cpu.Usage.User / 1000,
			SystemUsec: s.Cpu.Usage.Kernel / 1000,
		},
		Memory: &cgroup2stats.MemoryStat{
			Usage:      s.Memory.Usage.Usage,
			UsageLimit: s.Memory.Usage.Limit,
			MaxUsage:   s.Memory.Usage.Max,
			SwapUsage:  s.Memory.Swap.Usage,
			SwapLimit:  s.Memory.Swap.Limit,
		},
		Pids:         &cgroup2stats.PidsStat{Current: s.Pids.Current, Limit: s.Pids.Limit},
		MemoryEvents: &cgroup2stats.MemoryEvents{OomKill: oomKills},
	}
}

// Checkpoint implements runtime.Backend with runsc's own checkpointing.
func (b *Backend) Checkpoint(ctx context.Context, id string, c *runtime.CheckpointConfig) error {
	args := []string{"checkpoint", "--image-path=" + c.ImagePath}
	if !c.Exit {
		args = append(args, "--leave-running")
	}
	return b.run(ctx, "checkpoint", nil, nil, append(args, id)...)
}

func (b *Backend) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, b.bin, append(append([]string(nil), b.global...), args...)...)
	cmd.Dir = b.bundle.Path()
	// A sandbox process that inherited a captured stdout or stderr would
	// keep the pipe open and the wait for its output would never end.
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// run runs one runsc command. With cio the command gets the container's
// stdio (the sandbox or sub-container inherits it); without, its output
// goes to out, and stderr is kept for the error message.
func (b *Backend) run(ctx context.Context, op string, cio *runtime.IO, out io.Writer, args ...string) error {
	cmd := b.command(ctx, args...)
	var stderr bytes.Buffer
	if cio != nil {
		runcbackend.CmdIO(cio).Set(cmd)
	} else {
		cmd.Stdout = out
		cmd.Stderr = &stderr
	}
	began := time.Now()
	err := b.wait(cmd, op, &stderr)
	if err != nil && ctx.Err() != nil && len(args) > 0 {
		return b.unanswered(op, args[len(args)-1], time.Since(began), ctx.Err())
	}
	return err
}

// maxStacks bounds the sandbox stacks one unanswered command logs.
const maxStacks = 256 << 10

// unanswered reports a runsc command killed because its request ended
// first. runsc waits on the sandbox and does not return while the sentry
// does not answer, so the request's deadline is what ends it: the error
// says so, and the sandbox's stacks go to the log for the operator (the
// wedged goroutine is in them), fetched with a bound of their own.
func (b *Backend) unanswered(op, id string, took time.Duration, cause error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var stacks bytes.Buffer
	cmd := b.command(ctx, "debug", "--stacks", id)
	cmd.Stdout = &stacks
	derr := b.wait(cmd, "debug", &bytes.Buffer{})
	text := stacks.String()
	if len(text) > maxStacks {
		text = text[:maxStacks] + "\n[cut]"
	}
	entry := log.L.WithFields(log.Fields{"op": op, "id": id, "after": took.Round(time.Millisecond).String()})
	if derr != nil {
		entry = entry.WithField("stacks_error", derr.Error())
	}
	entry.WithField("stacks", text).Warn("runsc did not return before the request ended and was killed; the sandbox's stacks follow")
	return fmt.Errorf("runsc %s %s: no answer from the sandbox after %s, killed: %w", op, id, took.Round(time.Millisecond), cause)
}

// wait runs a prepared command and classifies its failure: runsc's stderr
// says what went wrong, else (stderr was the container's) its log does.
func (b *Backend) wait(cmd *exec.Cmd, op string, stderr *bytes.Buffer) error {
	if cmd.Stderr == nil {
		cmd.Stderr = stderr
	}
	off := clilog.Size(b.log)
	ec, err := gorunc.Monitor.Start(cmd)
	if err != nil {
		return fmt.Errorf("runsc %s: %w", op, err)
	}
	status, err := gorunc.Monitor.Wait(cmd, ec)
	if err == nil && status == 0 {
		return nil
	}
	msg := strings.TrimSpace(stderr.String())
	if msg == "" {
		msg = clilog.LastError(b.log, off)
	}
	if msg == "" {
		msg = clilog.SpaceHint(b.bundle.Path())
	}
	return runtimeError(op, msg, status, err)
}

func runtimeError(op, msg string, status int, err error) error {
	if msg == "" {
		if err != nil {
			msg = err.Error()
		} else {
			msg = fmt.Sprintf("exit status %d", status)
		}
	}
	if kind := clilog.Classify(clilog.Runsc, op, msg); kind != nil {
		return fmt.Errorf("runsc %s failed: %s: %w", op, msg, kind)
	}
	return fmt.Errorf("runsc %s failed: %s", op, msg)
}

func combinedOutput(cmd *exec.Cmd) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	ec, err := gorunc.Monitor.Start(cmd)
	if err != nil {
		return nil, err
	}
	status, err := gorunc.Monitor.Wait(cmd, ec)
	if err == nil && status != 0 {
		err = errors.New("exit status " + strconv.Itoa(status))
	}
	return out.Bytes(), err
}
