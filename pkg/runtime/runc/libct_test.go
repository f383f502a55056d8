package runc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
	"github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/internal/pidtest"
	"github.com/custom-runtime/containerd-shim-custom-v2/internal/testdeps"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/reaper"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
)

// The test binary is the container's init, as the shim binary is.
func init() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init()
	}
}

// needContainers skips unless containers can run here: root, and Debian's
// busybox-static for the rootfs.
func needContainers(t *testing.T) string {
	t.Helper()
	testdeps.RequireRoot(t, "runs containers")
	return testdeps.RequireCommand(t, "busybox", "busybox-static; scripts/deps.sh installs it")
}

// testBundle makes a bundle whose rootfs is busybox, with a relative root
// path as containerd writes it.
func testBundle(t *testing.T, busybox string, args ...string) (bundle.Bundle, *specs.Spec) {
	t.Helper()
	dir := t.TempDir()
	b := bundle.Bundle(dir)
	bin := filepath.Join(b.Rootfs(), "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"sh", "true", "sleep", "cat", "echo"} {
		if err := os.Symlink("busybox", filepath.Join(bin, l)); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"proc", "dev", "sys", "tmp"} {
		if err := os.MkdirAll(filepath.Join(b.Rootfs(), d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	spec := &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: "rootfs"},
		Process: &specs.Process{Args: args, Cwd: "/", Env: []string{"PATH=/bin"}},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755"}},
		},
		Linux: &specs.Linux{
			// A cgroup of its own: with no path, libcontainer names it
			// after the container id, which other packages' tests, run
			// at the same time, may use too (CI found "execfail" shared
			// with the runsc backend's test).
			CgroupsPath: fmt.Sprintf("/custom-shim-unit-%d-%s", os.Getpid(), filepath.Base(dir)),
			Namespaces:  []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}},
		},
	}
	data, _ = json.Marshal(spec)
	if err := os.WriteFile(b.Spec(), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return b, spec
}

// aggressiveReaper runs the shim's reaper (pkg/reaper, the gate the
// server uses) as fast as it can, as if SIGCHLD never stopped coming, and
// records every exit it reports.
type aggressiveReaper struct {
	r    *reaper.Reaper
	ec   chan gorunc.Exit
	mu   sync.Mutex
	exit map[int]int // pid -> exit status
	stop chan struct{}
	done chan struct{}
}

func startReaper(rp *reaper.Reaper) *aggressiveReaper {
	r := &aggressiveReaper{r: rp, ec: rp.Subscribe(), exit: map[int]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	recorded := make(chan struct{})
	go func() {
		defer close(recorded)
		for e := range r.ec {
			r.mu.Lock()
			r.exit[e.Pid] = e.Status
			r.mu.Unlock()
		}
	}()
	go func() {
		defer func() { r.r.Unsubscribe(r.ec); <-recorded; close(r.done) }()
		for {
			select {
			case <-r.stop:
				return
			default:
			}
			_ = r.r.Reap()
			runtimeGosched()
		}
	}()
	return r
}

func (r *aggressiveReaper) close() { close(r.stop); <-r.done }

func (r *aggressiveReaper) waitExit(t *testing.T, pid int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		st, ok := r.exit[pid]
		r.mu.Unlock()
		if ok {
			return st
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("exit of pid %d never reaped", pid)
	return -1
}

func newTestBackend(t *testing.T, b bundle.Bundle, spec *specs.Spec, gate runtime.ReaperGate) *libBackend {
	root := t.TempDir()
	return newLibBackend(Config{Mode: ModeInProcess, BinaryName: "runc", Root: root}, &runtime.Container{
		ID: "c", Namespace: "test", Bundle: b, Spec: spec, Reaper: gate,
	})
}

// lifecycle creates, starts and reaps one container printing to a pipe.
func lifecycle(t *testing.T, id string, be *libBackend, r *aggressiveReaper) error {
	rd, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	pid, err := be.Create(context.Background(), &runtime.CreateConfig{ID: id, Bundle: be.bundle, IO: &runtime.IO{Stdout: wr, Stderr: wr}, PidFile: be.bundle.InitPidFile()})
	wr.Close()
	if err != nil {
		return err
	}
	if err := be.Start(context.Background(), id, nil); err != nil {
		return err
	}
	if st := r.waitExit(t, pid); st != 3 {
		t.Fatalf("exit status %d, want 3", st)
	}
	out := make([]byte, 64)
	n, _ := rd.Read(out)
	if got := string(out[:n]); got != "hi\n" {
		t.Fatalf("output %q", got)
	}
	return be.Delete(context.Background(), id, false)
}

func createOnly(be *libBackend, id string) error {
	_, err := be.Create(context.Background(), &runtime.CreateConfig{ID: id, Bundle: be.bundle})
	return err
}

// Trap: libcontainer waits for runc init's stages by pid, and the shim's
// reaper (wait4(-1)) takes their statuses first unless it is held off. The
// ungated run shows this reaper is fast enough to steal them; the gated
// one must never lose.
func TestLibcontainerReaperGate(t *testing.T) {
	busybox := needContainers(t)
	b, spec := testBundle(t, busybox, "sh", "-c", "echo hi; exit 3")

	r := startReaper(reaper.New()) // never held: every reap is a full one
	be := newTestBackend(t, b, spec, runtime.NoReaper{})
	stolen := 0
	var first error
	for i := range 20 {
		id := fmt.Sprintf("nogate%d", i)
		if err := createOnly(be, id); err != nil {
			stolen++
			if first == nil {
				first = err
			}
		}
		be.Delete(context.Background(), id, true)
	}
	r.close()
	if stolen == 0 {
		t.Fatal("an ungated reaper never stole a status from libcontainer: this test cannot tell the gate works")
	}
	t.Logf("without the gate, %d of 20 creates failed, e.g.: %v", stolen, first)

	g := reaper.New()
	r = startReaper(g)
	defer r.close()
	be = newTestBackend(t, b, spec, g)
	for i := range 20 {
		if err := lifecycle(t, fmt.Sprintf("gate%d", i), be, r); err != nil {
			t.Fatalf("round %d with the gate: %v", i, err)
		}
	}
}

// Trap: Container.Start marks every descriptor from 3 up close-on-exec in
// the calling process. The shim's own sockets keep working, and a child it
// starts still gets what it hands over through ExtraFiles.
func TestLibcontainerLeavesShimDescriptorsUsable(t *testing.T) {
	busybox := needContainers(t)
	b, spec := testBundle(t, busybox, "sh", "-c", "echo hi; exit 3")
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	g := reaper.New()
	r := startReaper(g)
	defer r.close()
	if err := lifecycle(t, "fds", newTestBackend(t, b, spec, g), r); err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := net.Dial("unix", l.Addr().String())
		if err == nil {
			_, _ = c.Write([]byte("x")) // only the connection matters
			c.Close()
		}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatalf("listener after a container start: %v", err)
	}
	c.Close()
	f, err := os.CreateTemp(t.TempDir(), "extra")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", "echo handed-over >&3")
	cmd.ExtraFiles = []*os.File{f}
	resume := g.Pause()
	err = cmd.Run()
	resume()
	if err != nil {
		t.Fatalf("child with an ExtraFiles descriptor: %v", err)
	}
	data, _ := os.ReadFile(f.Name())
	if string(data) != "handed-over\n" {
		t.Fatalf("fd 3 in the child got %q", data)
	}
}

// Trap: specconv resolves a relative rootfs against the working directory,
// which a grouped shim does not own, and hooks get the bundle from it.
func TestLibcontainerRelativePathsAgainstTheBundle(t *testing.T) {
	busybox := needContainers(t)
	b, spec := testBundle(t, busybox, "sh", "-c", "echo hi; exit 3")
	hookOut := filepath.Join(t.TempDir(), "hook-state.json")
	spec.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/bin/sh", Args: []string{"sh", "-c", "cat > " + hookOut}}}}
	t.Chdir(t.TempDir()) // not the bundle, as in a grouped shim
	g := reaper.New()
	r := startReaper(g)
	defer r.close()
	if err := lifecycle(t, "cwd", newTestBackend(t, b, spec, g), r); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(hookOut)
	if err != nil {
		t.Fatal(err)
	}
	var st specs.State
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	if st.Bundle != b.Path() {
		t.Fatalf("hook saw bundle %q, want %q", st.Bundle, b.Path())
	}
}

// Errors keep their kinds, and Delete is safe to retry.
func TestLibcontainerErrorKinds(t *testing.T) {
	busybox := needContainers(t)
	b, spec := testBundle(t, busybox, "sleep", "100")
	g := reaper.New()
	r := startReaper(g)
	defer r.close()
	be := newTestBackend(t, b, spec, g)
	ctx := context.Background()
	pid, err := be.Create(ctx, &runtime.CreateConfig{ID: "k", Bundle: b, PidFile: b.InitPidFile()})
	if err != nil {
		t.Fatal(err)
	}
	other := newTestBackend(t, b, spec, g)
	other.root = be.root
	if _, err := other.Create(ctx, &runtime.CreateConfig{ID: "k", Bundle: b}); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("create twice: %v", err)
	}
	if err := be.Resume(ctx, "k"); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("resume a created container: %v", err)
	}
	if err := be.Start(ctx, "k", nil); err != nil {
		t.Fatal(err)
	}
	if err := be.Pause(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := be.Exec(ctx, "k", &runtime.ExecConfig{ID: "e", Spec: &specs.Process{Args: []string{"true"}, Cwd: "/"}}); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("exec in a paused container: %v", err)
	}
	if err := be.Delete(ctx, "k", false); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("delete a paused container: %v", err)
	}
	if err := be.Resume(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if err := be.Kill(ctx, "k", unix.SIGKILL, false); err != nil {
		t.Fatal(err)
	}
	r.waitExit(t, pid)
	if err := be.Kill(ctx, "k", unix.SIGTERM, false); !errdefs.IsNotFound(err) {
		t.Fatalf("kill after exit: %v, want NotFound", err)
	}
	if err := be.Kill(ctx, "k", unix.SIGTERM, true); err != nil {
		t.Fatalf("kill --all after exit: %v, want nothing", err)
	}
	for range 2 {
		if err := be.Delete(ctx, "k", false); err != nil {
			t.Fatalf("delete (twice): %v", err)
		}
	}
	if _, err := os.Stat(filepath.Join(be.root, "k")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state left: %v", err)
	}
	// A missing executable is the bundle's fault.
	b2, spec2 := testBundle(t, busybox, "no-such-binary")
	be2 := newTestBackend(t, b2, spec2, g)
	_, err = be2.Create(ctx, &runtime.CreateConfig{ID: "m", Bundle: b2})
	if err == nil || !strings.Contains(err.Error(), "no-such-binary") {
		t.Fatalf("missing executable: %v", err)
	}
	if _, err := os.Stat(filepath.Join(be2.root, "m")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state left after a failed create: %v", err)
	}
	_ = syscall.SIGKILL
}

func runtimeGosched() { goruntime.Gosched() }

// logCapture keeps logrus messages (libcontainer logs through logrus).
type logCapture struct {
	mu   sync.Mutex
	msgs []string
}

func (c *logCapture) Levels() []logrus.Level { return logrus.AllLevels }
func (c *logCapture) Fire(e *logrus.Entry) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, e.Message)
	return nil
}

// Trap: libcontainer seals the init binary (the 20+ MB shim) per container:
// an overlayfs mount where the kernel allows it, else a memfd copy. Which
// one runs here is reported (docs/benchmarks.md records it), and the
// container runs either way.
func TestLibcontainerExeSeal(t *testing.T) {
	busybox := needContainers(t)
	b, spec := testBundle(t, busybox, "sh", "-c", "echo hi; exit 3")
	capture := &logCapture{}
	logrus.AddHook(capture)
	level := logrus.GetLevel()
	logrus.SetLevel(logrus.DebugLevel)
	defer logrus.SetLevel(level)
	g := reaper.New()
	r := startReaper(g)
	defer r.close()
	if err := lifecycle(t, "seal", newTestBackend(t, b, spec, g), r); err != nil {
		t.Fatal(err)
	}
	capture.mu.Lock()
	defer capture.mu.Unlock()
	for _, m := range capture.msgs {
		if strings.Contains(m, "exeseal") || strings.Contains(m, "sealing") {
			t.Logf("libcontainer: %s", m)
			return
		}
	}
	t.Fatalf("libcontainer did not say how it sealed the init binary; logged: %q", capture.msgs)
}

// Trap: with user namespace mappings, specconv forks a helper to read them
// and waits for it by pid, before any container exists (critest's
// hostUsers: false pods failed with "waitid: no child processes"). The
// conversion runs under the gate too.
func TestLibcontainerUsernsMappingsUnderTheGate(t *testing.T) {
	busybox := needContainers(t)
	b, spec := testBundle(t, busybox, "true")
	// A user namespace pinned at a file, as CRI pins a pod's: only a path
	// that is not /proc/<pid>/ns/user makes specconv fork.
	holder := exec.Command("sleep", "60")
	holder.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
	}
	if err := holder.Start(); err != nil {
		t.Skipf("this host does not let root make a user namespace (user.max_user_namespaces?): %v", err)
	}
	defer func() { _ = holder.Process.Kill(); _ = holder.Wait() }()
	pinned := filepath.Join(t.TempDir(), "userns")
	if err := os.WriteFile(pinned, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(fmt.Sprintf("/proc/%d/ns/user", holder.Process.Pid), pinned, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unix.Unmount(pinned, unix.MNT_DETACH) }()
	spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace, Path: pinned})
	spec.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
	spec.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}

	convert := func(gate runtime.ReaperGate, rounds int) (failed int, first error) {
		be := newTestBackend(t, b, spec, gate)
		for i := range rounds {
			if _, err := be.libcontainerConfig(fmt.Sprintf("userns%d", i)); err != nil {
				failed++
				if first == nil {
					first = err
				}
			}
		}
		return failed, first
	}
	r := startReaper(reaper.New()) // never held: every reap is a full one
	failed, first := convert(runtime.NoReaper{}, 50)
	r.close()
	if failed == 0 {
		t.Fatal("an ungated reaper never took specconv's helper: this test cannot tell the gate works")
	}
	t.Logf("without the gate, %d of 50 conversions failed, e.g.: %v", failed, first)

	g := reaper.New()
	r = startReaper(g)
	defer r.close()
	if failed, first := convert(g, 50); failed > 0 {
		t.Fatalf("with the gate, %d of 50 conversions failed, e.g.: %v", failed, first)
	}
}

// Trap: libcontainer opens bind-mount sources from a goroutine that locks
// its thread and setns(2)es it into the container's mount namespace, then
// exits so that the thread dies. Go cannot kill the main thread: had that
// goroutine run there, the process's /proc/self/mountinfo would be the
// container's from then on, and the cgroup library, which reads it to find
// the cgroup mounts, fails ("cgroup mountpoint does not exist": a task
// with no stats and no OOM events; CI's critest and the stats test hit it).
// The package pins the main goroutine to the main thread at init.
func TestLibcontainerKeepsTheShimsMountNamespace(t *testing.T) {
	busybox := needContainers(t)
	b, spec := testBundle(t, busybox, "sh", "-c", "echo hi; exit 3")
	src := t.TempDir()
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/tmp/bound", Type: "bind", Source: src, Options: []string{"rbind", "ro"}})
	before, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	g := reaper.New()
	r := startReaper(g)
	defer r.close()
	be := newTestBackend(t, b, spec, g)
	for i := range 40 {
		if err := lifecycle(t, fmt.Sprintf("mntns%d", i), be, r); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if now, _ := os.Readlink("/proc/self/ns/mnt"); now != before {
			t.Fatalf("round %d: the process's mount namespace is now %s (was %s)", i, now, before)
		}
	}
	if _, err := cgroup.Load(os.Getpid()); err != nil {
		t.Fatalf("the cgroup library after 40 containers: %v", err)
	}
}

// Once an exec has exited and the reaper collected it, its pid may be
// another process's: signalling the exec then returns NotFound and
// signals nothing. The pid is reused here for real (pidtest.Reuse), and
// the new owner must end by the test's own SIGTERM, not by the SIGKILL.
func TestLibcontainerSignalReapedExec(t *testing.T) {
	busybox := needContainers(t)
	b, spec := testBundle(t, busybox, "sleep", "1000")
	ctx := context.Background()
	g := reaper.New()
	r := startReaper(g)
	defer func() { r.close() }()
	be := newTestBackend(t, b, spec, g)
	if _, err := be.Create(ctx, &runtime.CreateConfig{ID: "sig", Bundle: b}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Delete(ctx, "sig", true) })
	if err := be.Start(ctx, "sig", nil); err != nil {
		t.Fatal(err)
	}
	for i := range pidtest.Attempts {
		execID := fmt.Sprintf("e%d", i)
		pid, err := be.Exec(ctx, "sig", &runtime.ExecConfig{ID: execID, Spec: &specs.Process{Args: []string{"true"}, Cwd: "/", Env: []string{"PATH=/bin"}}})
		if err != nil {
			t.Fatal(err)
		}
		r.waitExit(t, pid)
		r.close() // it would collect the process reusing the pid too
		stranger := pidtest.Reuse(t, pid)
		if stranger == nil {
			r = startReaper(g)
			continue
		}
		err = be.Signal(ctx, "sig", runtime.ExecProcess{ID: execID, Pid: pid}, unix.SIGKILL)
		sig := pidtest.Killed(t, stranger)
		r = startReaper(g)
		if !errdefs.IsNotFound(err) {
			t.Errorf("signal an exec that exited and was reaped: %v, want NotFound", err)
		}
		if sig != unix.SIGTERM {
			t.Fatalf("signalling exec %s (pid %d) after it was reaped reached the process that reused its pid: it ended by %v", execID, pid, sig)
		}
		return
	}
	t.Fatal("other processes took the exec's pid every time")
}

// kill --all signals every process of the container (runc's freeze,
// signal, thaw), and leaves a paused container paused: the signal lands
// when it is resumed.
func TestLibcontainerKillAllFreezes(t *testing.T) {
	busybox := needContainers(t)
	// sh, the container's pid 1, ignores SIGTERM from outside (no
	// handler); its child does not, and sh exits when the child has.
	b, spec := testBundle(t, busybox, "sh", "-c", "sleep 1000 & wait")
	ctx := context.Background()
	g := reaper.New()
	r := startReaper(g)
	defer r.close()
	be := newTestBackend(t, b, spec, g)
	for _, paused := range []bool{false, true} {
		id := fmt.Sprintf("all-paused-%v", paused)
		pid, err := be.Create(ctx, &runtime.CreateConfig{ID: id, Bundle: b})
		if err != nil {
			t.Fatal(err)
		}
		if err := be.Start(ctx, id, nil); err != nil {
			t.Fatal(err)
		}
		// Wait for the child: kill --all must find two processes.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			pids, err := be.Pids(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if len(pids) == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the container's child never started: pids %v", pids)
			}
		}
		if paused {
			if err := be.Pause(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		if err := be.Kill(ctx, id, unix.SIGTERM, true); err != nil {
			t.Fatalf("kill --all: %v", err)
		}
		if paused {
			c, err := be.get(id)
			if err != nil {
				t.Fatal(err)
			}
			if st, err := c.Status(); err != nil || st != libcontainer.Paused {
				t.Fatalf("a paused container after kill --all: %v %v", st, err)
			}
			if err := be.Resume(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		if st := r.waitExit(t, pid); st != 0 {
			t.Fatalf("init exit %d", st)
		}
		if err := be.Delete(ctx, id, false); err != nil {
			t.Fatal(err)
		}
	}
}
