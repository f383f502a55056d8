package cgroup

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/cgroups/v3"

	"github.com/custom-runtime/containerd-shim-custom-v2/internal/testdeps"
)

// A runc killed mid-create leaves its cgroup in the v1 hierarchies and, on
// a hybrid host, in the v2 one mounted at unified/ (CI found the latter
// left behind). RemoveOrphan removes both, and either alone.
func TestRemoveOrphanHybrid(t *testing.T) {
	if cgroups.Mode() != cgroups.Hybrid {
		t.Skip("not a cgroup v1 hybrid host: the test is about the v2 hierarchy mounted at unified/")
	}
	testdeps.RequireRoot(t, "makes cgroups")
	for _, tc := range []struct {
		name string
		dirs []string // hierarchies (under /sys/fs/cgroup) the orphan is in
	}{
		{"v1 and unified", []string{"memory", "pids", "unified"}},
		{"unified only", []string{"unified"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := fmt.Sprintf("/custom-orphan-test-%d", os.Getpid())
			for _, d := range tc.dirs {
				dir := filepath.Join("/sys/fs/cgroup", d, path)
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = os.Remove(dir) })
			}
			if err := RemoveOrphan(path); err != nil {
				t.Fatalf("RemoveOrphan: %v", err)
			}
			for _, d := range tc.dirs {
				if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", d, path)); err == nil {
					t.Errorf("%s left in %s", path, d)
				}
			}
		})
	}
}
