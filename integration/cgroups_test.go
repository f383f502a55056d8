package integration

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	cgroup1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	cgroup2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// The suite runs on cgroup v1 (this machine, `make test`) and on a pure
// cgroup v2 system (`make test-cgroup2`, a guest); these helpers know where
// each keeps what the tests look at.

const cgroupRoot = "/sys/fs/cgroup"

// unified reports whether the host runs a pure cgroup v2 hierarchy.
func unified() bool { return cgroups.Mode() == cgroups.Unified }

// cgroupMode names the host's cgroup mode for messages and figures.
func cgroupMode() string {
	if unified() {
		return "cgroup v2"
	}
	return "cgroup v1"
}

// checkMetricsType fails the test unless Stats returned the metrics type of
// the host's cgroup mode, as containerd's runc shim does: cgroup1 metrics
// on v1, cgroup2 metrics on v2 (CRI and ctr decode by type).
func checkMetricsType(t *testing.T, v any) {
	t.Helper()
	switch v.(type) {
	case *cgroup1stats.Metrics:
		if unified() {
			t.Fatalf("cgroup v1 metrics on a cgroup v2 host")
		}
	case *cgroup2stats.Metrics:
		if !unified() {
			t.Fatalf("cgroup v2 metrics on a cgroup v1 host")
		}
	default:
		t.Fatalf("unexpected metrics type %T", v)
	}
}

// procCgroup returns the cgroup of pid in the hierarchy that holds
// controller ("" for the v2 hierarchy) from /proc/<pid>/cgroup.
func procCgroup(pid int, controller string) (string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(s.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if controller == "" && parts[0] == "0" && parts[1] == "" ||
			controller != "" && slices.Contains(strings.Split(parts[1], ","), controller) {
			return parts[2], nil
		}
	}
	if err := s.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("pid %d has no cgroup for %q", pid, controller)
}

// cgroupFile reads a control file of pid's cgroup on the host: v2file in
// its v2 cgroup on a unified host, else v1file in the controller's
// hierarchy.
func cgroupFile(pid int, controller, v1file, v2file string) (string, error) {
	var dir string
	file := v2file
	if unified() {
		p, err := procCgroup(pid, "")
		if err != nil {
			return "", err
		}
		dir = filepath.Join(cgroupRoot, p)
	} else {
		p, err := procCgroup(pid, controller)
		if err != nil {
			return "", err
		}
		dir, file = filepath.Join(cgroupRoot, controller, p), v1file
	}
	data, err := os.ReadFile(filepath.Join(dir, file))
	return strings.TrimSpace(string(data)), err
}

// cgroupsLeft lists the cgroup directories of a container (containerd's
// default cgroups path, /<namespace>/<id>) that still exist: once the task
// is deleted there must be none.
func cgroupsLeft(id string) []string {
	return cgroupDirsOf(filepath.Join("/", namespace, id))
}

// TestSharedParentCgroup: two tasks whose cgroups share a parent that did
// not exist before (as containerd's default /<namespace>/<id> does for the
// first containers of a namespace). The first is deleted while the second
// runs: both deletes succeed and each leaves no cgroup. gVisor on cgroup v2
// removes every directory it created, parents included, and failed here
// with EBUSY ("removing cgroup path ...: device or resource busy") until
// the backend made the parent itself.
func TestSharedParentCgroup(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := testContext(t)
		parent := "/" + containerID(t, "parent")
		t.Cleanup(func() {
			dirs, _ := filepath.Glob(filepath.Join(cgroupRoot, "*", parent))
			for _, d := range append(dirs, filepath.Join(cgroupRoot, parent)) {
				os.Remove(d) // only once empty; a leftover child fails the test below
			}
		})
		var tasks []client.Task
		var leaves []string
		for _, name := range []string{"first", "second"} {
			id := containerID(t, name)
			leaf := parent + "/" + id
			leaves = append(leaves, leaf)
			c := newContainer(t, e, id, nil, oci.WithProcessArgs("sleep", "1000"), oci.WithCgroup(leaf))
			task, _ := startTask(t, c, nil)
			tasks = append(tasks, task)
		}
		for i, task := range tasks {
			if _, err := task.Delete(ctx, client.WithProcessKill); err != nil {
				t.Fatalf("delete the %s task (%s): %v", []string{"first", "second"}[i], cgroupMode(), err)
			}
			eventually(t, 30*time.Second, "no cgroup left for "+leaves[i], func() error {
				if left := cgroupDirsOf(leaves[i]); len(left) > 0 {
					return fmt.Errorf("%s left behind: %v", cgroupMode(), left)
				}
				return nil
			})
		}
	})
}

// cgroupDirsOf lists the existing directories of cgroup path p on this host.
func cgroupDirsOf(p string) []string {
	dirs := []string{filepath.Join(cgroupRoot, p)}
	if !unified() {
		dirs, _ = filepath.Glob(filepath.Join(cgroupRoot, "*", p))
	}
	var left []string
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil {
			left = append(left, d)
		}
	}
	return left
}
