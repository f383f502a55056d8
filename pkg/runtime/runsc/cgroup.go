package runsc

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
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

// unboundedLimit is a cgroup memory limit at or above this: none (v1
// reports its page-rounded maximum, v2 "max").
const unboundedLimit = 1 << 62

// limitUnenforced tells whether a sub-container's own memory limit bounds
// nothing: gVisor runs every container of a pod in the sandbox's host
// cgroup, and only the limit on it or on its ancestors (the Pod's, which
// kubelet sets when every container has one) bounds them, together.
func limitUnenforced(spec *specs.Spec, sandboxLimit uint64) bool {
	if spec.Linux == nil || spec.Linux.Resources == nil || spec.Linux.Resources.Memory == nil {
		return false
	}
	own := spec.Linux.Resources.Memory.Limit
	return own != nil && *own > 0 && (sandboxLimit == 0 || sandboxLimit >= unboundedLimit)
}

// warnUnenforcedLimit says so at the create of a sub-container whose own
// memory limit bounds nothing, rather than dropping it silently.
func warnUnenforcedLimit(ctx context.Context, id string, spec *specs.Spec, sandboxPid int) {
	limit, err := cgroup.EffectiveMemoryLimit(sandboxPid)
	if err != nil {
		log.G(ctx).WithError(err).WithField("id", id).Debug("sandbox's memory limit, to check the container's")
		return
	}
	if limitUnenforced(spec, limit) {
		log.G(ctx).WithFields(log.Fields{"id": id, "limit": *spec.Linux.Resources.Memory.Limit}).
			Warn("the container's memory limit is not enforced: gVisor runs it in its sandbox's cgroup, which has no limit (a container of the Pod has none); give every container of the Pod a limit")
	}
}
