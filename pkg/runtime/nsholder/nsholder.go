// Package nsholder is the runc backend's pod sandbox: a small process, the
// shim binary re-executed as "sandbox-holder", that holds a pod's
// namespaces for its containers to join (CRI puts /proc/<pid>/ns/{net,ipc,
// uts,pid} in every container's spec), as a pause container does, without
// an image, a runc container or a runtime command.
//
// The holder is started in CRI's network namespace (forked from a thread
// that joined it) with new UTS and IPC namespaces and, for pods that share
// one PID namespace, a new PID namespace whose init it is and whose orphans
// it reaps. It sets the pod's hostname and sysctls from inside those
// namespaces, tells the shim it is ready, and then waits for a signal. It
// lives in a cgroup of its own under the pod's cgroup, as pause does, and
// is SIGKILLed when the pod stops: it never holds the pod up. It is
// signalled only through a pidfd, kept from its fork to Delete: once the
// shim's reaper has collected it, its pid may be another process's.
//
// The holder process is C (holder.c), run before the Go runtime starts:
// this file is the shim's side of it.
package nsholder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	goruntime "runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	occgroups "github.com/opencontainers/cgroups"
	sdcgroups "github.com/opencontainers/cgroups/systemd"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
)

// Mode is the binary's argument that makes it the holder (holder.c's
// HOLDER_MODE).
const Mode = "sandbox-holder"

// oomScoreAdj is what pause gets from CRI; where lowering is refused (no
// CAP_SYS_RESOURCE, CRI's restrict_oom_score_adj) the holder keeps its own.
const oomScoreAdj = -998

// Holder is one pod's holder process.
type Holder struct {
	pod *runtime.Pod

	mu  sync.Mutex
	pid int // guarded by mu; 0 until started
	// pidfd is the holder's process, from its fork until Delete; -1
	// without one. Guarded by mu, which is held while it is used, so that
	// Delete cannot close it (and the number be reused) under a signal.
	pidfd  int
	cgroup string // guarded by mu; the cgroup it was put in
}

var _ runtime.PodSandbox = (*Holder)(nil)

// New returns the holder for pod; Start starts it.
func New(p *runtime.Pod) *Holder { return &Holder{pod: p, pidfd: -1} }

// CgroupPath implements runtime.PodSandbox.
func (h *Holder) CgroupPath() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cgroup
}

// Start implements runtime.PodSandbox.
func (h *Holder) Start(ctx context.Context) (_ int, retErr error) {
	p := h.pod
	if p.UserNS != nil && p.NetNS == "" {
		return 0, fmt.Errorf("start sandbox holder: a user namespace needs the pod's network namespace, made inside it: %w", errdefs.ErrInvalidArgument)
	}
	ready, readyW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer ready.Close()
	args := []string{Mode}
	var flags uintptr
	if p.NetNS != "" {
		// A pod network of its own has a hostname of its own; a
		// hostNetwork pod keeps the host's UTS namespace, as pause does.
		flags |= unix.CLONE_NEWUTS
		if p.Hostname != "" {
			args = append(args, "--hostname", p.Hostname)
		}
	}
	if !p.HostIPC {
		flags |= unix.CLONE_NEWIPC
	}
	if p.SharedPID && !p.HostPID {
		flags |= unix.CLONE_NEWPID
		args = append(args, "--pid1")
	}
	// With a user namespace and a PID namespace, the holder's init is a
	// child it makes once in the pod's cgroup: goW tells it when.
	var goR, goW *os.File
	if p.UserNS != nil {
		if flags&unix.CLONE_NEWPID != 0 {
			if goR, goW, err = os.Pipe(); err != nil {
				_ = readyW.Close()
				return 0, err
			}
			defer goR.Close()
			defer goW.Close()
		}
		// The holder makes the UTS, IPC and PID namespaces itself, once it
		// has joined the pod's user namespace, its first step (holder.c),
		// so that they are that namespace's.
		args = append([]string{Mode, "--userns", idMap(p.UserNS.UID), idMap(p.UserNS.GID), strconv.FormatUint(uint64(flags), 10)}, args[1:]...)
		flags = 0
	}
	keys := make([]string, 0, len(p.Sysctls))
	for k := range p.Sysctls {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "--sysctl", k+"="+p.Sysctls[k])
	}
	// /proc/self/exe: the binary that is running, even if the file on
	// disk was replaced by an upgrade.
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Args[0] = "containerd-shim-custom-v2"
	cmd.Dir = "/"
	cmd.ExtraFiles = []*os.File{readyW}
	if goR != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, goR) // fd 4, holder.c's GO_FD
	}
	// The pidfd comes from the fork itself (CLONE_PIDFD): the reaper may
	// collect the holder at any moment after it, and its pid be reused.
	pidfd := -1
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: flags, Setpgid: true, PidFD: &pidfd}
	// Tracked under the gate, so that the reaper collects its exit even
	// while a container's create holds the gate.
	gate := h.gate()
	resume := gate.Pause()
	err = h.startIn(p.NetNS, cmd)
	if err == nil {
		gate.Track(cmd.Process.Pid)
	}
	resume()
	_ = readyW.Close() // the holder has its copy; ours must go for EOF to come
	if goR != nil {
		_ = goR.Close()
	}
	if err != nil {
		return 0, fmt.Errorf("start sandbox holder: %w", err)
	}
	pid := cmd.Process.Pid
	// The reaper collects its exit; Go's own handle is not needed.
	_ = cmd.Process.Release()
	if pidfd < 0 {
		// No pidfd, no safe signal later: end it now, by pid, while it
		// certainly still is the holder (it exits on its own only if its
		// setup fails).
		_ = unix.Kill(pid, unix.SIGKILL)
		return 0, fmt.Errorf("start sandbox holder: the kernel gave no pidfd (CLONE_PIDFD, Linux 5.2): %w", errdefs.ErrNotImplemented)
	}
	h.mu.Lock()
	if h.pidfd >= 0 {
		_ = unix.Close(h.pidfd) // a failed start's, not deleted
	}
	h.pid, h.pidfd = pid, pidfd
	h.mu.Unlock()
	defer func() {
		if retErr != nil {
			_ = h.signal(unix.SIGKILL)
			if goW != nil {
				// The init the holder may have made by then is not the
				// process h.signal reaches: it is in the holder's cgroup.
				h.killCgroup(ctx)
			}
		}
	}()
	cg, err := joinCgroup(p.CgroupParent, p.ID, pid)
	if err != nil {
		return 0, err
	}
	h.mu.Lock()
	h.cgroup = cg
	h.mu.Unlock()
	adjustOOMScore(ctx, pid)
	if goW != nil {
		_ = goW.Close() // in the pod's cgroup: the holder may start its init
	}
	msg, err := waitReady(ctx, ready)
	if err != nil {
		return 0, err
	}
	if goW != nil {
		if pid, err = h.adoptInit(msg); err != nil {
			return 0, err
		}
		adjustOOMScore(ctx, pid)
	}
	if err := writePid(p.Bundle, pid); err != nil {
		return 0, err
	}
	return pid, nil
}

// gate is the shim's reaper gate, or none (the "delete" action).
func (h *Holder) gate() runtime.ReaperGate {
	if h.pod.Reaper == nil {
		return runtime.NoReaper{}
	}
	return h.pod.Reaper
}

// killCgroup ends whatever runs in the holder's cgroup (a failed start's).
func (h *Holder) killCgroup(ctx context.Context) {
	h.mu.Lock()
	cg := h.cgroup
	h.mu.Unlock()
	if cg == "" {
		return
	}
	if !strings.Contains(cg, ":") {
		cg = "/" + strings.TrimPrefix(cg, "/")
	}
	if err := cgroup.KillAll(cg); err != nil {
		log.G(ctx).WithError(err).Warnf("kill what a failed sandbox holder left in %s", cg)
	}
}

// idMap is a mapping as /proc/<pid>/uid_map shows it, blanks squeezed.
func idMap(m specs.LinuxIDMapping) string {
	return fmt.Sprintf("%d %d %d", m.ContainerID, m.HostID, m.Size)
}

// startIn starts cmd in the network namespace at netns ("": this one). The
// new process inherits the namespaces of the thread that forks it, so the
// fork happens on a locked thread that joined the namespace for the time
// of the call.
func (h *Holder) startIn(netns string, cmd *exec.Cmd) error {
	if netns == "" {
		return cmd.Start()
	}
	target, err := os.Open(netns)
	if err != nil {
		return fmt.Errorf("open pod network namespace: %w", err)
	}
	defer target.Close()
	goruntime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()))
	if err != nil {
		goruntime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		goruntime.UnlockOSThread()
		return fmt.Errorf("join pod network namespace %s: %w", netns, err)
	}
	startErr := cmd.Start()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: Go ends a locked thread with its
		// goroutine, so it cannot serve anything else in the pod's
		// namespace.
		log.L.WithError(err).Error("could not return a thread to the shim's network namespace; it is discarded")
		return startErr
	}
	goruntime.UnlockOSThread()
	return startErr
}

// joinCgroup puts the holder in a cgroup of its own under the pod's
// cgroup, named as CRI names pause's (cgroupfs: <parent>/<id>; systemd
// slices: the scope cri-containerd-<id>.scope in the Pod's slice). No
// parent: it stays where it is.
func joinCgroup(parent, id string, pid int) (string, error) {
	if parent == "" {
		return "", nil
	}
	if strings.HasSuffix(parent, ".slice") {
		if cgroups.Mode() != cgroups.Unified {
			log.L.WithField("parent", parent).Warn("systemd cgroup parent on cgroup v1: the sandbox holder stays in the shim's cgroup")
			return "", nil
		}
		// kubelet passes the slice's cgroupfs path (/kubepods.slice/...
		// /kubepods-besteffort-pod<uid>.slice); systemd knows the slice by
		// its last element, as containerd's slice:prefix:name paths do.
		// runc's systemd manager, as for pause: containerd/cgroups'
		// NewSystemd would put the scope in system.slice whatever the
		// slice it is given.
		slice := path.Base(parent)
		m, err := sdcgroups.NewUnifiedManager(&occgroups.Cgroup{
			Name: id, Parent: slice, ScopePrefix: "cri-containerd", Resources: &occgroups.Resources{},
		}, "")
		if err == nil {
			err = m.Apply(pid)
		}
		if err != nil {
			return "", fmt.Errorf("sandbox scope cri-containerd-%s.scope in %s: %w", id, slice, err)
		}
		return slice + ":cri-containerd:" + id, nil
	}
	path := strings.TrimSuffix(parent, "/") + "/" + id
	if cgroups.Mode() == cgroups.Unified {
		m, err := cgroup2.NewManager("/sys/fs/cgroup", path, &cgroup2.Resources{})
		if err != nil {
			return "", fmt.Errorf("sandbox cgroup %s: %w", path, err)
		}
		if err := m.AddProc(uint64(pid)); err != nil {
			return "", fmt.Errorf("join sandbox cgroup %s: %w", path, err)
		}
		return path, nil
	}
	cg, err := cgroup1.New(cgroup1.StaticPath(path), &specs.LinuxResources{})
	if err != nil {
		return "", fmt.Errorf("sandbox cgroup %s: %w", path, err)
	}
	if err := cg.Add(cgroup1.Process{Pid: pid}); err != nil {
		return "", fmt.Errorf("join sandbox cgroup %s: %w", path, err)
	}
	return path, nil
}

func adjustOOMScore(ctx context.Context, pid int) {
	err := os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid), []byte(strconv.Itoa(oomScoreAdj)), 0)
	if err != nil {
		log.G(ctx).WithError(err).Debug("sandbox holder keeps its OOM score (lowering it is not allowed here)")
	}
}

// waitReady reads the holder's verdict: "ok" (with its init's pid and
// start time after "ok " when it made one), or what went wrong in its
// namespaces (a refused sysctl, a hostname).
func waitReady(ctx context.Context, r *os.File) (string, error) {
	type verdict struct {
		msg string
		err error
	}
	done := make(chan verdict, 1)
	go func() {
		msg, err := io.ReadAll(io.LimitReader(r, 4096))
		switch {
		case err != nil:
			done <- verdict{err: fmt.Errorf("sandbox holder: %w", err)}
		case string(msg) == "ok" || strings.HasPrefix(string(msg), "ok "):
			done <- verdict{msg: string(msg)}
		case len(msg) == 0:
			done <- verdict{err: errors.New("sandbox holder exited before it was ready")}
		default:
			done <- verdict{err: fmt.Errorf("sandbox holder: %s: %w", msg, errdefs.ErrInvalidArgument)}
		}
	}()
	select {
	case v := <-done:
		return v.msg, v.err
	case <-ctx.Done():
		return "", ctx.Err()
	case <-time.After(30 * time.Second):
		return "", errors.New("sandbox holder not ready after 30s")
	}
}

// adoptInit makes the holder's init (msg: "ok <pid> <start time>", a child
// of the shim through CLONE_PARENT) the holder: the pid Start returns, the
// one Stop signals through a pidfd and the reaper tracks. The process that
// made it exits on its own. The start time tells the init from a process
// that took its pid had it died and been reaped before the pidfd pinned it.
func (h *Holder) adoptInit(msg string) (int, error) {
	var pid int
	var start uint64
	if n, _ := fmt.Sscanf(msg, "ok %d %d", &pid, &start); n != 2 || pid <= 0 {
		return 0, fmt.Errorf("sandbox holder: malformed report %q", msg)
	}
	gate := h.gate()
	resume := gate.Pause()
	defer resume()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		// With the gate held the init, a child of the shim, keeps its pid
		// even if it has exited: the start time is enough to end it.
		if now, serr := startTime(pid); serr == nil && now == start {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		return 0, fmt.Errorf("sandbox holder: its init %d: %w", pid, err)
	}
	if now, err := startTime(pid); err != nil || now != start {
		_ = unix.Close(pidfd)
		return 0, fmt.Errorf("sandbox holder: its init %d exited before it was ready", pid)
	}
	gate.Track(pid)
	h.mu.Lock()
	_ = unix.Close(h.pidfd) // the process that made it, exiting
	h.pid, h.pidfd = pid, pidfd
	h.mu.Unlock()
	return pid, nil
}

// holderPidFile records the holder's pid for "delete" after a shim died.
func holderPidFile(b bundle.Bundle) string { return b.InitPidFile() }

func writePid(b bundle.Bundle, pid int) error {
	start, err := startTime(pid)
	if err != nil {
		return err
	}
	// The start time tells a recorded pid from a reused one.
	return bundle.WriteFileAtomic(holderPidFile(b), []byte(fmt.Sprintf("%d %d", pid, start)), 0o600)
}

// Stop implements runtime.PodSandbox. A holder this process started is
// signalled through its pidfd: once it is gone, nothing is. One it did not
// start (the "delete" action after a shim died) is found through its pid
// file, pinned by a pidfd and checked against the recorded start time
// before the signal.
func (h *Holder) Stop(ctx context.Context) error {
	h.mu.Lock()
	started := h.pid != 0
	h.mu.Unlock()
	if started {
		return h.signal(unix.SIGKILL)
	}
	pidfd, pid := h.recordedPidfd()
	if pidfd < 0 {
		return nil // never started, or gone (its pid may be someone else's now)
	}
	defer func() { _ = unix.Close(pidfd) }()
	return sendSignal(pidfd, pid, unix.SIGKILL)
}

// signal signals the holder this process started, if it still exists.
func (h *Holder) signal(sig unix.Signal) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pidfd < 0 {
		return nil // deleted: gone
	}
	return sendSignal(h.pidfd, h.pid, sig)
}

// sendSignal signals the process pidfd refers to; one that is gone
// (reaped, ESRCH) is not an error: Stop wants it gone.
func sendSignal(pidfd, pid int, sig unix.Signal) error {
	if err := unix.PidfdSendSignal(pidfd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("stop sandbox holder %d: %w", pid, err)
	}
	return nil
}

// recordedPidfd is a pidfd of the holder named by its pid file, if that
// process still is the holder (same start time, checked after the pidfd
// pinned it), else -1.
func (h *Holder) recordedPidfd() (pidfd, pid int) {
	data, err := os.ReadFile(holderPidFile(h.pod.Bundle))
	if err != nil {
		return -1, 0
	}
	var start uint64
	if n, _ := fmt.Sscanf(string(data), "%d %d", &pid, &start); n != 2 || pid <= 0 {
		return -1, 0
	}
	pidfd, err = unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, 0
	}
	if now, err := startTime(pid); err != nil || now != start {
		_ = unix.Close(pidfd)
		return -1, 0
	}
	return pidfd, pid
}

// Delete implements runtime.PodSandbox: the holder's cgroup goes once its
// process has (a SIGKILLed process leaves its cgroup a moment later), with
// anything that escaped into it.
func (h *Holder) Delete(ctx context.Context) error {
	h.mu.Lock()
	cg := h.cgroup
	if h.pidfd >= 0 {
		// Delete comes after the holder's exit (the pod's stop waits for
		// it), or after a failed start killed it: nothing to signal any
		// more.
		_ = unix.Close(h.pidfd)
		h.pidfd = -1
	}
	h.mu.Unlock()
	if cg == "" && h.pod.CgroupParent != "" && !strings.HasSuffix(h.pod.CgroupParent, ".slice") {
		cg = strings.TrimSuffix(h.pod.CgroupParent, "/") + "/" + h.pod.ID
	}
	if cg != "" && !strings.Contains(cg, ":") {
		// A systemd scope ("slice:prefix:name") goes with its process.
		if err := cgroup.RemoveOrphan("/" + strings.TrimPrefix(cg, "/")); err != nil {
			return fmt.Errorf("remove sandbox cgroup %s: %w", cg, err)
		}
	}
	_ = os.Remove(holderPidFile(h.pod.Bundle)) // gone with the bundle anyway
	return nil
}

// startTime is the process's start time in clock ticks since boot
// (/proc/<pid>/stat field 22).
func startTime(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may contain spaces; fields start after its ")".
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}
