package shim

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/containerdversion/versiontest"
)

// The shim asks containerd's version with net/http's h2c (it links no
// gRPC); containerd's server is grpc-go.
func TestDaemonMajorAgainstGRPCServer(t *testing.T) {
	for version, want := range map[string]int{"v1.7.36": 1, "1.7.36-k3s1": 1, "v2.2.9": 2, "2.4.2+unknown": 2} {
		sock := versiontest.Serve(t, version)
		if got := daemonMajor(context.Background(), "unix://"+sock); got != want {
			t.Errorf("containerd %s: major %d, want %d", version, got, want)
		}
	}
	// An error status (trailers-only reply), no server, no address: 0.
	if got := daemonMajor(context.Background(), versiontest.Serve(t, "")); got != 0 {
		t.Errorf("error status: major %d, want 0", got)
	}
	if got := daemonMajor(context.Background(), filepath.Join(t.TempDir(), "none.sock")); got != 0 {
		t.Errorf("no server: major %d, want 0", got)
	}
	if got := daemonMajor(context.Background(), ""); got != 0 {
		t.Errorf("no address: major %d, want 0", got)
	}
}
