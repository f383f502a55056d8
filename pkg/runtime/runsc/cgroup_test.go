package runsc

import (
	"os"
	"path/filepath"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestCgroupParent(t *testing.T) {
	for _, tc := range []struct {
		name       string
		path       string // spec's cgroupsPath
		noLinux    bool
		wantParent string // created under the mountpoint ("": nothing)
	}{
		{name: "containerd's default path", path: "/testing/web", wantParent: "testing"},
		{name: "nested parent", path: "/kubepods/burstable/pod1/c1", wantParent: "kubepods/burstable/pod1"},
		{name: "unclean path", path: "/testing//web/", wantParent: "testing"},
		{name: "at the root: no parent to make", path: "/web"},
		{name: "relative: runsc's own business", path: "testing/web"},
		{name: "systemd slice:prefix:name", path: "system.slice:cri-containerd:web"},
		{name: "no cgroup", path: ""},
		{name: "no linux section", noLinux: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mnt := t.TempDir()
			spec := &specs.Spec{Linux: &specs.Linux{CgroupsPath: tc.path}}
			if tc.noLinux {
				spec.Linux = nil
			}
			if err := cgroupParent(mnt, spec); err != nil {
				t.Fatal(err)
			}
			var made []string
			_ = filepath.WalkDir(mnt, func(p string, d os.DirEntry, err error) error { // what it lists is checked below
				if err == nil && d.IsDir() && p != mnt {
					rel, _ := filepath.Rel(mnt, p)
					made = append(made, rel)
				}
				return nil
			})
			if tc.wantParent == "" {
				if len(made) > 0 {
					t.Fatalf("created %v, want nothing", made)
				}
				return
			}
			if len(made) == 0 || made[len(made)-1] != tc.wantParent {
				t.Fatalf("created %v, want the parent %s (and not the container's own cgroup)", made, tc.wantParent)
			}
			// An existing parent is fine (the namespace's other containers).
			if err := cgroupParent(mnt, spec); err != nil {
				t.Fatalf("second time: %v", err)
			}
		})
	}
}

func TestCgroupParentError(t *testing.T) {
	mnt := t.TempDir()
	if err := os.WriteFile(filepath.Join(mnt, "testing"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := cgroupParent(mnt, &specs.Spec{Linux: &specs.Linux{CgroupsPath: "/testing/web"}})
	if err == nil {
		t.Fatal("no error when the parent cannot be made")
	}
}

// TestPodCgroupsPath: a sandboxed Pod's gVisor sandbox gets the cgroups
// path CRI would give its pause container. kubelet's systemd driver passes
// the slice's whole cgroupfs path; systemd knows the slice by its name.
func TestPodCgroupsPath(t *testing.T) {
	for _, tc := range []struct{ parent, want string }{
		{"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice", "kubepods-besteffort-pod1.slice:cri-containerd:sb"},
		{"kubepods-pod1.slice", "kubepods-pod1.slice:cri-containerd:sb"},
		{"/kubepods/besteffort/pod1/", "/kubepods/besteffort/pod1/sb"},
		{"", ""},
	} {
		if got := cgroupsPath(tc.parent, "sb"); got != tc.want {
			t.Errorf("cgroupsPath(%q) = %q, want %q", tc.parent, got, tc.want)
		}
	}
}

// TestLimitUnenforced: a sub-container's own memory limit is reported as
// unenforced exactly when its sandbox's cgroup has no limit.
func TestLimitUnenforced(t *testing.T) {
	withLimit := func(l int64) *specs.Spec {
		return &specs.Spec{Linux: &specs.Linux{Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &l}}}}
	}
	for _, tc := range []struct {
		name    string
		spec    *specs.Spec
		sandbox uint64
		want    bool
	}{
		{"no limit of its own", &specs.Spec{Linux: &specs.Linux{}}, 0, false},
		{"limit, sandbox unbounded (v2 max)", withLimit(64 << 20), ^uint64(0), true},
		{"limit, sandbox unbounded (v1)", withLimit(64 << 20), 9223372036854771712, true},
		{"limit, sandbox limit unknown", withLimit(64 << 20), 0, true},
		{"limit, the Pod's limit on the sandbox", withLimit(64 << 20), 192 << 20, false},
	} {
		if got := limitUnenforced(tc.spec, tc.sandbox); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
