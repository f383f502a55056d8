package oci

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
)

// FuzzParseConfig: any TOML either parses into a valid configuration or
// fails as InvalidArgument naming the source; it never panics.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("backend = \"runsc\"\n[runsc]\nplatform = \"ptrace\"\nflags = { overlay2 = \"none\" }\n"))
	f.Add([]byte("[runc]\nbinary_name = \"crun\"\nroot = \"/r\"\n"))
	f.Add([]byte("backend = 1\n"))
	f.Add([]byte("[[runc]]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		sc := testSchema()
		c, err := sc.ParseConfig(data, "fuzz.toml")
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("error of the wrong kind: %v", err)
			}
			return
		}
		if err := c.validate(sc); err != nil {
			t.Fatalf("parsed config does not validate: %v", err)
		}
	})
}

// FuzzConfigFromOptions: arbitrary option bytes under each accepted type
// URL never panic and fail only with InvalidArgument or NotFound.
func FuzzConfigFromOptions(f *testing.F) {
	f.Add(uint8(0), []byte{0x0a, 0x03, 'a', 'b', 'c'})
	f.Add(uint8(1), []byte{0x1a, 0x05, 'x', '=', '1', 0x0a, 0x00})
	f.Add(uint8(2), []byte{})
	f.Fuzz(func(t *testing.T, kind uint8, value []byte) {
		urls := []string{"containerd.runc.v1.Options", "runtimeoptions.v1.Options", "example.com/Other"}
		a := &anypb.Any{TypeUrl: urls[int(kind)%len(urls)], Value: value}
		t.Setenv(ConfigEnv, filepath.Join(t.TempDir(), "none.toml"))
		_, err := testSchema().ConfigFromOptions(a)
		if err != nil && !errdefs.IsInvalidArgument(err) && !errdefs.IsNotFound(err) && !os.IsNotExist(err) {
			t.Fatalf("error of the wrong kind: %v", err)
		}
	})
}

// FuzzReadSpec: any config.json is decoded and validated without panics,
// and failures are InvalidArgument.
func FuzzReadSpec(f *testing.F) {
	f.Add([]byte(`{"process": {"args": ["sh"], "cwd": "/"}, "root": {"path": "rootfs"}}`))
	f.Add([]byte(`{"process": {"args": "sh"}}`))
	f.Add([]byte(`{"mounts": [{"destination": ""}], "annotations": {"io.kubernetes.cri.sandbox-id": "x"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := ReadSpec(bundle.Bundle(dir))
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("error of the wrong kind: %v", err)
			}
			return
		}
		_ = GroupID("id", s.Annotations)
		sc := testSchema()
		c := sc.DefaultConfig()
		c.AllowBackendAnnotation = true
		_ = sc.SelectBackend(c, s.Annotations)
		if err := ValidateSpec(bundle.Bundle(dir), s, true); err != nil && !errdefs.IsInvalidArgument(err) {
			t.Fatalf("error of the wrong kind: %v", err)
		}
	})
}
