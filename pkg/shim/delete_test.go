package shim

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"google.golang.org/protobuf/proto"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

type deleteSettings struct{}

func (*deleteSettings) Validate() error                       { return nil }
func (*deleteSettings) Binary() string                        { return "" }
func (*deleteSettings) ClaimsBinary(string) bool              { return false }
func (*deleteSettings) ApplyRuncOptions(*runcoptions.Options) {}

// deleteRecorder is a backend that only records force deletes.
type deleteRecorder struct {
	runtime.Backend
	mu      sync.Mutex
	deleted []string
}

func (d *deleteRecorder) Delete(ctx context.Context, id string, force bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if force {
		d.deleted = append(d.deleted, id)
	}
	return nil
}

// "delete" cleans up after a dead shim and reports the init's exit: the
// one the shim recorded, else 137 with the pid the runtime wrote.
func TestDeleteMode(t *testing.T) {
	t.Setenv("CONTAINERD_SHIM_CUSTOM_METRICS_DIR", t.TempDir())
	rec := &deleteRecorder{}
	reg := runtime.NewRegistry(runtime.Registration{
		Name:     "fake",
		Settings: func() oci.Section { return &deleteSettings{} },
		New:      func(oci.Section, *runtime.Container) (runtime.Backend, error) { return rec, nil },
	})
	at := time.Unix(1700000000, 0).UTC()
	cases := []struct {
		name        string
		prepare     func(t *testing.T, b bundle.Bundle)
		wantPid     uint32
		wantStatus  uint32
		wantDeleted bool
	}{
		{"recorded exit", func(t *testing.T, b bundle.Bundle) {
			check(t, oci.WriteConfigFile(b, reg.Schema().DefaultConfig()))
			check(t, b.WriteExit(bundle.Exit{Pid: 42, Status: 3, Timestamp: at}))
		}, 42, 3, true},
		{"no recorded exit", func(t *testing.T, b bundle.Bundle) {
			check(t, oci.WriteConfigFile(b, reg.Schema().DefaultConfig()))
			check(t, os.WriteFile(b.InitPidFile(), []byte("77"), 0o600))
		}, 77, 137, true},
		{"create never reached the backend", func(t *testing.T, b bundle.Bundle) {}, 0, 137, false},
		{"unreadable shim config falls back to defaults", func(t *testing.T, b bundle.Bundle) {
			check(t, os.WriteFile(b.ShimConfig(), []byte("{"), 0o600))
		}, 0, 137, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec.deleted = nil
			b := bundle.Bundle(t.TempDir())
			check(t, os.Mkdir(b.Rootfs(), 0o755))
			check(t, os.WriteFile(b.Spec(), []byte(`{"process":{"args":["sh"]},"root":{"path":"rootfs"}}`), 0o600))
			check(t, os.WriteFile(b.BootstrapFile(), []byte(`{"address":"unix://`+filepath.Join(t.TempDir(), "dead.sock")+`"}`), 0o600))
			tc.prepare(t, b)
			var out bytes.Buffer
			if err := runDelete(context.Background(), &flags{namespace: "ns", id: "c1", bundle: b.Path()}, reg, &out); err != nil {
				t.Fatal(err)
			}
			var resp taskAPI.DeleteResponse
			if err := proto.Unmarshal(out.Bytes(), &resp); err != nil {
				t.Fatal(err)
			}
			if resp.Pid != tc.wantPid || resp.ExitStatus != tc.wantStatus {
				t.Fatalf("pid %d status %d, want %d %d", resp.Pid, resp.ExitStatus, tc.wantPid, tc.wantStatus)
			}
			if tc.wantStatus == 3 && !resp.ExitedAt.AsTime().Equal(at) {
				t.Fatalf("exited at %v, want %v", resp.ExitedAt.AsTime(), at)
			}
			if got := len(rec.deleted) == 1 && rec.deleted[0] == "c1"; got != tc.wantDeleted {
				t.Fatalf("force deletes %v, want one of c1: %v", rec.deleted, tc.wantDeleted)
			}
		})
	}
}

// check fails the test on a setup step's error.
func check(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
