// Package cgroup finds a process's host cgroup and reads its metrics, for
// cgroup v1 (legacy and hybrid hosts) and v2, as containerd's runc shim does.
package cgroup

import (
	"fmt"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	cgroupsv2 "github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/errdefs"
)

// Load loads the cgroup of pid for the host's cgroup mode.
func Load(pid int) (any, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("no process to find a cgroup for: %w", errdefs.ErrNotFound)
	}
	if cgroups.Mode() == cgroups.Unified {
		path, err := cgroupsv2.PidGroupPath(pid)
		if err != nil {
			return nil, fmt.Errorf("cgroup of pid %d: %v: %w", pid, err, errdefs.ErrNotFound)
		}
		cg, err := cgroupsv2.Load(path)
		if err != nil {
			return nil, fmt.Errorf("load cgroup %s: %v: %w", path, err, errdefs.ErrNotFound)
		}
		return cg, nil
	}
	cg, err := cgroup1.Load(cgroup1.PidPath(pid))
	if err != nil {
		return nil, fmt.Errorf("load cgroup of pid %d: %v: %w", pid, err, errdefs.ErrNotFound)
	}
	return cg, nil
}

// Stats returns the metrics of a cgroup loaded by Load.
func Stats(cg any) (any, error) {
	switch cg := cg.(type) {
	case cgroup1.Cgroup:
		st, err := cg.Stat(cgroup1.IgnoreNotExist)
		if err != nil {
			return nil, fmt.Errorf("read cgroup v1 stats: %w", err)
		}
		return st, nil
	case *cgroupsv2.Manager:
		st, err := cg.Stat()
		if err != nil {
			return nil, fmt.Errorf("read cgroup v2 stats: %w", err)
		}
		return st, nil
	default:
		return nil, fmt.Errorf("unsupported cgroup type %T: %w", cg, errdefs.ErrNotImplemented)
	}
}

// OOMKills reads the cgroup's OOM kill counter.
func OOMKills(cg any) (uint64, error) {
	switch cg := cg.(type) {
	case cgroup1.Cgroup:
		st, err := cg.Stat(cgroup1.IgnoreNotExist)
		if err != nil {
			return 0, err
		}
		return st.GetMemoryOomControl().GetOomKill(), nil
	case *cgroupsv2.Manager:
		st, err := cg.Stat()
		if err != nil {
			return 0, err
		}
		return st.GetMemoryEvents().GetOomKill(), nil
	}
	return 0, fmt.Errorf("unsupported cgroup type %T: %w", cg, errdefs.ErrNotImplemented)
}

// MemoryLimit reads the cgroup's memory limit (0 if unknown).
func MemoryLimit(cg any) uint64 {
	switch cg := cg.(type) {
	case cgroup1.Cgroup:
		if st, err := cg.Stat(cgroup1.IgnoreNotExist); err == nil {
			return st.GetMemory().GetUsage().GetLimit()
		}
	case *cgroupsv2.Manager:
		if st, err := cg.Stat(); err == nil {
			return st.GetMemory().GetUsageLimit()
		}
	}
	return 0
}
