package runsc

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/cgroups/v3"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// cgroupParent makes the parent of a sandbox's cgroup exist before runsc
// creates the sandbox, on a cgroup v2 host (mountpoint is the v2 hierarchy).
//
// On v2 runsc owns every directory of the cgroup path it had to create,
// parents included, and removes them all when the sandbox goes; v1 runsc
// only removes the leaf. With containerd's default path, /<namespace>/<id>,
// the first sandbox of a namespace creates /<namespace>, and deleting it
// while other containers of the namespace still live under it fails:
// "runsc delete failed: destroying container: stopping container: removing
// cgroup path "/sys/fs/cgroup/<namespace>": device or resource busy", after
// five seconds of retries, with the task left behind. runc leaves parents
// in place, and so does runsc once the parent is not its own. Kubernetes
// pods are not affected (the kubelet creates the pod's cgroup).
//
// Paths in systemd's slice:prefix:name form and relative paths are left to
// runsc.
func cgroupParent(mountpoint string, spec *specs.Spec) error {
	if spec.Linux == nil {
		return nil
	}
	p := spec.Linux.CgroupsPath
	if !strings.HasPrefix(p, "/") || strings.Contains(p, ":") {
		return nil
	}
	parent := filepath.Dir(filepath.Clean(p))
	if parent == "/" {
		return nil
	}
	if err := os.MkdirAll(filepath.Join(mountpoint, parent), 0o755); err != nil {
		return fmt.Errorf("failed to create the sandbox's parent cgroup %s: %w", parent, err)
	}
	return nil
}

// hostCgroupParent is cgroupParent on this host (nothing on cgroup v1).
func hostCgroupParent(spec *specs.Spec) error {
	if cgroups.Mode() != cgroups.Unified {
		return nil
	}
	return cgroupParent("/sys/fs/cgroup", spec)
}
