package runtime_test

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
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
