package nsholder

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/internal/pidtest"
	"github.com/custom-runtime/containerd-shim-custom-v2/internal/testdeps"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
)

// The test binary is the holder when re-executed, as the shim binary is:
// holder.c's constructor is linked into both.

func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// inNS runs fn on a thread that joined the namespace at path.
func inNS(t *testing.T, path string, kind int, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		goruntime.LockOSThread() // never unlocked: the thread ends with the goroutine
		f, err := os.Open(path)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), kind); err != nil {
			t.Error(err)
			return
		}
		fn()
	}()
	<-done
}

// A holder holds the pod's namespaces: CRI's network namespace, a UTS
// namespace with the pod's hostname, an IPC namespace, a PID namespace it
// is the init of, with the pod's sysctls applied inside them.
func TestHolderHoldsThePodsNamespaces(t *testing.T) {
	testdeps.RequireRoot(t, "makes namespaces")
	name := fmt.Sprintf("nsholder-test-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		testdeps.Require(t, "ip netns add (iproute2)", fmt.Errorf("%w: %s", err, out))
	}
	defer func() { _ = exec.Command("ip", "netns", "del", name).Run() }()
	netns := filepath.Join("/var/run/netns", name)

	parent := fmt.Sprintf("nsholder-test-%d", os.Getpid())
	// The pod's cgroup is its owner's (kubelet's) to remove, here the test's.
	t.Cleanup(func() {
		if err := cgroup.RemoveOrphan("/" + parent); err != nil {
			t.Error(err)
		}
	})
	h := New(&runtime.Pod{
		ID: "sb1", Bundle: bundle.Bundle(t.TempDir()), NetNS: netns, Hostname: "web-0", SharedPID: true,
		Sysctls:      map[string]string{"net.ipv4.ping_group_range": "0 2147483647", "kernel.shm_rmid_forced": "1"},
		CgroupParent: parent,
	})
	ctx := context.Background()
	pid, err := h.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = h.Stop(ctx)
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, 0, nil)
		if err := h.Delete(ctx); err != nil {
			t.Error(err)
		}
	}()
	proc := func(ns string) string { return fmt.Sprintf("/proc/%d/ns/%s", pid, ns) }
	if nsInode(t, proc("net")) != nsInode(t, netns) {
		t.Fatal("the holder is not in CRI's network namespace")
	}
	for _, ns := range []string{"uts", "ipc", "pid"} {
		if nsInode(t, proc(ns)) == nsInode(t, "/proc/self/ns/"+ns) {
			t.Fatalf("the holder shares the shim's %s namespace", ns)
		}
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if !strings.Contains(string(status), fmt.Sprintf("NSpid:\t%d\t1\n", pid)) {
		t.Fatalf("the holder is not PID 1 of the pod's PID namespace:\n%s", status)
	}
	inNS(t, proc("uts"), unix.CLONE_NEWUTS, func() {
		var u unix.Utsname
		_ = unix.Uname(&u)
		if got := unix.ByteSliceToString(u.Nodename[:]); got != "web-0" {
			t.Errorf("hostname %q", got)
		}
	})
	inNS(t, proc("net"), unix.CLONE_NEWNET, func() {
		data, _ := os.ReadFile("/proc/sys/net/ipv4/ping_group_range")
		if got := strings.Join(strings.Fields(string(data)), " "); got != "0 2147483647" {
			t.Errorf("ping_group_range in the pod's network namespace: %q", got)
		}
	})
	inNS(t, proc("ipc"), unix.CLONE_NEWIPC, func() {
		data, _ := os.ReadFile("/proc/sys/kernel/shm_rmid_forced")
		if strings.TrimSpace(string(data)) != "1" {
			t.Errorf("shm_rmid_forced in the pod's IPC namespace: %q", data)
		}
	})
	if h.CgroupPath() != parent+"/sb1" {
		t.Fatalf("cgroup %q", h.CgroupPath())
	}
	cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if !strings.Contains(string(cg), parent+"/sb1") {
		t.Fatalf("the holder is not in the pod's cgroup:\n%s", cg)
	}
}

// A refused sysctl fails the start with the holder's own words, and
// leaves no process behind.
func TestHolderRefusedSysctl(t *testing.T) {
	testdeps.RequireRoot(t, "makes namespaces")
	h := New(&runtime.Pod{ID: "sb2", Bundle: bundle.Bundle(t.TempDir()), Sysctls: map[string]string{"kernel.shm_no_such_key": "1"}})
	_, err := h.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "kernel.shm_no_such_key") {
		t.Fatalf("got %v", err)
	}
	h.mu.Lock()
	pid := h.pid
	h.mu.Unlock()
	if pid != 0 {
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, 0, nil)
	}
}

// Stopping a pod twice, or after its cgroup went, is not an error (cgroup
// v2's Delete failed on the missing directory: make test-cgroup2 found it).
func TestDeleteMissingCgroup(t *testing.T) {
	h := New(&runtime.Pod{ID: "sb3", Bundle: bundle.Bundle(t.TempDir()), CgroupParent: "/custom-shim-test-missing/" + t.Name()})
	for range 2 {
		if err := h.Delete(context.Background()); err != nil {
			t.Fatalf("delete a cgroup that does not exist: %v", err)
		}
	}
}

// startHolder starts a holder for a pod sharing one PID namespace and
// stops it when the test ends.
func startHolder(t *testing.T) int {
	t.Helper()
	testdeps.RequireRoot(t, "makes namespaces")
	h := New(&runtime.Pod{ID: t.Name(), Bundle: bundle.Bundle(t.TempDir()), SharedPID: true})
	ctx := context.Background()
	pid, err := h.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = h.Stop(ctx)
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, 0, nil)
	})
	return pid
}

func procStatus(t *testing.T, pid int, key string) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return ""
}

// The holder is holder.c, never a Go runtime: one thread (a Go program has
// several from its start), pause's footprint.
func TestHolderIsNotAGoProcess(t *testing.T) {
	pid := startHolder(t)
	if th := procStatus(t, pid, "Threads"); th != "1" {
		t.Fatalf("the holder has %s threads: the Go runtime started", th)
	}
	t.Logf("holder RSS %s (anonymous %s)", procStatus(t, pid, "VmRSS"), procStatus(t, pid, "RssAnon"))
}

// As the init of the pod's PID namespace the holder reaps the orphans
// reparented to it, and SIGTERM ends it with status 0.
func TestHolderReapsOrphansAndStopsOnSIGTERM(t *testing.T) {
	pid := startHolder(t)
	// sh starts a short sleep in the background and exits: the sleep's
	// parent becomes the holder, which must collect it.
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-p", "--", "sh", "-c", "sleep 0.2 & echo $!").CombinedOutput()
	if err != nil {
		testdeps.Require(t, "nsenter (util-linux)", fmt.Errorf("%w: %s", err, out))
	}
	orphan := strings.TrimSpace(string(out))
	children := fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(children)
		if strings.TrimSpace(string(data)) == "" {
			break
		}
		if time.Now().After(deadline) {
			st, _ := os.ReadFile(fmt.Sprintf("/proc/%s/stat", strings.Fields(string(data))[0]))
			t.Fatalf("orphan (pid %s in the pod) not reaped by the holder: %s", orphan, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := unix.Kill(pid, unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		t.Fatalf("holder ended with %v after SIGTERM, want exit 0", ws)
	}
}

// Once the holder has exited and the reaper collected it, its pid may be
// another process's: stopping the pod then signals nothing. The pid is
// reused here for real (pidtest.Reuse), and the new owner must end by the
// test's own SIGTERM, not by the stop's SIGKILL.
func TestHolderStopNeverSignalsAReusedPid(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	ctx := context.Background()
	for range pidtest.Attempts {
		h := New(&runtime.Pod{ID: "sb-reuse", Bundle: bundle.Bundle(t.TempDir())})
		pid, err := h.Start(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// The holder dies (OOM killer, a kill by hand) and the shim's
		// reaper collects it.
		if err := unix.Kill(pid, unix.SIGKILL); err != nil {
			t.Fatal(err)
		}
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
			t.Fatal(err)
		}
		stranger := pidtest.Reuse(t, pid)
		if stranger == nil {
			_ = h.Delete(ctx)
			continue
		}
		if err := h.Stop(ctx); err != nil {
			t.Fatalf("stop a holder that is gone: %v", err)
		}
		if sig := pidtest.Killed(t, stranger); sig != unix.SIGTERM {
			t.Fatalf("Stop signalled pid %d after the holder was gone: the process that reused it ended by %v", pid, sig)
		}
		if err := h.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatal("other processes took the holder's pid every time")
}
