package cgroup

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
)

// EffectiveMemoryLimit is the memory limit that bounds pid: the lowest of
// its cgroup's and its ancestors' (kubelet sets a Pod's on the Pod's
// cgroup or slice, above its containers'), math.MaxUint64 for none.
func EffectiveMemoryLimit(pid int) (uint64, error) {
	if Unified() {
		path, err := cgroup2.PidGroupPath(pid)
		if err != nil {
			return 0, fmt.Errorf("cgroup of pid %d: %w", pid, err)
		}
		return lowestLimit("/sys/fs/cgroup", path, "memory.max")
	}
	path, err := cgroup1.PidPath(pid)(cgroup1.Memory)
	if err != nil {
		return 0, fmt.Errorf("memory cgroup of pid %d: %w", pid, err)
	}
	return lowestLimit("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes")
}

// lowestLimit reads file in the cgroup at path under root and in each of
// its ancestors up to root, and returns the lowest value ("max": none).
// An ancestor without the file (the root's, or a controller not enabled
// there) bounds nothing.
func lowestLimit(root, path, file string) (uint64, error) {
	lowest := uint64(math.MaxUint64)
	dir := filepath.Join(root, filepath.Clean("/"+path))
	for {
		data, err := os.ReadFile(filepath.Join(dir, file))
		switch {
		case err == nil:
			if v := strings.TrimSpace(string(data)); v != "max" {
				n, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					return 0, fmt.Errorf("%s: %w", filepath.Join(dir, file), err)
				}
				lowest = min(lowest, n)
			}
		case !os.IsNotExist(err):
			return 0, err
		}
		if dir == root || len(dir) < len(root) {
			return lowest, nil
		}
		dir = filepath.Dir(dir)
	}
}
