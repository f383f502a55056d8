// Package cgroup is a container's host cgroup as the shim sees it: found
// from a pid, read for Task.Stats, and watched for OOM kills, on cgroup v1
// (legacy and hybrid hosts) and v2, through containerd's cgroups library as
// containerd's runc shim does. The v1/v2 difference stays in this package:
// the task service and the backends hold a Cgroup.
package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	"github.com/containerd/cgroups/v3/cgroup2"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// Cgroup is one host cgroup.
type Cgroup interface {
	// Stats reads the cgroup's metrics.
	Stats() (*Metrics, error)
	// OOMKills is the kernel's count of OOM kills in the cgroup.
	OOMKills() (uint64, error)
	// MemoryLimit is the cgroup's memory limit, 0 if none or unknown.
	MemoryLimit() uint64
	// Path names the cgroup, for logs and errors.
	Path() string
}

// Metrics are what Task.Stats returns: containerd's cgroup1 or cgroup2
// metrics message, whichever the host's hierarchy gives (exactly one set).
type Metrics struct {
	V1 *v1stats.Metrics
	V2 *v2stats.Metrics
}

// Proto is the message to marshal into the Stats response.
func (m *Metrics) Proto() proto.Message {
	if m.V2 != nil {
		return m.V2
	}
	return m.V1
}

// Unified reports whether the host runs cgroup v2 alone.
func Unified() bool { return cgroups.Mode() == cgroups.Unified }

// Load finds the cgroup of pid for the host's cgroup mode.
func Load(pid int) (Cgroup, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("no process to find a cgroup for: %w", errdefs.ErrNotFound)
	}
	if Unified() {
		path, err := cgroup2.PidGroupPath(pid)
		if err != nil {
			return nil, fmt.Errorf("cgroup of pid %d: %w: %w", pid, err, errdefs.ErrNotFound)
		}
		return LoadV2("", path)
	}
	paths := cgroup1.PidPath(pid)
	cg, err := cgroup1.Load(paths)
	if err != nil {
		return nil, fmt.Errorf("load cgroup of pid %d: %w: %w", pid, err, errdefs.ErrNotFound)
	}
	// The memory controller's path names the cgroup: it is where OOM kills
	// are counted, and tasks with the same one share an OOM watch.
	path, err := paths(cgroup1.Memory)
	if err != nil {
		path = fmt.Sprintf("v1 cgroup of pid %d", pid)
	}
	return &v1{cg: cg, path: path}, nil
}

// LoadV2 loads a cgroup v2 group (a path under the unified mount, e.g.
// "/kubepods/pod1/c1") under mountpoint ("": /sys/fs/cgroup; tests give
// another).
func LoadV2(mountpoint, group string) (Cgroup, error) {
	if mountpoint == "" {
		mountpoint = "/sys/fs/cgroup"
	}
	m, err := cgroup2.Load(group, cgroup2.WithMountpoint(mountpoint))
	if err != nil {
		return nil, fmt.Errorf("load cgroup %s: %w: %w", group, err, errdefs.ErrNotFound)
	}
	return &v2{m: m, path: group, dir: filepath.Join(mountpoint, group)}, nil
}

// FromV1 wraps a cgroup v1 handle (tests, callers that built one); path is
// its memory controller's path.
func FromV1(cg cgroup1.Cgroup, path string) Cgroup { return &v1{cg: cg, path: path} }

type v1 struct {
	cg   cgroup1.Cgroup
	path string // the memory controller's, when there is one
}

func (c *v1) Path() string { return c.path }

func (c *v1) Stats() (*Metrics, error) {
	st, err := c.cg.Stat(cgroup1.IgnoreNotExist)
	if err != nil {
		return nil, fmt.Errorf("read cgroup v1 stats of %s: %w", c.path, err)
	}
	return &Metrics{V1: st}, nil
}

func (c *v1) OOMKills() (uint64, error) {
	st, err := c.cg.Stat(cgroup1.IgnoreNotExist)
	if err != nil {
		return 0, err
	}
	return st.GetMemoryOomControl().GetOomKill(), nil
}

func (c *v1) MemoryLimit() uint64 {
	if st, err := c.cg.Stat(cgroup1.IgnoreNotExist); err == nil {
		return st.GetMemory().GetUsage().GetLimit()
	}
	return 0
}

type v2 struct {
	m    *cgroup2.Manager
	path string // under the mountpoint
	dir  string // the cgroup's directory
}

func (c *v2) Path() string { return c.path }

func (c *v2) Stats() (*Metrics, error) {
	st, err := c.m.Stat()
	if err != nil {
		return nil, fmt.Errorf("read cgroup v2 stats of %s: %w", c.path, err)
	}
	return &Metrics{V2: st}, nil
}

func (c *v2) OOMKills() (uint64, error) {
	st, err := c.m.Stat()
	if err != nil {
		return 0, err
	}
	return st.GetMemoryEvents().GetOomKill(), nil
}

func (c *v2) MemoryLimit() uint64 {
	if st, err := c.m.Stat(); err == nil {
		return st.GetMemory().GetUsageLimit()
	}
	return 0
}

// RemoveOrphan kills what is left in a container's cgroup (cgroupfs path,
// as the spec's linux.cgroupsPath names it) and removes it; nothing there,
// or a systemd unit ("slice:prefix:name", which goes with its last
// process), is not an error. For a runtime that died before it recorded
// the container it was creating.
func RemoveOrphan(path string) error {
	if path == "" || strings.Contains(path, ":") || !filepath.IsAbs(path) {
		return nil
	}
	if err := KillAll(path); err != nil {
		return err
	}
	if Unified() {
		m, err := cgroup2.Load(path)
		if err != nil {
			return fmt.Errorf("load orphan cgroup %s: %w", path, err)
		}
		return retryDelete(func() error {
			if err := m.Delete(); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			return nil
		})
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	switch {
	case errors.Is(err, cgroup1.ErrCgroupDeleted):
		// no v1 hierarchy has it
	case err != nil:
		return fmt.Errorf("load orphan cgroup %s: %w", path, err)
	default:
		if err := retryDelete(cg.Delete); err != nil {
			return err
		}
	}
	// Hybrid hosts: runc also makes the cgroup in the v2 hierarchy mounted
	// at unified/, which cgroup1 does not know about.
	if cgroups.Mode() != cgroups.Hybrid {
		return nil
	}
	return retryDelete(func() error {
		err := unix.Rmdir(filepath.Join(hybridUnified, path))
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	})
}

// hybridUnified is where a hybrid host mounts its cgroup v2 hierarchy.
const hybridUnified = "/sys/fs/cgroup/unified"

// retryDelete removes a cgroup whose last processes were just killed: they
// leave it a moment later.
func retryDelete(del func() error) error {
	var err error
	for range 50 {
		if err = del(); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}
