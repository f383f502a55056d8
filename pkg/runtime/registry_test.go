package runtime_test

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/runc"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/runsc"
)

// The registry is the whole of what the shim knows about backends: their
// names, their configuration tables, and how to build one.
func TestRegistryWiresBackendsIntoTheSchema(t *testing.T) {
	t.Setenv(oci.ConfigEnv, "")
	reg := runtime.NewRegistry(runc.Registration(), runsc.Registration())
	if got := strings.Join(reg.Names(), ","); got != "runc,runsc" {
		t.Fatalf("names %s", got)
	}
	cfg, err := reg.Schema().ParseConfig([]byte("backend = \"runsc\"\n[runsc]\nplatform = \"ptrace\"\n[runc]\nbinary_name = \"crun\"\n"), "h.toml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Section().(*runsc.Config).Platform != "ptrace" || cfg.Sections["runc"].(*runc.Config).BinaryName != "crun" {
		t.Fatalf("%+v", cfg.Sections)
	}
	if _, err := reg.Schema().ParseConfig([]byte("[runsc]\nplatfrom = \"ptrace\"\n"), "h.toml"); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "runsc.platfrom") || !strings.Contains(err.Error(), "line 2") { //nolint:misspell // deliberate typo: the test feeds an unknown key
		t.Fatalf("unknown key in a backend's table: %v", err)
	}
	cfg.Backend = "kata"
	if _, err := reg.New(cfg, &runtime.Container{}); !errdefs.IsNotImplemented(err) {
		t.Fatalf("unknown backend: %v", err)
	}
}

func TestRegistryFeatures(t *testing.T) {
	want := &features.Features{OCIVersionMax: "1.2.0"}
	reg := runtime.NewRegistry(runtime.Registration{
		Name:     "b",
		Settings: func() oci.Section { return &runc.Config{BinaryName: "x", Root: "/r"} },
		Features: func(context.Context, oci.Section) (*features.Features, error) { return want, nil },
	}, runtime.Registration{
		Name:     "quiet",
		Settings: func() oci.Section { return &runc.Config{BinaryName: "y", Root: "/r"} },
	})
	cfg := reg.Schema().DefaultConfig()
	if f, err := reg.Features(context.Background(), cfg); err != nil || f != want {
		t.Fatalf("%v %v", f, err)
	}
	cfg.Backend = "quiet"
	if f, err := reg.Features(context.Background(), cfg); err != nil || f != nil {
		t.Fatalf("a backend without features says nothing: %v %v", f, err)
	}
}

// TestRegistryRefusesCgroupDriverMismatch: kubelet's cgroup driver and the
// handler's must agree. A cgroupfs path on a systemd handler (or a slice on
// a cgroupfs one) is refused before the backend sees it, with
// InvalidArgument naming the path and the driver, for containers and for
// sandboxed Pods alike.
func TestRegistryRefusesCgroupDriverMismatch(t *testing.T) {
	built := 0
	reg := runtime.NewRegistry(runtime.Registration{
		Name:     "b",
		Settings: func() oci.Section { return &runc.Config{BinaryName: "runc", Root: "/r", Mode: runc.ModeInProcess} },
		New: func(oci.Section, *runtime.Container) (runtime.Backend, error) {
			built++
			return nil, nil
		},
		NewPod: func(oci.Section, *runtime.Pod) (runtime.PodSandbox, error) {
			built++
			return nil, nil
		},
	})
	const (
		slicePath  = "kubepods-besteffort-pod1.slice:cri-containerd:c1"
		cgfsPath   = "/kubepods/besteffort/pod1/c1"
		sliceParnt = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice"
		cgfsParent = "/kubepods/besteffort/pod1"
	)
	cases := []struct {
		name          string
		systemd       bool
		path, parent  string
		wantRefusal   bool
		wantInMessage string
	}{
		{"systemd handler, slice path", true, slicePath, "", false, ""},
		{"systemd handler, cgroupfs path", true, cgfsPath, "", true, "systemd"},
		{"cgroupfs handler, cgroupfs path", false, cgfsPath, "", false, ""},
		{"cgroupfs handler, slice path", false, slicePath, "", true, "cgroupfs"},
		{"no cgroup asked for", true, "", "", false, ""},
		{"systemd handler, slice parent", true, "", sliceParnt, false, ""},
		{"systemd handler, cgroupfs parent", true, "", cgfsParent, true, "systemd"},
		{"cgroupfs handler, slice parent", false, "", sliceParnt, true, "cgroupfs"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := reg.Schema().DefaultConfig()
			cfg.Section().(*runc.Config).SystemdCgroup = tc.systemd
			before := built
			var err error
			what := tc.path
			if tc.parent != "" {
				what = tc.parent
				_, err = reg.NewPod(cfg, &runtime.Pod{ID: "pod1", CgroupParent: tc.parent})
			} else {
				_, err = reg.New(cfg, &runtime.Container{ID: "c1", Spec: &specs.Spec{Linux: &specs.Linux{CgroupsPath: tc.path}}})
			}
			if !tc.wantRefusal {
				if err != nil || built != before+1 {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), what) || !strings.Contains(err.Error(), tc.wantInMessage) {
				t.Fatalf("got %v, want InvalidArgument naming %q and the %s driver", err, what, tc.wantInMessage)
			}
			if built != before {
				t.Fatalf("the backend was built for a refused path")
			}
		})
	}
}
