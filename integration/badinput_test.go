package integration

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestBadInput: every bad input gets an error of the right kind whose text
// names the file and field, and leaves nothing behind: no shim, no socket,
// no mount, no runc state.
func TestBadInput(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		dir := t.TempDir()
		badTOML := filepath.Join(dir, "bad.toml")
		check(t, os.WriteFile(badTOML, []byte("backend = \n"), 0o644))

		withRawSpec := func(raw string) client.NewContainerOpts {
			return func(ctx context.Context, _ *client.Client, c *containers.Container) error {
				s, err := typeurl.MarshalAny(&oci.Spec{})
				if err != nil {
					return err
				}
				c.Spec = &anypb.Any{TypeUrl: s.GetTypeUrl(), Value: []byte(raw)}
				return nil
			}
		}
		cases := []struct {
			name string
			opts func(id string) []client.NewContainerOpts
			// wants are substrings of the error; kind is its errdefs kind.
			wants []string
			kind  func(error) bool
		}{
			{
				name: "config.json schema error",
				opts: func(id string) []client.NewContainerOpts {
					return []client.NewContainerOpts{withRawSpec(`{"ociVersion": "1.2.0", "process": {"args": "sh"}, "root": {"path": "rootfs"}}`), client.WithRuntime(runtimeName, nil)}
				},
				wants: []string{"config.json", `field "process.args"`},
				kind:  func(error) bool { return true },
			},
			{
				name: "missing rootfs",
				opts: func(id string) []client.NewContainerOpts {
					return []client.NewContainerOpts{
						client.WithNewSpec(oci.WithDefaultSpec(), oci.WithRootFSPath("/nonexistent-rootfs"), oci.WithProcessArgs("true")),
						client.WithRuntime(runtimeName, nil),
					}
				},
				wants: []string{"config.json", `field "root.path"`, "/nonexistent-rootfs"},
				kind:  errdefs.IsInvalidArgument,
			},
			{
				name: "bad TOML in ConfigPath",
				opts: func(id string) []client.NewContainerOpts {
					return e.busybox(id, &runtimeoptions.Options{ConfigPath: badTOML})
				},
				wants: []string{badTOML, "line 1"},
				kind:  errdefs.IsInvalidArgument,
			},
			{
				name: "missing ConfigPath",
				opts: func(id string) []client.NewContainerOpts {
					return e.busybox(id, &runtimeoptions.Options{ConfigPath: "/nonexistent/shim.toml"})
				},
				wants: []string{"/nonexistent/shim.toml"},
				kind:  errdefs.IsNotFound,
			},
			{
				name: "unknown option key",
				opts: func(id string) []client.NewContainerOpts {
					return e.busybox(id, &runtimeoptions.Options{ConfigBody: []byte("backend = \"runc\"\nbinary = \"runc\"\n")})
				},
				wants: []string{"ConfigBody", `unknown option key "binary"`},
				kind:  errdefs.IsInvalidArgument,
			},
			{
				name: "unknown backend",
				opts: func(id string) []client.NewContainerOpts {
					return e.busybox(id, &runtimeoptions.Options{ConfigBody: []byte("backend = \"firecracker\"\n")})
				},
				wants: []string{`field "backend"`, "firecracker"},
				kind:  errdefs.IsInvalidArgument,
			},
			{
				name: "runtime binary missing",
				opts: func(id string) []client.NewContainerOpts {
					return e.busybox(id, &runtimeoptions.Options{ConfigBody: []byte("[runc]\nbinary_name = \"/nonexistent/runc\"\n")})
				},
				wants: []string{`field "runc.binary_name"`, "/nonexistent/runc"},
				kind:  errdefs.IsFailedPrecondition,
			},
			{
				name: "wrong options type",
				opts: func(id string) []client.NewContainerOpts {
					return e.busybox(id, &runtimeoptions.Options{TypeUrl: "x"}, withOptionsAny(&runcoptions.CheckpointOptions{}))
				},
				wants: []string{"unsupported runtime options type"},
				kind:  errdefs.IsInvalidArgument,
			},
			{
				name: "backend annotation not allowed",
				opts: func(id string) []client.NewContainerOpts {
					other := map[string]string{"runc": "runsc", "runsc": "runc"}[e.backend]
					return e.busybox(id, nil, withAnnotation("io.containerd.custom.v2.backend", other))
				},
				wants: []string{"io.containerd.custom.v2.backend", "allow_backend_annotation"},
				kind:  errdefs.IsInvalidArgument,
			},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				ctx := testContext(t)
				id := containerID(t, "")
				c, err := e.client.NewContainer(ctx, id, tc.opts(id)...)
				if err != nil {
					t.Fatalf("new container: %v", err)
				}
				t.Cleanup(func() { removeContainer(e, id) })
				_, err = c.NewTask(ctx, cio.NullIO)
				if err == nil {
					t.Fatal("task created from bad input")
				}
				for _, w := range tc.wants {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
				if !tc.kind(err) {
					t.Errorf("error %v has the wrong kind", err)
				}
				t.Logf("error: %v", err)
				assertNothingLeft(t, e, id)
				eventually(t, 30*time.Second, "no socket left", func() error {
					if _, err := os.Stat(shimSocket(e, id)); err == nil {
						return fmt.Errorf("shim socket %s left", shimSocket(e, id))
					}
					return nil
				})
			})
		}
	})
}

// busybox returns container options for a busybox container on our
// runtime with the given runtime options.
func (e *env) busybox(id string, runtimeOpts any, extra ...client.NewContainerOpts) []client.NewContainerOpts {
	opts := []client.NewContainerOpts{
		client.WithNewSnapshot(id+"-snapshot", e.image),
		client.WithNewSpec(oci.WithImageConfig(e.image), oci.WithProcessArgs("true")),
		client.WithRuntime(runtimeName, runtimeOpts),
	}
	return append(opts, extra...)
}

// withOptionsAny replaces the runtime options with any proto message.
func withOptionsAny(v any) client.NewContainerOpts {
	return func(ctx context.Context, _ *client.Client, c *containers.Container) error {
		a, err := typeurl.MarshalAny(v)
		if err != nil {
			return err
		}
		c.Runtime.Options = a
		return nil
	}
}

func withAnnotation(k, v string) client.NewContainerOpts {
	return func(ctx context.Context, cl *client.Client, c *containers.Container) error {
		var s oci.Spec
		if err := typeurl.UnmarshalTo(c.Spec, &s); err != nil {
			return err
		}
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[k] = v
		a, err := typeurl.MarshalAny(&s)
		if err != nil {
			return err
		}
		c.Spec = a
		return nil
	}
}

// shimSocket is where the shim of a container (its own group) listens:
// containerd's socket directory, named by sha256(grpc address/ns/group).
func shimSocket(e *env, group string) string {
	sum := sha256.Sum256([]byte(e.d.Address() + "/" + namespace + "/" + group))
	return fmt.Sprintf("/run/containerd/s/%x", sum)
}

// TestBadRequests: RPCs in the wrong state or for unknown processes fail
// with the kind containerd's clients act on.
func TestBadRequests(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := testContext(t)
		id := containerID(t, "")
		c := newContainer(t, e, id, nil, oci.WithProcessArgs("sleep", "1000"))
		task, _ := startTask(t, c, nil)
		wantKind(t, "start twice", task.Start(ctx), errdefs.IsFailedPrecondition, "FailedPrecondition")
		_, err := task.Delete(ctx)
		wantKind(t, "delete while running", err, errdefs.IsFailedPrecondition, "FailedPrecondition")
		err = task.Resume(ctx)
		wantKind(t, "resume while running", err, errdefs.IsFailedPrecondition, "FailedPrecondition")
		_, err = task.LoadProcess(ctx, "no-such-exec", nil)
		wantKind(t, "unknown exec id", err, errdefs.IsNotFound, "NotFound")
		err = task.Resize(ctx, 10, 10)
		wantKind(t, "resize without a terminal", err, errdefs.IsFailedPrecondition, "FailedPrecondition")
		if err := task.Kill(ctx, 9); err != nil {
			t.Fatal(err)
		}
	})
}

// TestStartWithMalformedSpec: a bundle whose config.json is not JSON (the
// Go client refuses to send one, so the shim is called as containerd calls
// it) fails "start" with the file and offset named, and starts nothing.
func TestStartWithMalformedSpec(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		bundle := t.TempDir()
		check(t, os.WriteFile(filepath.Join(bundle, "config.json"), []byte(`{"ociVersion": "1.2.0", "process": {`), 0o644))
		id := containerID(t, "")
		cmd := exec.Command(filepath.Join(shimDir, shimName), "-namespace", namespace, "-id", id, "-address", e.d.Address(), "start")
		cmd.Dir = bundle
		cmd.Env = append(os.Environ(), "TTRPC_ADDRESS="+e.d.Address()+".ttrpc", "MAX_SHIM_VERSION=2")
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("start succeeded: %s", out)
		}
		for _, w := range []string{filepath.Join(bundle, "config.json"), "invalid JSON at offset"} {
			if !strings.Contains(string(out), w) {
				t.Errorf("output %q does not say %q", out, w)
			}
		}
		if _, err := os.Stat(shimSocket(e, id)); err == nil {
			t.Errorf("a failed start left its socket %s", shimSocket(e, id))
		}
		if ps := shimsFor(id); len(ps) > 0 {
			t.Errorf("shim started: %+v", ps)
		}
	})
}
