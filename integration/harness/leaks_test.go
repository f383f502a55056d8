package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestUnescapeMountinfo(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"plain", "/run/containerd/x", "/run/containerd/x"},
		{"space", `/tmp/a\040b`, "/tmp/a b"},
		{"tab newline backslash", `/tmp/t\011n\012b\134`, "/tmp/t\tn\nb\\"},
		{"several", `/a\040b/c\040d`, "/a b/c d"},
		{"escape at the very end", `/tmp/x\040`, "/tmp/x "},
		{"too short to be an escape", `/tmp/x\04`, `/tmp/x\04`},
		{"not octal", `/tmp/\089`, `/tmp/\089`},
		{"over a byte", `/tmp/\777`, `/tmp/\777`},
		{"lone backslash", `\`, `\`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := unescapeMountinfo(tc.in); got != tc.want {
				t.Errorf("unescapeMountinfo(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestIsUnder(t *testing.T) {
	cases := []struct {
		path, dir string
		want      bool
	}{
		{"/tmp/a", "/tmp/a", true},
		{"/tmp/a/b", "/tmp/a", true},
		{"/tmp/a/b", "/tmp/a/", true},
		{"/tmp/a1", "/tmp/a", false},
		{"/tmp", "/tmp/a", false},
		{"", "/tmp/a", false},
	}
	for _, tc := range cases {
		if got := isUnder(tc.path, tc.dir); got != tc.want {
			t.Errorf("isUnder(%q, %q) = %v, want %v", tc.path, tc.dir, got, tc.want)
		}
	}
}

// TestMountsUnderEscapedPaths mounts tmpfs on directories whose names the
// kernel escapes in mountinfo, and finds and unmounts them by their real
// names.
func TestMountsUnderEscapedPaths(t *testing.T) {
	RequireDep(t, "root (to mount)", NeedRoot())
	dir := t.TempDir()
	var want []string
	for _, name := range []string{"with space", "tab\there", "back\\slash", "new\nline", "plain"} {
		p := filepath.Join(dir, name)
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mount("tmpfs", p, "tmpfs", 0, "size=64k"); err != nil {
			t.Fatalf("mount %q: %v", p, err)
		}
		t.Cleanup(func() { _ = syscall.Unmount(p, syscall.MNT_DETACH) })
		want = append(want, p)
	}
	// A sibling whose name extends dir's is not below it.
	sibling := dir + "x"
	if err := os.Mkdir(sibling, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sibling) })
	if err := syscall.Mount("tmpfs", sibling, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(sibling, syscall.MNT_DETACH) })

	got, err := MountsUnder(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("MountsUnder = %q, want %q", got, want)
	}
	done, err := UnmountUnder(dir)
	if err != nil {
		t.Fatal(err)
	}
	slices.Reverse(done) // newest first
	if !slices.Equal(done, want) {
		t.Errorf("UnmountUnder unmounted %q, want %q", done, want)
	}
	if left, _ := MountsUnder(dir); len(left) != 0 {
		t.Errorf("left mounted: %q", left)
	}
	if left, _ := MountsUnder(sibling); len(left) != 1 {
		t.Errorf("the sibling %s was unmounted too", sibling)
	}
}

// start runs a command in the background and kills it when the test ends.
func start(t *testing.T, dir string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	return cmd
}

// alive reports whether pid is a live (not zombie) process.
func alive(pid int) bool {
	p, err := readProc(pid)
	return err == nil && p.State != "Z"
}

// TestCleanUnder leaves behind what a killed daemon leaves (a process
// naming the directory, one running in it, a child of the first that
// names nothing, a runsc state file naming the directory, a mount with a
// space in its name) and checks that CleanUnder removes exactly that.
func TestCleanUnder(t *testing.T) {
	RequireDep(t, "root (to mount and to write runsc state)", NeedRoot())
	dir := t.TempDir()
	work := filepath.Join(dir, "work dir")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	named := start(t, "/", "sh", "-c", "sleep 1000 & wait; : "+dir+"/state/bundle")
	inside := start(t, work, "sleep", "1000")
	outside := start(t, "/", "sleep", "1001")
	var child int
	deadline := time.Now().Add(10 * time.Second)
	for child == 0 && time.Now().Before(deadline) {
		ps, _ := Processes()
		for _, p := range ps {
			if p.PPid == named.Process.Pid && p.Cmdline == "sleep 1000" {
				child = p.Pid
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if child == 0 {
		t.Fatal("the named process's child did not start")
	}
	mnt := filepath.Join(dir, "m n")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(mnt, syscall.MNT_DETACH) })
	// runsc state as the shim's runsc backend keeps it; "false" as the
	// runsc binary makes the delete fail, so the files go by hand.
	ns := filepath.Join("/run/containerd/custom/runsc", "harness-test-"+filepath.Base(dir))
	if err := os.MkdirAll(ns, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(ns) })
	state := filepath.Join(ns, "c1_sandbox:c1.state")
	other := filepath.Join(ns, "c2_sandbox:c2.state")
	for path, bundle := range map[string]string{state: dir + "/state/c1", other: "/elsewhere/c2"} {
		if err := os.WriteFile(path, []byte(`{"id":"c1","spec":{"annotations":{"bundle":"`+bundle+`"}}}`), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(strings.TrimSuffix(path, ".state")+".lock", nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The caller may stand in the directory (peercheck run from it): it
	// must survive.
	t.Chdir(work)

	var logged []string
	if err := CleanUnder(dir, "false", func(format string, args ...any) {
		logged = append(logged, format)
	}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		what string
		pid  int
	}{{"naming the directory", named.Process.Pid}, {"running in it", inside.Process.Pid}, {"child of one naming it", child}} {
		if alive(p.pid) {
			t.Errorf("the process %s (pid %d) survived", p.what, p.pid)
		}
	}
	if !alive(outside.Process.Pid) {
		t.Error("a process outside the directory was killed")
	}
	if m, _ := MountsUnder(dir); len(m) != 0 {
		t.Errorf("still mounted: %q", m)
	}
	for _, f := range []string{state, strings.TrimSuffix(state, ".state") + ".lock"} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", f, err)
		}
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another run's runsc state was removed: %v", err)
	}
	if len(logged) != 5 { // 1 runsc container, 3 processes, 1 mount
		t.Errorf("logged %d lines, want 5: %q", len(logged), logged)
	}
}

// A fork that has not exec'd shows its parent's command line: it is not a
// second process of that kind. The shell's subshell here stays a fork for
// the test's length, as a shim's child does for a moment before it execs
// runsc (TestPodSharesOneShimAndSandbox once counted "pod shims 2").
func TestProcessesMatchingLeavesOutUnexecedForks(t *testing.T) {
	marker := fmt.Sprintf("forked-not-execed-%d", os.Getpid())
	fifo := filepath.Join(t.TempDir(), "ready")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// The subshell (a fork of sh) writes to the fifo, then waits on sleep.
	cmd := exec.Command("sh", "-c", `(echo ready > "$1"; sleep 60; true); true`, marker, fifo)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // one group to kill
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() }()
	ready, err := os.ReadFile(fifo) // the subshell is running
	if err != nil || strings.TrimSpace(string(ready)) != "ready" {
		t.Fatalf("subshell: %q %v", ready, err)
	}
	ps, err := ProcessesMatching(marker)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Pid != cmd.Process.Pid {
		t.Fatalf("processes matching %q: %+v, want only the shell %d", marker, ps, cmd.Process.Pid)
	}
}
