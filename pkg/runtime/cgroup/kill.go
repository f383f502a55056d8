package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/opencontainers/cgroups/systemd"
	"golang.org/x/sys/unix"
)

// KillAll SIGKILLs every process in a container's cgroup, as the spec's
// linux.cgroupsPath names it: a cgroupfs path, or systemd's
// "slice:prefix:name" (the scope prefix-name.scope in that slice). A
// cgroup that does not exist holds nothing. For the cleanup of a shim that
// died: one write to cgroup.kill on cgroup v2 ends the container at once,
// and a systemd scope with no process left goes by itself, so a cleanup
// cut short afterwards leaves no unit running.
func KillAll(cgroupsPath string) error {
	dir, err := cgroupDir(cgroupsPath)
	if err != nil || dir == "" {
		return err
	}
	if Unified() {
		err := os.WriteFile(filepath.Join("/sys/fs/cgroup", dir, "cgroup.kill"), []byte("1"), 0)
		switch {
		case err == nil, errors.Is(err, os.ErrNotExist) && !exists(filepath.Join("/sys/fs/cgroup", dir)):
			return nil
		case !errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("kill cgroup %s: %w", dir, err)
		}
		return killProcs(filepath.Join("/sys/fs/cgroup", dir)) // a kernel before 5.14
	}
	// cgroup v1: every controller has the container's processes; one that
	// every runtime joins will do.
	for _, ctrl := range []string{"pids", "memory", "devices"} {
		if d := filepath.Join("/sys/fs/cgroup", ctrl, dir); exists(d) {
			return killProcs(d)
		}
	}
	return nil
}

// cgroupDir is the cgroup's directory below a hierarchy's root; "" for no
// path.
func cgroupDir(cgroupsPath string) (string, error) {
	if cgroupsPath == "" {
		return "", nil
	}
	if !strings.Contains(cgroupsPath, ":") {
		if !filepath.IsAbs(cgroupsPath) {
			return "", nil // relative to the runtime's own cgroup: not ours to guess
		}
		return filepath.Clean(cgroupsPath), nil
	}
	parts := strings.Split(cgroupsPath, ":")
	if len(parts) != 3 {
		return "", fmt.Errorf("systemd cgroups path %q: want slice:prefix:name", cgroupsPath)
	}
	slice, prefix, name := parts[0], parts[1], parts[2]
	if slice == "" {
		slice = "system.slice" // runc's default
	}
	parent, err := systemd.ExpandSlice(slice)
	if err != nil {
		return "", fmt.Errorf("systemd cgroups path %q: %w", cgroupsPath, err)
	}
	unit := prefix + "-" + name + ".scope"
	if strings.HasSuffix(name, ".slice") {
		unit = name
	}
	return filepath.Join(parent, unit), nil
}

// killProcs SIGKILLs the processes listed in the cgroup (and its
// descendants) at dir. A process that forks meanwhile escapes; the
// runtime's own delete, which follows, freezes and kills again.
func killProcs(dir string) error {
	return filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil //nolint:nilerr // a cgroup gone meanwhile holds nothing
		}
		data, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			return nil //nolint:nilerr // as above
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			if pid, err := strconv.Atoi(sc.Text()); err == nil && pid > 0 {
				_ = unix.Kill(pid, unix.SIGKILL) // gone already is fine
			}
		}
		return nil
	})
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
