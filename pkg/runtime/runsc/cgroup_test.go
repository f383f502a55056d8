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
