package runsc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// PauseMode is the binary's argument that makes it a pod sandbox's first
// process inside gVisor: it waits for a signal, as pause does.
const PauseMode = "sandbox-pause"

// pod is a pod's gVisor sandbox for containerd's Sandbox API: the runsc
// sandbox booted at StartSandbox with a root container of its own (ID =
// the pod's sandbox ID, as the pause container's is on the pause path),
// whose process is this shim's binary in pause mode. The pod's containers
// become sub-containers of that sandbox: CRI annotates them with the
// sandbox ID, as on the pause path.
type pod struct {
	cfg Config
	p   *runtime.Pod

	mu      sync.Mutex
	backend *Backend // guarded by mu; nil until Start
}

var _ runtime.PodSandbox = (*pod)(nil)

// NewPod returns the gVisor sandbox for a pod.
func NewPod(cfg Config, p *runtime.Pod) runtime.PodSandbox { return &pod{cfg: cfg, p: p} }

func (s *pod) rootfs() string { return s.p.Bundle.Rootfs() }
func (s *pod) pause() string  { return filepath.Join(s.rootfs(), "pause") }

// CgroupPath implements runtime.PodSandbox.
func (s *pod) CgroupPath() string { return cgroupsPath(s.p.CgroupParent, s.p.ID) }

func cgroupsPath(parent, id string) string {
	if parent == "" {
		return ""
	}
	if strings.HasSuffix(parent, ".slice") {
		// systemd knows the slice by its name, the last element of the
		// cgroupfs path kubelet passes, as in containerd's CRI paths.
		return path.Base(parent) + ":cri-containerd:" + id
	}
	return strings.TrimSuffix(parent, "/") + "/" + id
}

// spec is the root container's spec: a pause process in the pod's
// namespaces, on an empty read-only rootfs.
func (s *pod) spec() *specs.Spec {
	p := s.p
	namespaces := []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.MountNamespace}}
	if p.NetNS != "" {
		namespaces = append(namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: p.NetNS})
	}
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Args:            []string{"/pause", PauseMode},
			Cwd:             "/",
			User:            specs.User{UID: 65535, GID: 65535},
			Env:             []string{"PATH=/"},
			NoNewPrivileges: true,
		},
		Root:        &specs.Root{Path: "rootfs", Readonly: true},
		Hostname:    p.Hostname,
		Annotations: p.Annotations,
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: s.CgroupPath(),
			Namespaces:  namespaces,
			Sysctl:      p.Sysctls,
		},
	}
}

// Start implements runtime.PodSandbox: runsc create and start of the root
// container.
func (s *pod) Start(ctx context.Context) (_ int, retErr error) {
	b := s.p.Bundle
	defer func() {
		if retErr != nil {
			_ = s.unmountPause() // the start's error is the one to report
		}
	}()
	if err := s.mountPause(); err != nil {
		return 0, err
	}
	spec := s.spec()
	data, err := json.Marshal(spec)
	if err != nil {
		return 0, err
	}
	if err := bundle.WriteFileAtomic(b.Spec(), data, 0o600); err != nil {
		return 0, fmt.Errorf("write the sandbox's spec: %w", err)
	}
	be, err := newBackend(s.cfg, s.p.Namespace, b, spec, s.p.ID)
	if err != nil {
		return 0, err
	}
	if s.p.Reaper != nil {
		be.gate = s.p.Reaper
	}
	// The sandbox's processes inherit runsc create's stdio and keep it: a
	// pipe (what a command's captured stderr is) would never see EOF and
	// the create would never be waited for. /dev/null it is; runsc's errors
	// are in its log.
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	stdio := &runtime.IO{Stdin: devnull, Stdout: devnull, Stderr: devnull}
	pid, err := be.Create(ctx, &runtime.CreateConfig{ID: s.p.ID, Bundle: b, IO: stdio, PidFile: b.InitPidFile()})
	if err != nil {
		_ = be.Delete(context.WithoutCancel(ctx), s.p.ID, true) // the create's error is the one to report
		return 0, fmt.Errorf("boot gVisor sandbox: %w", err)
	}
	if err := be.Start(ctx, s.p.ID, nil); err != nil {
		_ = be.Delete(context.WithoutCancel(ctx), s.p.ID, true)
		return 0, fmt.Errorf("start gVisor sandbox: %w", err)
	}
	s.mu.Lock()
	s.backend = be
	s.mu.Unlock()
	return pid, nil
}

// mountPause puts this binary at /pause in the sandbox's rootfs, read-only:
// a static binary gVisor can run, and no pause image needed.
func (s *pod) mountPause() error {
	if err := os.MkdirAll(s.rootfs(), 0o755); err != nil {
		return err
	}
	if mounted, _ := mountinfo.Mounted(s.pause()); mounted {
		return nil
	}
	f, err := os.OpenFile(s.pause(), os.O_CREATE|os.O_RDONLY, 0o555)
	if err != nil {
		return fmt.Errorf("create the sandbox's /pause: %w", err)
	}
	_ = f.Close() // an empty mount point
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if err := unix.Mount(self, s.pause(), "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind this binary at the sandbox's /pause: %w", err)
	}
	if err := unix.Mount("", s.pause(), "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("make the sandbox's /pause read-only: %w", err)
	}
	return nil
}

func (s *pod) unmountPause() error {
	if err := unix.Unmount(s.pause(), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount the sandbox's /pause: %w", err)
	}
	// containerd removes the bundle's rootfs directory, which must be empty.
	if err := os.Remove(s.pause()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove the sandbox's /pause: %w", err)
	}
	return nil
}

// runsc is the backend of the root container: the one Start made, or (the
// "delete" action after a shim died) one for the runsc state the bundle
// names; nil when the sandbox never got as far as runsc.
func (s *pod) runsc() *Backend {
	s.mu.Lock()
	be := s.backend
	s.mu.Unlock()
	if be != nil {
		return be
	}
	if _, err := os.Stat(s.p.Bundle.Spec()); err != nil {
		return nil
	}
	be, err := newBackend(s.cfg, s.p.Namespace, s.p.Bundle, &specs.Spec{Annotations: s.p.Annotations}, s.p.ID)
	if err != nil {
		return nil
	}
	return be
}

// Stop implements runtime.PodSandbox: the sandbox process goes, and with it
// every container still in the sandbox. A wedged sandbox is ended on the
// host (wedged.go).
func (s *pod) Stop(ctx context.Context) error {
	be := s.runsc()
	if be == nil {
		return nil
	}
	if err := be.Kill(ctx, s.p.ID, unix.SIGKILL, true); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	// A sentry that took the kill and does not end is as wedged as one
	// that does not answer (wedged.go).
	deadline := time.Now().Add(killTimeout)
	for be.sandboxRunning() {
		if time.Now().After(deadline) {
			be.killSandboxOnHost(ctx, s.p.ID, fmt.Errorf("the sandbox outlived runsc's kill by %s", killTimeout))
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// Delete implements runtime.PodSandbox.
func (s *pod) Delete(ctx context.Context) error {
	if be := s.runsc(); be != nil {
		// Force: its sub-containers go too (Backend.Delete).
		if err := be.Delete(ctx, s.p.ID, true); err != nil {
			return err
		}
	}
	return s.unmountPause()
}
