// Package pidtest makes a pid be reused on purpose, for tests proving that
// the shim never signals a pid it no longer owns.
package pidtest

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// lastPid is the pid the kernel allocated last in this PID namespace; the
// next fork gets the next free one after it (root only).
const lastPid = "/proc/sys/kernel/ns_last_pid"

// Reuse starts a process (sleep) with the given pid, which must be free:
// its previous owner exited and was reaped. It returns nil if another
// process on the host took the pid first (after the write to ns_last_pid,
// any fork on the host gets it): the caller tries its scenario again. The
// process is killed and reaped when the test ends; its exit tells what
// signalled it (Killed).
func Reuse(t testing.TB, pid int) *exec.Cmd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("reusing a pid needs root (writes " + lastPid + ")")
	}
	for range 200 {
		cmd := exec.Command("sleep", "1000") // resolved before: the fork follows the write closely
		if err := os.WriteFile(lastPid, []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Fatalf("set the last pid: %v", err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if cmd.Process.Pid == pid {
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			})
			return cmd
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if unix.Kill(pid, 0) == nil {
			t.Logf("pid %d was taken by another process on the host", pid)
			return nil
		}
	}
	t.Fatalf("could not get pid %d", pid)
	return nil
}

// Attempts is how many times a test runs its scenario while Reuse keeps
// losing the pid to other processes of a busy host.
const Attempts = 10

// Killed ends the process Reuse started with SIGTERM and reports the
// signal that ended it: SIGTERM, unless something signalled it before
// (a SIGKILL sent before is pending and takes precedence).
func Killed(t testing.TB, cmd *exec.Cmd) syscall.Signal {
	t.Helper()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("the process that reused pid %d: %v", cmd.Process.Pid, err)
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		t.Fatalf("the process that reused pid %d: %v, want an end by a signal", cmd.Process.Pid, err)
	}
	return ws.Signal()
}
