package shim

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/protobuf/proto"

	"github.com/custom-runtime/containerd-shim-custom-v2/internal/testdeps"
)

// A start that fails after the server process is running kills the server
// and removes its socket. Regression test for the server being waited for
// twice on that path (the reaping goroutine and the cleanup both called
// cmd.Wait): a data race that the race detector reports (go test -race).
// The server here is this test binary, which exits at once on the shim's
// flags; the failure is joining a shim cgroup that does not exist.
func TestStartFailureAfterServerStarted(t *testing.T) {
	testdeps.RequireRoot(t, "the shim cgroup is loaded from the host's hierarchy")
	// Unix socket paths are short: the socket's name alone is 64 hex digits.
	socketDir, err := os.MkdirTemp("", "sock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(socketDir) })
	bundleDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(bundleDir, "config.json"), []byte(`{"ociVersion":"1.2.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(bundleDir)

	f := &flags{namespace: "test-ns", id: "start-failure", address: "/run/containerd-test/containerd.sock"}
	stdin := marshal(t, &bootapi.BootstrapParams{
		InstanceID: f.id, Namespace: f.namespace, SocketDir: proto.String(socketDir),
		LogLevel:   bootapi.LogLevel_LOG_LEVEL_INFO,
		Extensions: []*bootapi.Extension{{Value: anyOf(t, &runcoptions.Options{ShimCgroup: "/containerd-shim-custom-test-no-such-cgroup"})}},
	})
	var stdout bytes.Buffer
	ctx := namespaces.WithNamespace(t.Context(), f.namespace)
	err = runStart(ctx, f, bytes.NewReader(stdin), &stdout)
	if err == nil || !strings.Contains(err.Error(), "shim cgroup") {
		t.Fatalf("runStart = %v, want the shim cgroup error", err)
	}
	if stdout.Len() != 0 {
		t.Errorf("a failed start answered containerd: %q", stdout.String())
	}
	entries, err := os.ReadDir(socketDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("socket left behind: %s", e.Name())
	}
	if _, err := os.Stat(filepath.Join(bundleDir, "address")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("address file written by a failed start: %v", err)
	}
}
