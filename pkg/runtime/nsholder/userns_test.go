package nsholder

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/internal/testdeps"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
)

// usernsNetns makes what CRI makes for a pod with hostUsers: false: a
// network namespace owned by a new user namespace mapping 0 to host (size
// 65536). A sleeping process holds both; the netns is its /proc path.
func usernsNetns(t *testing.T, uidHost, gidHost uint32) (netns string, userns string) {
	t.Helper()
	cmd := exec.Command("sleep", "infinity")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWUSER | unix.CLONE_NEWNET,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(uidHost), Size: 65536}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(gidHost), Size: 65536}},
	}
	if err := cmd.Start(); err != nil {
		testdeps.Require(t, "user namespaces (clone CLONE_NEWUSER)", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid), fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid)
}

// ownerInode is the inode of the user namespace that owns the namespace at path.
func ownerInode(t *testing.T, path string) uint64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_USERNS)
	if err != nil {
		t.Fatalf("NS_GET_USERNS %s: %v", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// A user-namespaced pod's holder joins the user namespace that owns CRI's
// network namespace, runs as the pod's root (the mapped host uid, not the
// host's root), and holds UTS and IPC namespaces that namespace owns, so
// that containers joining /proc/<holder>/ns/user can join them too.
func TestHolderJoinsThePodsUserNamespace(t *testing.T) {
	testdeps.RequireRoot(t, "makes namespaces")
	const uidHost, gidHost = 3000000, 3100000
	netns, userns := usernsNetns(t, uidHost, gidHost)
	uns := &runtime.UserNS{
		UID: specs.LinuxIDMapping{ContainerID: 0, HostID: uidHost, Size: 65536},
		GID: specs.LinuxIDMapping{ContainerID: 0, HostID: gidHost, Size: 65536},
	}
	h := New(&runtime.Pod{
		ID: "sb-userns", Bundle: bundle.Bundle(t.TempDir()), NetNS: netns, Hostname: "web-u", UserNS: uns,
		Sysctls: map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1"},
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
		_ = h.Delete(ctx)
	}()
	proc := func(ns string) string { return fmt.Sprintf("/proc/%d/ns/%s", pid, ns) }
	if nsInode(t, proc("user")) != nsInode(t, userns) {
		t.Fatal("the holder is not in the user namespace that owns the pod's network namespace")
	}
	if nsInode(t, proc("net")) != nsInode(t, netns) {
		t.Fatal("the holder is not in CRI's network namespace")
	}
	for _, ns := range []string{"uts", "ipc"} {
		if nsInode(t, proc(ns)) == nsInode(t, "/proc/self/ns/"+ns) {
			t.Fatalf("the holder shares the shim's %s namespace", ns)
		}
		if ownerInode(t, proc(ns)) != nsInode(t, userns) {
			t.Errorf("the holder's %s namespace is not owned by the pod's user namespace", ns)
		}
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, want := range []string{fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d\n", uidHost, uidHost, uidHost, uidHost),
		fmt.Sprintf("Gid:\t%d\t%d\t%d\t%d\n", gidHost, gidHost, gidHost, gidHost), "Groups:\t \n"} {
		if !strings.Contains(string(status), want) {
			t.Errorf("the holder's credentials are not the pod's root (want %q):\n%s", want, status)
		}
	}
	// Not dumpable (no ptrace from the pod): its /proc files stay the host
	// root's although it runs as the pod's root.
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/environ", pid), &st); err != nil || st.Uid != 0 {
		t.Errorf("the holder is dumpable: /proc/%d/environ owned by uid %d (%v)", pid, st.Uid, err)
	}
	inNS(t, proc("uts"), unix.CLONE_NEWUTS, func() {
		var u unix.Utsname
		_ = unix.Uname(&u)
		if got := unix.ByteSliceToString(u.Nodename[:]); got != "web-u" {
			t.Errorf("hostname %q", got)
		}
	})
	inNS(t, proc("ipc"), unix.CLONE_NEWIPC, func() {
		data, _ := os.ReadFile("/proc/sys/kernel/shm_rmid_forced")
		if got := strings.TrimSpace(string(data)); got != "1" {
			t.Errorf("kernel.shm_rmid_forced in the pod's IPC namespace: %q", got)
		}
	})
}

// With a shared PID namespace (shareProcessNamespace, or a CRI config that
// leaves the PID mode at POD), the namespace belongs to the pod's user
// namespace too: the holder is its init, a child of the shim (the test
// here), and the process that made it is gone.
func TestHolderUserNamespacePID1(t *testing.T) {
	testdeps.RequireRoot(t, "makes namespaces")
	const host = 3400000
	netns, userns := usernsNetns(t, host, host)
	m := specs.LinuxIDMapping{HostID: host, Size: 65536}
	parent := fmt.Sprintf("nsholder-userns-test-%d", os.Getpid())
	t.Cleanup(func() {
		if err := cgroup.RemoveOrphan("/" + parent); err != nil {
			t.Error(err)
		}
	})
	h := New(&runtime.Pod{ID: "sb-pid1", Bundle: bundle.Bundle(t.TempDir()), NetNS: netns, Hostname: "web-p",
		SharedPID: true, UserNS: &runtime.UserNS{UID: m, GID: m}, CgroupParent: parent})
	ctx := context.Background()
	pid, err := h.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = h.Stop(ctx)
			_, _ = unix.Wait4(pid, nil, 0, nil)
		}
		_ = h.Delete(ctx)
	}()
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if !strings.Contains(string(status), fmt.Sprintf("NSpid:\t%d\t1\n", pid)) || !strings.Contains(string(status), fmt.Sprintf("PPid:\t%d\n", os.Getpid())) {
		t.Fatalf("the holder is not PID 1 of the pod's PID namespace and the shim's child:\n%s", status)
	}
	for _, ns := range []string{"pid", "uts", "ipc"} {
		if ownerInode(t, fmt.Sprintf("/proc/%d/ns/%s", pid, ns)) != nsInode(t, userns) {
			t.Errorf("the holder's %s namespace is not owned by the pod's user namespace", ns)
		}
	}
	if nsInode(t, fmt.Sprintf("/proc/%d/ns/user", pid)) != nsInode(t, userns) {
		t.Error("the holder is not in the pod's user namespace")
	}
	// In the pod's cgroup, as its maker was when it was made.
	procs, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if !strings.Contains(string(procs), "/"+parent+"/sb-pid1") {
		t.Errorf("the holder is not in the pod's cgroup:\n%s", procs)
	}
	// Stop reaches the holder itself (through its pidfd).
	if err := h.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil || !ws.Signaled() || ws.Signal() != unix.SIGKILL {
		t.Fatalf("after Stop: %v %v", err, ws)
	}
	stopped = true
}

// The holder refuses a network namespace whose owner maps other ids than
// the pod's (or the host's user namespace), naming both mappings; nothing
// is left running.
func TestHolderRefusesAForeignUserNamespace(t *testing.T) {
	testdeps.RequireRoot(t, "makes namespaces")
	netns, _ := usernsNetns(t, 3200000, 3200000)
	for name, uns := range map[string]*runtime.UserNS{
		"uid": {UID: specs.LinuxIDMapping{HostID: 3300000, Size: 65536}, GID: specs.LinuxIDMapping{HostID: 3200000, Size: 65536}},
		"gid": {UID: specs.LinuxIDMapping{HostID: 3200000, Size: 65536}, GID: specs.LinuxIDMapping{HostID: 3200000, Size: 1}},
	} {
		t.Run(name, func(t *testing.T) {
			h := New(&runtime.Pod{ID: "sb-foreign", Bundle: bundle.Bundle(t.TempDir()), NetNS: netns, UserNS: uns})
			_, err := h.Start(context.Background())
			want := fmt.Sprintf("%s_map is \"0 3200000 65536\", the pod's is %q", name, idMap(map[string]specs.LinuxIDMapping{"uid": uns.UID, "gid": uns.GID}[name]))
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("got %v, want an error with %q", err, want)
			}
			_ = h.Delete(context.Background())
		})
	}
	// CRI's netns made without a user namespace: its owner is the host's.
	h := New(&runtime.Pod{ID: "sb-host", Bundle: bundle.Bundle(t.TempDir()), NetNS: "/proc/self/ns/net",
		UserNS: &runtime.UserNS{UID: specs.LinuxIDMapping{HostID: 3200000, Size: 65536}, GID: specs.LinuxIDMapping{HostID: 3200000, Size: 65536}}})
	if _, err := h.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "was the network namespace made inside the pod's user namespace?") {
		t.Fatalf("a network namespace of the host's user namespace: %v", err)
	}
}
