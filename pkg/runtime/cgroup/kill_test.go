package cgroup

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func TestCgroupDir(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"relative/path", ""},
		{"/kubepods/pod1/c1", "/kubepods/pod1/c1"},
		{"kubepods-besteffort-pod1.slice:cri-containerd:abc", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope"},
		{":runc:abc", "/system.slice/runc-abc.scope"},
		{"user.slice:x:my.slice", "/user.slice/my.slice"},
	} {
		got, err := cgroupDir(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("%q: %q %v, want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"a:b", "no-suffix:p:n", "a/b.slice:p:n"} {
		if _, err := cgroupDir(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestKillAll: every process of a real cgroup is killed; a cgroup that
// does not exist is no error.
func TestKillAll(t *testing.T) {
	requireRoot(t)
	path := "/custom-shim-killall-test"
	var dir string
	if Unified() {
		dir = filepath.Join("/sys/fs/cgroup", path)
	} else {
		dir = filepath.Join("/sys/fs/cgroup/pids", path)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(dir)
	var cmds []*exec.Cmd
	for range 3 {
		cmd := exec.Command("sleep", "100")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := KillAll(path); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range cmds {
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err == nil {
				t.Fatalf("pid %d exited on its own, not killed", cmd.Process.Pid)
			}
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatalf("pid %d survived KillAll", cmd.Process.Pid)
		}
	}
	if err := KillAll("/custom-shim-no-such-cgroup"); err != nil {
		t.Fatalf("a cgroup that does not exist: %v", err)
	}
}
