package runc

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// An exec whose start fails after its process ran (here the pid file
// cannot be written) leaves no process behind: the task layer gets no pid
// and would never know it.
func TestLibcontainerFailedExecLeavesNoProcess(t *testing.T) {
	be, _ := runningContainer(t, "execfail")
	ctx := context.Background()
	before, err := be.Pids(ctx, "execfail")
	if err != nil {
		t.Fatal(err)
	}
	_, err = be.Exec(ctx, "execfail", &runtime.ExecConfig{
		ID:      "e",
		Spec:    &specs.Process{Args: []string{"sleep", "100"}, Cwd: "/", Env: []string{"PATH=/bin"}},
		PidFile: filepath.Join(t.TempDir(), "missing", "e.pid"),
	})
	if err == nil {
		t.Fatal("exec succeeded although its pid file could not be written")
	}
	t.Logf("exec: %v", err)
	after, err := be.Pids(ctx, "execfail")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(after, before) {
		t.Fatalf("processes of the container after a failed exec: %v, before it: %v", after, before)
	}
}
