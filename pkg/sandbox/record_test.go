package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// orderSection is a backend's settings with nothing to set.
type orderSection struct{}

func (orderSection) Validate() error                       { return nil }
func (orderSection) Binary() string                        { return "" }
func (orderSection) ClaimsBinary(string) bool              { return false }
func (orderSection) ApplyRuncOptions(*runcoptions.Options) {}

// orderPod records what CleanupDead asks of the Pod's sandbox.
type orderPod struct{ calls *[]string }

func (p orderPod) Start(context.Context) (int, error) { return 0, nil }
func (p orderPod) Stop(context.Context) error {
	*p.calls = append(*p.calls, "stop sandbox")
	return nil
}
func (p orderPod) Delete(context.Context) error {
	*p.calls = append(*p.calls, "delete sandbox")
	return nil
}
func (p orderPod) CgroupPath() string { return "" }

// TestCleanupDeadStopsTheSandboxFirst: a dead shim's delete stops the Pod's
// sandbox before it cleans the containers one by one. containerd kills
// the delete after 5 s: on gVisor the sandbox's SIGKILL ends every
// container at once, where a runsc delete per container could use up the
// time and leave the sandbox (and its systemd scope) running.
func TestCleanupDeadStopsTheSandboxFirst(t *testing.T) {
	var calls []string
	reg := runtime.NewRegistry(runtime.Registration{
		Name:     "fake",
		Settings: func() oci.Section { return orderSection{} },
		NewPod: func(oci.Section, *runtime.Pod) (runtime.PodSandbox, error) {
			return orderPod{calls: &calls}, nil
		},
	})
	dir := filepath.Join(t.TempDir(), "pod1")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b := bundle.Bundle(dir)
	if err := os.WriteFile(b.PodConfig(), []byte(`{"id":"pod1"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	RecordContainer(b, "a", filepath.Join(t.TempDir(), "a"))
	RecordContainer(b, "b", filepath.Join(t.TempDir(), "b"))
	if !CleanupDead(context.Background(), reg, "ns", b, func(id string, _ bundle.Bundle) {
		calls = append(calls, "clean "+id)
	}) {
		t.Fatal("CleanupDead did not take the pod sandbox's bundle")
	}
	want := []string{"stop sandbox", "clean a", "clean b", "delete sandbox"}
	if !slices.Equal(calls, want) {
		t.Errorf("CleanupDead did %q, want %q", calls, want)
	}
}
