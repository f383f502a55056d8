package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
)

// criPlugin is the directory CRI keeps under containerd's root and state
// directories.
const criPlugin = "io.containerd.grpc.v1.cri"

// podFiles are the files CRI's podsandbox controller gives a pause pod and
// that, with sandboxer = "shim", only the shim can give: CRI bind-mounts
// <CRI root>/sandboxes/<id>/{hostname,hosts,resolv.conf} and
// <CRI state>/sandboxes/<id>/shm into every container of the pod, if they
// exist. The shim keeps its own copies (and the shm tmpfs) in the sandbox's
// bundle and lays them out again whenever they are missing: containerd,
// when it restarts, removes sandbox directories it cannot tie to a pause
// container.
type podFiles struct {
	rootDir  string // <CRI root>/sandboxes/<id>
	stateDir string // <CRI state>/sandboxes/<id>
	keepDir  string // the shim's copies: <bundle>/cri
	shmKeep  string // the tmpfs: <bundle>/shm
	hostIPC  bool
}

// criDirs derives CRI's directories from the sandbox's bundle, which
// containerd's shim sandbox controller makes at
// <state>/io.containerd.sandbox.controller.v1.shim/<namespace>/<id>, with a
// "work" link to the same path under <root>.
func criDirs(b bundle.Bundle, id string, hostIPC bool) (*podFiles, error) {
	state := filepath.Dir(filepath.Dir(filepath.Dir(b.Path())))
	work, err := os.Readlink(filepath.Join(b.Path(), "work"))
	if err != nil {
		return nil, fmt.Errorf("sandbox bundle %s: no work link to containerd's root directory: %w", b.Path(), err)
	}
	root := filepath.Dir(filepath.Dir(filepath.Dir(work)))
	return &podFiles{
		rootDir:  filepath.Join(root, criPlugin, "sandboxes", id),
		stateDir: filepath.Join(state, criPlugin, "sandboxes", id),
		keepDir:  filepath.Join(b.Path(), "cri"),
		shmKeep:  filepath.Join(b.Path(), "shm"),
		hostIPC:  hostIPC,
	}, nil
}

func (f *podFiles) shmPath() string { return filepath.Join(f.stateDir, "shm") }

// create writes the pod's files and mounts its /dev/shm, as the podsandbox
// controller does for a pause pod.
func (f *podFiles) create(hostname, resolv string) error {
	if err := os.MkdirAll(f.keepDir, 0o755); err != nil {
		return err
	}
	hosts, err := os.ReadFile("/etc/hosts")
	if err != nil {
		return fmt.Errorf("read the node's /etc/hosts: %w", err)
	}
	if resolv == "" {
		data, err := os.ReadFile("/etc/resolv.conf")
		if err != nil {
			return fmt.Errorf("read the node's /etc/resolv.conf: %w", err)
		}
		resolv = string(data)
	}
	for name, data := range map[string][]byte{
		"hostname":    []byte(hostname + "\n"),
		"hosts":       hosts,
		"resolv.conf": []byte(resolv),
	} {
		if err := bundle.WriteFileAtomic(filepath.Join(f.keepDir, name), data, 0o644); err != nil {
			return fmt.Errorf("write pod %s: %w", name, err)
		}
	}
	if !f.hostIPC {
		if err := os.MkdirAll(f.shmKeep, 0o700); err != nil {
			return err
		}
		if mounted, _ := mountinfo.Mounted(f.shmKeep); !mounted {
			// What CRI mounts for a pause pod (mode 1777, 64 MiB).
			if err := unix.Mount("shm", f.shmKeep, "tmpfs", unix.MS_NOEXEC|unix.MS_NOSUID|unix.MS_NODEV, "mode=1777,size=67108864"); err != nil {
				return fmt.Errorf("mount the pod's /dev/shm: %w", err)
			}
		}
	}
	return f.lay()
}

// lay puts the pod's files where CRI looks for them, if they are not there
// (first time, or after a containerd restart removed them).
func (f *podFiles) lay() error {
	if err := os.MkdirAll(f.rootDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", f.rootDir, err)
	}
	for _, name := range []string{"hostname", "hosts", "resolv.conf"} {
		dst := filepath.Join(f.rootDir, name)
		if _, err := os.Stat(dst); err == nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(f.keepDir, name))
		if err != nil {
			return fmt.Errorf("pod %s: %w", name, err)
		}
		if err := bundle.WriteFileAtomic(dst, data, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", dst, err)
		}
	}
	if f.hostIPC {
		return nil
	}
	if err := os.MkdirAll(f.shmPath(), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", f.shmPath(), err)
	}
	if mounted, _ := mountinfo.Mounted(f.shmPath()); mounted {
		return nil
	}
	if err := unix.Mount(f.shmKeep, f.shmPath(), "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind the pod's /dev/shm at %s: %w", f.shmPath(), err)
	}
	return nil
}

// unmount releases the pod's /dev/shm (stop: containers are gone).
func (f *podFiles) unmount() error {
	var errs []error
	for _, p := range []string{f.shmPath(), f.shmKeep} {
		if err := mount.UnmountAll(p, unix.MNT_DETACH); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// remove deletes everything (shutdown: the pod is gone).
func (f *podFiles) remove() error {
	if err := f.unmount(); err != nil {
		return err
	}
	var errs []error
	for _, d := range []string{f.rootDir, f.stateDir, f.keepDir, f.shmKeep} {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
