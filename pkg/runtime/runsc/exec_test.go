package runsc

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// sandboxBundle makes a bundle whose rootfs is busybox, running args, for
// a real runsc (root, runsc and Debian's busybox-static needed).
func sandboxBundle(t *testing.T, args ...string) (bundle.Bundle, *specs.Spec) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := exec.LookPath("runsc"); err != nil {
		t.Skip("needs runsc")
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("needs busybox (busybox-static)")
	}
	b := bundle.Bundle(t.TempDir())
	bin := filepath.Join(b.Rootfs(), "bin")
	check(t, os.MkdirAll(bin, 0o755))
	data, err := os.ReadFile(busybox)
	check(t, err)
	check(t, os.WriteFile(filepath.Join(bin, "busybox"), data, 0o755))
	for _, l := range []string{"sh", "sleep"} {
		check(t, os.Symlink("busybox", filepath.Join(bin, l)))
	}
	spec := &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: b.Rootfs()},
		Process: &specs.Process{Args: args, Cwd: "/", Env: []string{"PATH=/bin"}},
		Mounts:  []specs.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.NetworkNamespace}},
		},
	}
	data, err = json.Marshal(spec)
	check(t, err)
	check(t, os.WriteFile(b.Spec(), data, 0o644))
	return b, spec
}

// An exec whose start fails after runsc started its process (here runsc
// cannot write the pid file; it wrote the internal one first) leaves no
// process in the sandbox: the task layer gets no pid and would never know
// it.
func TestFailedExecLeavesNoProcess(t *testing.T) {
	b, spec := sandboxBundle(t, "sleep", "100")
	cfg := defaults()
	cfg.Platform = "ptrace" // every runsc has it, Debian's 2022 one too
	cfg.Root = t.TempDir()
	be, err := newBackend(*cfg, "test", b, spec, "")
	check(t, err)
	ctx := context.Background()
	const id = "runsc-execfail"
	// The sandbox inherits the stdio runsc create gets: files, not pipes
	// whose reader would wait for the sandbox.
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	check(t, err)
	defer null.Close()
	cio := &runtime.IO{Stdin: null, Stdout: null, Stderr: null}
	if _, err := be.Create(ctx, &runtime.CreateConfig{ID: id, Bundle: b, PidFile: b.InitPidFile(), IO: cio}); err != nil {
		data, _ := os.ReadFile(be.log)
		t.Fatalf("%v; runsc log:\n%s", err, data)
	}
	t.Cleanup(func() {
		if err := be.Delete(context.Background(), id, true); err != nil {
			t.Errorf("delete: %v", err)
		}
	})
	check(t, be.Start(ctx, id, nil))
	before, err := be.Pids(ctx, id)
	check(t, err)

	_, err = be.Exec(ctx, id, &runtime.ExecConfig{
		ID:      "e",
		Spec:    &specs.Process{Args: []string{"sleep", "100"}, Cwd: "/", Env: []string{"PATH=/bin"}},
		PidFile: filepath.Join(t.TempDir(), "missing", "e.pid"),
	})
	if err == nil {
		t.Fatal("exec succeeded although its pid file could not be written")
	}
	t.Logf("exec: %v", err)
	after, err := be.Pids(ctx, id)
	check(t, err)
	if !slices.Equal(after, before) {
		t.Fatalf("processes in the sandbox after a failed exec: %v, before it: %v", after, before)
	}
}
