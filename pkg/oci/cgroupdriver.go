package oci

import (
	"fmt"
	"path"
	"strings"

	"github.com/containerd/errdefs"
)

// CgroupDriverSection is a backend table that chooses a cgroup driver.
type CgroupDriverSection interface {
	// UsesSystemdCgroup reports whether the backend's runtime uses the systemd
	// cgroup driver (containers as scope units) rather than cgroupfs.
	UsesSystemdCgroup() bool
}

// systemdCgroupsPath reports whether a container's cgroups path has the
// systemd driver's form, "slice:prefix:name" (CRI: <pod>.slice:cri-containerd:<id>).
func systemdCgroupsPath(p string) bool { return strings.Count(p, ":") == 2 }

// systemdParent reports whether a Pod's cgroup parent is a systemd slice
// (kubelet's cgroupDriver: systemd gives /kubepods.slice/.../<pod>.slice).
func systemdParent(p string) bool { return strings.HasSuffix(path.Base(p), ".slice") }

// CheckCgroupsPath refuses a container's cgroups path in the other
// driver's form than cfg's backend uses: runc would fail on it with a
// message about formats, runsc would make a cgroup named after the whole
// string, and a kubelet whose cgroupDriver differs from the handler's is
// the cause to name. "" (no cgroup asked for) is fine.
func CheckCgroupsPath(cfg *Config, cgroupsPath string) error {
	return checkDriver(cfg, cgroupsPath, "cgroups path", systemdCgroupsPath(cgroupsPath))
}

// CheckCgroupParent is CheckCgroupsPath for a Pod's cgroup parent (the
// Sandbox API's sandboxed Pods).
func CheckCgroupParent(cfg *Config, parent string) error {
	return checkDriver(cfg, parent, "Pod cgroup parent", systemdParent(parent))
}

func checkDriver(cfg *Config, p, what string, systemdForm bool) error {
	s, ok := cfg.Section().(CgroupDriverSection)
	if !ok || p == "" || s.UsesSystemdCgroup() == systemdForm {
		return nil
	}
	if s.UsesSystemdCgroup() {
		return fmt.Errorf("%s %q is a cgroupfs path, but %s sets the systemd cgroup driver (SystemdCgroup = true, %s.systemd_cgroup): give the Pod a systemd slice (kubelet cgroupDriver: systemd) or use a handler with the cgroupfs driver: %w",
			what, p, cfg.Source, cfg.Backend, errdefs.ErrInvalidArgument)
	}
	return fmt.Errorf("%s %q is a systemd slice path, but %s uses the cgroupfs cgroup driver: set SystemdCgroup = true (%s.systemd_cgroup = true) on the handler, as kubelet's cgroupDriver: systemd needs: %w",
		what, p, cfg.Source, cfg.Backend, errdefs.ErrInvalidArgument)
}
