package install

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/containerdversion"
)

// Containerd is the node's containerd as the installer Pod reaches it.
type Containerd struct {
	// Socket is containerd's gRPC socket, through the host mount
	// (/host/run/containerd/containerd.sock).
	Socket string
	// Restart is the command that restarts it: on a systemd host,
	// `nsenter -t 1 -m -- systemctl restart containerd` from a Pod with
	// hostPID. Empty: the installer never restarts containerd.
	Restart []string
}

// Version asks the running containerd its version.
func (c Containerd) Version(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, err := containerdversion.Ask(ctx, c.Socket)
	if err != nil {
		return "", fmt.Errorf("containerd at %s: %w", c.Socket, err)
	}
	return v, nil
}

// RestartAndWait runs the restart command, then waits until containerd
// answers again (at most timeout).
func (c Containerd) RestartAndWait(ctx context.Context, timeout time.Duration) error {
	if len(c.Restart) == 0 {
		return fmt.Errorf("restart containerd: no restart command")
	}
	out, err := exec.CommandContext(ctx, c.Restart[0], c.Restart[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("restart containerd (%s): %w: %s", strings.Join(c.Restart, " "), err, strings.TrimSpace(string(out)))
	}
	return c.Wait(ctx, timeout)
}

// Wait waits until containerd answers (at most timeout).
func (c Containerd) Wait(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := c.Version(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd did not answer within %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
