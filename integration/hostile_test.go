package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestHostileRequests sends the shim, over its own socket, requests that
// containerd would never send: each must fail with the right kind and a
// clear text, and leave the shim serving and the running task untouched.
func TestHostileRequests(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		id := containerID(t, "")
		c := newContainer(t, e, id, nil, oci.WithProcessArgs("sleep", "1000"))
		task, _ := startTask(t, c, nil)
		shims := shimsFor(id)
		if len(shims) != 1 {
			t.Fatalf("shims %+v", shims)
		}
		conn, err := net.Dial("unix", socketOf(shims[0]))
		if err != nil {
			t.Fatal(err)
		}
		tc := ttrpc.NewClient(conn)
		defer tc.Close()
		api := taskv3.NewTTRPCTaskClient(tc)
		ctx := namespaces.WithNamespace(context.Background(), namespace)

		junkAny := &anypb.Any{TypeUrl: "x", Value: []byte{0xff, 0x00, 0x13}}
		procSpec := func(p specs.Process) *anypb.Any {
			a, _ := typeurl.MarshalAnyToProto(&p)
			return a
		}
		badBundle := t.TempDir()
		check(t, os.WriteFile(filepath.Join(badBundle, "config.json"), []byte(`{"process": {"args": ["true"], "cwd": "/"}, "root": {"path": "rootfs"}}`), 0o644))
		hugeSpec := t.TempDir()
		big, err := json.Marshal(map[string]any{
			"process":     map[string]any{"args": []string{"true"}, "cwd": "/"},
			"root":        map[string]any{"path": "/"},
			"annotations": map[string]string{"big": strings.Repeat("a", 2<<20)},
		})
		check(t, err)
		check(t, os.WriteFile(filepath.Join(hugeSpec, "config.json"), big, 0o644))

		cases := []struct {
			name string
			call func() error
			kind func(error) bool
			text string
		}{
			{"create: task id with a path", func() error {
				_, err := api.Create(ctx, &taskv3.CreateTaskRequest{ID: "../../etc", Bundle: badBundle})
				return err
			}, errdefs.IsInvalidArgument, "task id"},
			{"create: relative bundle", func() error {
				_, err := api.Create(ctx, &taskv3.CreateTaskRequest{ID: id + "-x", Bundle: "relative/bundle"})
				return err
			}, errdefs.IsInvalidArgument, "not absolute"},
			{"create: bundle without config.json", func() error {
				_, err := api.Create(ctx, &taskv3.CreateTaskRequest{ID: id + "-x", Bundle: t.TempDir()})
				return err
			}, errdefs.IsNotFound, "config.json"},
			{"create: rootfs missing", func() error {
				_, err := api.Create(ctx, &taskv3.CreateTaskRequest{ID: id + "-x", Bundle: badBundle})
				return err
			}, errdefs.IsInvalidArgument, `field "root.path"`},
			{"create: huge annotations", func() error {
				_, err := api.Create(ctx, &taskv3.CreateTaskRequest{ID: id + "-x", Bundle: hugeSpec})
				return err
			}, errdefs.IsInvalidArgument, `field "annotations"`},
			{"create: garbage options", func() error {
				_, err := api.Create(ctx, &taskv3.CreateTaskRequest{ID: id + "-x", Bundle: badBundle, Options: junkAny})
				return err
			}, errdefs.IsInvalidArgument, "unsupported runtime options type"},
			{"create: existing id", func() error {
				_, err := api.Create(ctx, &taskv3.CreateTaskRequest{ID: id, Bundle: badBundle})
				return err
			}, errdefs.IsAlreadyExists, id},
			{"exec: garbage spec", func() error {
				_, err := api.Exec(ctx, &taskv3.ExecProcessRequest{ID: id, ExecID: "junk", Spec: &anypb.Any{Value: []byte("{not json")}})
				return err
			}, errdefs.IsInvalidArgument, "process spec"},
			{"exec: no spec", func() error {
				_, err := api.Exec(ctx, &taskv3.ExecProcessRequest{ID: id, ExecID: "nospec"})
				return err
			}, errdefs.IsInvalidArgument, "no process spec"},
			{"exec: empty args", func() error {
				_, err := api.Exec(ctx, &taskv3.ExecProcessRequest{ID: id, ExecID: "noargs", Spec: procSpec(specs.Process{Cwd: "/"})})
				return err
			}, errdefs.IsInvalidArgument, `field "args"`},
			{"exec: id with a path", func() error {
				_, err := api.Exec(ctx, &taskv3.ExecProcessRequest{ID: id, ExecID: "../../pid", Spec: procSpec(specs.Process{Args: []string{"true"}, Cwd: "/"})})
				return err
			}, errdefs.IsInvalidArgument, "exec id"},
			{"start: unknown exec", func() error {
				_, err := api.Start(ctx, &taskv3.StartRequest{ID: id, ExecID: "nope"})
				return err
			}, errdefs.IsNotFound, "nope"},
			{"kill: all on an exec", func() error {
				if _, err := api.Exec(ctx, &taskv3.ExecProcessRequest{ID: id, ExecID: "e1", Spec: procSpec(specs.Process{Args: []string{"sleep", "100"}, Cwd: "/"})}); err != nil {
					return fmt.Errorf("exec e1: %w", err)
				}
				_, err := api.Kill(ctx, &taskv3.KillRequest{ID: id, ExecID: "e1", Signal: 9, All: true})
				return err
			}, errdefs.IsInvalidArgument, "all"},
			{"kill: unstarted exec", func() error {
				_, err := api.Kill(ctx, &taskv3.KillRequest{ID: id, ExecID: "e1", Signal: 9})
				return err
			}, errdefs.IsFailedPrecondition, "not started"},
			{"update: garbage resources", func() error {
				_, err := api.Update(ctx, &taskv3.UpdateTaskRequest{ID: id, Resources: &anypb.Any{Value: []byte("[1,2")}})
				return err
			}, errdefs.IsInvalidArgument, "resources"},
			{"update: no resources", func() error {
				_, err := api.Update(ctx, &taskv3.UpdateTaskRequest{ID: id})
				return err
			}, errdefs.IsInvalidArgument, "no resources"},
			{"checkpoint: wrong options type", func() error {
				_, err := api.Checkpoint(ctx, &taskv3.CheckpointTaskRequest{ID: id, Path: t.TempDir(), Options: junkAny})
				return err
			}, errdefs.IsInvalidArgument, "options"},
			{"resize: no terminal", func() error {
				_, err := api.ResizePty(ctx, &taskv3.ResizePtyRequest{ID: id, Width: 80, Height: 24})
				return err
			}, errdefs.IsFailedPrecondition, "no terminal"},
			{"delete: running task", func() error {
				_, err := api.Delete(ctx, &taskv3.DeleteRequest{ID: id})
				return err
			}, errdefs.IsFailedPrecondition, "running"},
			{"state: unknown task", func() error {
				_, err := api.State(ctx, &taskv3.StateRequest{ID: "no-such-task"})
				return err
			}, errdefs.IsNotFound, "no-such-task"},
			{"stats: unknown task", func() error {
				_, err := api.Stats(ctx, &taskv3.StatsRequest{ID: "no-such-task"})
				return err
			}, errdefs.IsNotFound, "no-such-task"},
			{"pause: unknown task", func() error {
				_, err := api.Pause(ctx, &taskv3.PauseRequest{ID: "no-such-task"})
				return err
			}, errdefs.IsNotFound, "no-such-task"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				err := errgrpc.ToNative(tc.call())
				if err == nil || !tc.kind(err) || !strings.Contains(err.Error(), tc.text) {
					t.Fatalf("got %v; want an error of the right kind saying %q", err, tc.text)
				}
			})
		}
		// The shim still serves, the task still runs, and the failed creates
		// left nothing.
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		st, err := api.State(sctx, &taskv3.StateRequest{ID: id})
		if err != nil || st.Status.String() != "RUNNING" || st.Pid != task.Pid() {
			t.Fatalf("task after hostile requests: %v %v", st, err)
		}
		if _, err := os.Stat(filepath.Join(e.stateRoot(), namespace, id+"-x")); !os.IsNotExist(err) {
			t.Fatalf("state left for a failed create: %v", err)
		}
		report(t, "hostile-requests "+e.name()+" "+itoa(len(cases))+" classes rejected")
	})
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
