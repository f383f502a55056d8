package runsc

import (
	"context"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// A sandbox whose sentry no longer answers (google/gvisor#14408: "runsc
// kill" and "runsc debug" hang, and only a SIGKILL of the sandbox process
// recovers) must not keep its Pod forever: kubelet's StopPodSandbox kills
// each container, then the sandbox, and would fail on every retry. So a
// SIGKILL that runsc cannot deliver within killTimeout ends the sandbox
// process on the host, and every container of the Pod dies with it (none
// of them could be reached anyway).
const killTimeout = 10 * time.Second

// sandboxKey names the sandbox process in Backend.sandbox.
const sandboxKey = "sandbox"

// holdSandbox keeps a pidfd of the sandbox process, pid as runsc create
// reported it (for a sub-container too: its pid is the sandbox's). The
// caller holds the reaper off. Without it a wedged sandbox cannot be
// ended from here, which is no reason to fail the create.
func (b *Backend) holdSandbox(ctx context.Context, pid int) {
	if err := b.sandboxProc.Add(sandboxKey, pid); err != nil {
		log.G(ctx).WithError(err).Debug("hold the sandbox process")
		return
	}
	b.mu.Lock()
	b.sandboxPid = pid
	b.mu.Unlock()
}

// sandboxRunning reports whether the sandbox process this backend holds
// still runs (false when it holds none).
func (b *Backend) sandboxRunning() bool {
	b.mu.Lock()
	pid := b.sandboxPid
	b.mu.Unlock()
	return pid != 0 && b.sandboxProc.Running(sandboxKey, pid)
}

// killSandboxOnHost SIGKILLs the sandbox process through its pidfd, saying
// why; false when this backend holds none or it has gone already.
func (b *Backend) killSandboxOnHost(ctx context.Context, id string, why error) bool {
	b.mu.Lock()
	pid := b.sandboxPid
	b.mu.Unlock()
	if pid == 0 || b.sandboxProc.Signal(sandboxKey, pid, unix.SIGKILL) != nil {
		return false
	}
	log.G(ctx).WithError(why).WithField("id", id).WithField("sandbox_pid", pid).
		Warn("gVisor sandbox killed on the host: runsc could not deliver SIGKILL; every container of the sandbox ends with it")
	return true
}
