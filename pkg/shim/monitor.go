package shim

import (
	"os/exec"

	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	gorunc "github.com/containerd/go-runc"
)

// releasingMonitor is the reaper's monitor that also lets go of each
// process's handle once the reaper has collected it. Go holds a pidfd per
// os.Process until Wait or Release; the reaper's wait4(-1) is neither, so
// without this a long-lived (grouped) shim keeps one descriptor per past
// runc call until the garbage collector happens to run.
type releasingMonitor struct {
	*reaper.Monitor
}

func (m releasingMonitor) Wait(c *exec.Cmd, ec chan gorunc.Exit) (int, error) {
	status, err := m.Monitor.Wait(c, ec)
	if c.Process != nil {
		_ = c.Process.Release() // never fails on unix
	}
	return status, err
}
