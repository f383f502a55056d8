package pidfd

import (
	"os/exec"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
)

// start runs sleep as a child the test reaps itself (cmd.Wait).
func start(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

// TestSignalOnlyTheProcessItHolds: after the exec has been reaped, a
// signal for it is NotFound, whatever process has its pid now; and the
// table answers NotFound for a pid it was not given.
func TestSignalOnlyTheProcessItHolds(t *testing.T) {
	var tb Table
	defer tb.Close()
	cmd := start(t)
	pid := cmd.Process.Pid
	if err := tb.Add("e1", pid); err != nil {
		t.Fatal(err)
	}
	if !tb.Running("e1", pid) {
		t.Fatal("a running exec is not Running")
	}
	if err := tb.Signal("e1", pid+1, syscall.SIGTERM); !errdefs.IsNotFound(err) {
		t.Fatalf("signal with another pid: %v, want NotFound", err)
	}
	if err := tb.Signal("e1", pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait() // reaped: the pid is free for the next process
	if tb.Running("e1", pid) {
		t.Fatal("a reaped exec is Running")
	}
	if err := tb.Signal("e1", pid, syscall.SIGKILL); !errdefs.IsNotFound(err) {
		t.Fatalf("signal after the exec was reaped: %v, want NotFound", err)
	}
	if err := tb.Signal("e2", pid, syscall.SIGKILL); !errdefs.IsNotFound(err) {
		t.Fatalf("signal for an exec never added: %v, want NotFound", err)
	}
}

// TestAddDropsExited: a container with an exec per probe keeps a pidfd
// only for those still running.
func TestAddDropsExited(t *testing.T) {
	var tb Table
	defer tb.Close()
	for range 5 {
		cmd := start(t)
		if err := tb.Add("probe", cmd.Process.Pid); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	live := start(t)
	if err := tb.Add("live", live.Process.Pid); err != nil {
		t.Fatal(err)
	}
	tb.mu.Lock()
	n := len(tb.procs)
	tb.mu.Unlock()
	if n != 1 {
		t.Fatalf("table holds %d pidfds, want 1 (the running exec's)", n)
	}
}
