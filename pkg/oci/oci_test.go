package oci

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
)

// Test sections shaped like the real backends' tables: this package
// decodes tables it does not know, so its tests bring their own.
type tRunc struct {
	BinaryName    string `toml:"binary_name" json:"binary_name"`
	Root          string `toml:"root" json:"root"`
	SystemdCgroup bool   `toml:"systemd_cgroup" json:"systemd_cgroup"`
}

func (c *tRunc) Validate() error {
	if c.BinaryName == "" {
		return fmt.Errorf("field \"runc.binary_name\": must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}
func (c *tRunc) Binary() string           { return c.BinaryName }
func (c *tRunc) ClaimsBinary(string) bool { return false }
func (c *tRunc) ApplyRuncOptions(ro *runcoptions.Options) {
	if ro.BinaryName != "" {
		c.BinaryName = ro.BinaryName
	}
	if ro.Root != "" {
		c.Root = ro.Root
	}
	c.SystemdCgroup = ro.SystemdCgroup
}

type tRunsc struct {
	BinaryName string            `toml:"binary_name" json:"binary_name"`
	Platform   string            `toml:"platform" json:"platform"`
	Flags      map[string]string `toml:"flags" json:"flags"`
}

func (c *tRunsc) Validate() error {
	if c.Platform != "systrap" && c.Platform != "ptrace" {
		return fmt.Errorf("field \"runsc.platform\": unknown platform %q: %w", c.Platform, errdefs.ErrInvalidArgument)
	}
	for k := range c.Flags {
		if strings.HasPrefix(k, "-") {
			return fmt.Errorf("field \"runsc.flags\": invalid flag name %q: %w", k, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}
func (c *tRunsc) Binary() string                { return c.BinaryName }
func (c *tRunsc) ClaimsBinary(name string) bool { return strings.Contains(name, "runsc") }
func (c *tRunsc) ApplyRuncOptions(ro *runcoptions.Options) {
	if ro.BinaryName != "" {
		c.BinaryName = ro.BinaryName
	}
}

func testSchema() *Schema {
	return NewSchema().
		Add("runc", func() Section { return &tRunc{BinaryName: "runc", Root: "/run/r"} }).
		Add("runsc", func() Section { return &tRunsc{BinaryName: "runsc", Platform: "systrap"} })
}

func runcOf(c *Config) *tRunc   { return c.Sections["runc"].(*tRunc) }
func runscOf(c *Config) *tRunsc { return c.Sections["runsc"].(*tRunsc) }

func anyOf(t *testing.T, v any) *anypb.Any {
	t.Helper()
	a, err := typeurl.MarshalAnyToProto(v)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestParseConfig(t *testing.T) {
	cases := []struct {
		name    string
		toml    string
		wantErr string // substring; "" means success
		check   func(*Config) bool
	}{
		{name: "empty is defaults", toml: "", check: func(c *Config) bool {
			return c.Backend == "runc" && runcOf(c).BinaryName == "runc" && runscOf(c).Platform == "systrap" && runcOf(c).Root == "/run/r"
		}},
		{name: "pods per shim", toml: "pods_per_shim = 10\n[runc]\nroot = \"/x\"\n", check: func(c *Config) bool {
			return c.PodsPerShim == 10 && runcOf(c).Root == "/x"
		}},
		{name: "pods per shim negative", toml: "pods_per_shim = -1\n", wantErr: `field "pods_per_shim": -1`},
		{name: "pods per shim too many", toml: "pods_per_shim = 65\n", wantErr: `field "pods_per_shim": 65`},
		{name: "pods per shim not a number", toml: "pods_per_shim = \"10\"\n", wantErr: "pods_per_shim"},
		{name: "runsc", toml: "backend = \"runsc\"\n[runsc]\nplatform = \"ptrace\"\nflags = { overlay2 = \"none\" }\n", check: func(c *Config) bool {
			return c.Backend == "runsc" && runscOf(c).Platform == "ptrace" && runscOf(c).Flags["overlay2"] == "none"
		}},
		{name: "crun through runc backend", toml: "[runc]\nbinary_name = \"crun\"\n", check: func(c *Config) bool {
			return c.Backend == "runc" && runcOf(c).BinaryName == "crun"
		}},
		{name: "CRI TypeUrl key tolerated", toml: "TypeUrl = \"x\"\nbackend = \"runc\"\n", check: func(c *Config) bool { return c.Backend == "runc" }},
		{name: "unknown key", toml: "backend = \"runc\"\nbinary = \"x\"\n", wantErr: `unknown option key "binary"`},
		{name: "unknown nested key", toml: "[runc]\nroott = \"/x\"\n", wantErr: `runc.roott`},
		{name: "bad syntax", toml: "backend = runc\n", wantErr: "line 1"},
		{name: "wrong type", toml: "backend = 3\n", wantErr: `line 1`},
		{name: "unknown backend", toml: "backend = \"kata\"\n", wantErr: `field "backend": unknown backend "kata" (want "runc" or "runsc")`},
		{name: "empty binary", toml: "[runc]\nbinary_name = \"\"\n", wantErr: `field "runc.binary_name"`},
		{name: "unknown platform", toml: "[runsc]\nplatform = \"xen\"\n", wantErr: `field "runsc.platform"`},
		{name: "too large", toml: "# " + strings.Repeat("x", maxConfigSize), wantErr: "more than the"},
		{name: "flag with dashes", toml: "[runsc.flags]\n\"--debug\" = \"true\"\n", wantErr: `field "runsc.flags"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := testSchema().ParseConfig([]byte(tc.toml), "test.toml")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "test.toml") {
					t.Fatalf("want error with %q naming the file, got %v", tc.wantErr, err)
				}
				if !errdefs.IsInvalidArgument(err) {
					t.Fatalf("want InvalidArgument, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(c) {
				t.Fatalf("unexpected config %+v", c)
			}
		})
	}
}

// TestConfigBodyRuncKeys: a CRI handler whose options table is written as
// containerd's docs write runc's (SystemdCgroup = true) reaches the shim as
// ConfigBody; the keys mean what they mean in containerd's runc options
// instead of failing RunPodSandbox with "unknown option key".
func TestConfigBodyRuncKeys(t *testing.T) {
	cases := []struct {
		name, body string
		check      func(*Config) bool
	}{
		{"SystemdCgroup alone", "SystemdCgroup = true\n", func(c *Config) bool {
			return c.Backend == "runc" && runcOf(c).SystemdCgroup
		}},
		{"runsc by BinaryName", "BinaryName = \"/usr/local/bin/runsc\"\nSystemdCgroup = true\n", func(c *Config) bool {
			return c.Backend == "runsc" && runscOf(c).BinaryName == "/usr/local/bin/runsc"
		}},
		{"with CRI's TypeUrl and a shim cgroup", "TypeUrl = \"x\"\nSystemdCgroup = true\nShimCgroup = \"/shim\"\nIoUid = 7\n", func(c *Config) bool {
			return runcOf(c).SystemdCgroup && c.ShimCgroup == "/shim" && c.IoUID == 7
		}},
		{"the table's backend stands", "backend = \"runc\"\nBinaryName = \"runsc\"\n", func(c *Config) bool {
			return c.Backend == "runc" && runcOf(c).BinaryName == "runsc"
		}},
		{"own key without runc keys", "[runc]\nsystemd_cgroup = true\n", func(c *Config) bool { return runcOf(c).SystemdCgroup }},
		{"runc keys go to the table's backend", "backend = \"runsc\"\nSystemdCgroup = true\nBinaryName = \"/opt/runsc\"\n", func(c *Config) bool {
			return c.Backend == "runsc" && runscOf(c).BinaryName == "/opt/runsc"
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := testSchema().ConfigFromOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte(tc.body)}))
			if err != nil {
				t.Fatalf("ConfigBody %q: %v", tc.body, err)
			}
			if !tc.check(c) {
				t.Fatalf("ConfigBody %q: backend %s, runc %+v, runsc %+v, shim cgroup %q", tc.body, c.Backend, runcOf(c), runscOf(c), c.ShimCgroup)
			}
		})
	}
	// A misspelt key is still refused.
	_, err := testSchema().ConfigFromOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte("SystemdCgroups = true\n")}))
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "SystemdCgroups") {
		t.Fatalf("misspelt key: %v, want InvalidArgument naming it", err)
	}
}

func TestConfigFromOptions(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(ConfigEnv, "")
	good := filepath.Join(dir, "good.toml")
	bad := filepath.Join(dir, "bad.toml")
	for path, body := range map[string]string{good: "backend = \"runsc\"\n", bad: "backend = \n"} {
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("nil options use built-in defaults", func(t *testing.T) {
		c, err := testSchema().ConfigFromOptions(nil)
		if err != nil || c.Backend != "runc" {
			t.Fatalf("%v %v", c, err)
		}
	})
	t.Run("nil options use the file named by the environment", func(t *testing.T) {
		t.Setenv(ConfigEnv, good)
		c, err := testSchema().ConfigFromOptions(nil)
		if err != nil || c.Backend != "runsc" || c.Source != good {
			t.Fatalf("%+v %v", c, err)
		}
	})
	t.Run("ConfigPath", func(t *testing.T) {
		c, err := testSchema().ConfigFromOptions(anyOf(t, &runtimeoptions.Options{ConfigPath: good}))
		if err != nil || c.Backend != "runsc" {
			t.Fatalf("%v %v", c, err)
		}
	})
	t.Run("ConfigPath missing", func(t *testing.T) {
		_, err := testSchema().ConfigFromOptions(anyOf(t, &runtimeoptions.Options{ConfigPath: filepath.Join(dir, "nope.toml")}))
		if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "nope.toml") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ConfigPath relative", func(t *testing.T) {
		_, err := testSchema().ConfigFromOptions(anyOf(t, &runtimeoptions.Options{ConfigPath: "shim.toml"}))
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "ConfigPath") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ConfigPath bad TOML names the file", func(t *testing.T) {
		_, err := testSchema().ConfigFromOptions(anyOf(t, &runtimeoptions.Options{ConfigPath: bad}))
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), bad) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ConfigBody", func(t *testing.T) {
		c, err := testSchema().ConfigFromOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte("[runc]\nbinary_name = \"crun\"\n")}))
		if err != nil || runcOf(c).BinaryName != "crun" {
			t.Fatalf("%v %v", c, err)
		}
	})
	t.Run("runc options", func(t *testing.T) {
		c, err := testSchema().ConfigFromOptions(anyOf(t, &runcoptions.Options{BinaryName: "/usr/bin/crun", Root: "/r", IoUid: 7, ShimCgroup: "/s"}))
		if err != nil || c.Backend != "runc" || runcOf(c).BinaryName != "/usr/bin/crun" || runcOf(c).Root != "/r" || c.IoUID != 7 || c.ShimCgroup != "/s" {
			t.Fatalf("%+v %v", c, err)
		}
	})
	t.Run("runc options without a binary keep the defaults file's backend", func(t *testing.T) {
		t.Setenv(ConfigEnv, good) // backend = "runsc"
		c, err := testSchema().ConfigFromOptions(anyOf(t, &runcoptions.Options{ShimCgroup: "/s"}))
		if err != nil || c.Backend != "runsc" || c.ShimCgroup != "/s" {
			t.Fatalf("%+v %v", c, err)
		}
		c, err = testSchema().ConfigFromOptions(anyOf(t, &runcoptions.Options{BinaryName: "runc"}))
		if err != nil || c.Backend != "runc" {
			t.Fatalf("a BinaryName picks the backend: %+v %v", c, err)
		}
	})
	t.Run("runc options naming runsc", func(t *testing.T) {
		c, err := testSchema().ConfigFromOptions(anyOf(t, &runcoptions.Options{BinaryName: "/usr/local/bin/runsc"}))
		if err != nil || c.Backend != "runsc" || runscOf(c).BinaryName != "/usr/local/bin/runsc" {
			t.Fatalf("%+v %v", c, err)
		}
	})
	t.Run("wrong options type", func(t *testing.T) {
		_, err := testSchema().ConfigFromOptions(anyOf(t, &runcoptions.CheckpointOptions{}))
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "unsupported runtime options type") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("garbage options", func(t *testing.T) {
		_, err := testSchema().ConfigFromOptions(&anypb.Any{TypeUrl: runcOptionsURL, Value: []byte{0xff, 0xff}})
		if !errdefs.IsInvalidArgument(err) {
			t.Fatalf("got %v", err)
		}
	})
}

func writeSpec(t *testing.T, dir, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReadAndValidateSpec(t *testing.T) {
	cases := []struct {
		name, json, wantErr string
		mkRootfs            bool
		kind                func(error) bool
	}{
		{"syntax", `{"ociVersion": "1.0.0",`, "invalid JSON at offset", false, errdefs.IsInvalidArgument},
		{"type", `{"process": {"args": "sh"}}`, `field "process.args"`, false, errdefs.IsInvalidArgument},
		{"no process", `{"root": {"path": "rootfs"}}`, `field "process": missing`, true, errdefs.IsInvalidArgument},
		{"empty args", `{"process": {"args": [], "cwd": "/"}, "root": {"path": "rootfs"}}`, `field "process.args"`, true, errdefs.IsInvalidArgument},
		{"relative cwd", `{"process": {"args": ["sh"], "cwd": "x"}, "root": {"path": "rootfs"}}`, `field "process.cwd"`, true, errdefs.IsInvalidArgument},
		{"no root", `{"process": {"args": ["sh"], "cwd": "/"}}`, `field "root.path"`, true, errdefs.IsInvalidArgument},
		{"missing rootfs", `{"process": {"args": ["sh"], "cwd": "/"}, "root": {"path": "rootfs"}}`, `rootfs`, false, errdefs.IsInvalidArgument},
		{"bad mount", `{"process": {"args": ["sh"], "cwd": "/"}, "root": {"path": "rootfs"}, "mounts": [{"destination": "proc"}]}`, `field "mounts[0].destination"`, true, errdefs.IsInvalidArgument},
		{"ok", `{"process": {"args": ["sh"], "cwd": "/"}, "root": {"path": "rootfs"}}`, "", true, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeSpec(t, dir, tc.json)
			if tc.mkRootfs {
				if err := os.Mkdir(filepath.Join(dir, "rootfs"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			s, err := ReadSpec(bundle.Bundle(dir))
			if err == nil {
				err = ValidateSpec(bundle.Bundle(dir), s, false)
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "config.json") || !tc.kind(err) {
				t.Fatalf("want %q naming config.json, got %v", tc.wantErr, err)
			}
		})
	}
	t.Run("missing config.json", func(t *testing.T) {
		if _, err := ReadSpec(bundle.Bundle(t.TempDir())); !errdefs.IsNotFound(err) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("huge annotations", func(t *testing.T) {
		s := &specs.Spec{Process: &specs.Process{Args: []string{"sh"}}, Root: &specs.Root{Path: "/"},
			Annotations: map[string]string{"big": strings.Repeat("x", maxAnnotationsLength+1)}}
		if err := ValidateSpec(bundle.Bundle(t.TempDir()), s, true); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("got %v", err)
		}
	})
}

func TestGroupAndBackendAnnotations(t *testing.T) {
	if g := GroupID("c1", nil); g != "c1" {
		t.Fatal(g)
	}
	if g := GroupID("c1", map[string]string{AnnotationSandboxID: "pod"}); g != "pod" {
		t.Fatal(g)
	}
	if g := GroupID("c1", map[string]string{AnnotationSandboxID: "pod", AnnotationGroup: "mine"}); g != "mine" {
		t.Fatal(g)
	}
	sc := testSchema()
	c := sc.DefaultConfig()
	if err := sc.SelectBackend(c, map[string]string{AnnotationBackend: "runsc"}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("annotation must be refused unless allowed: %v", err)
	}
	c.AllowBackendAnnotation = true
	if err := sc.SelectBackend(c, map[string]string{AnnotationBackend: "runsc"}); err != nil || c.Backend != "runsc" {
		t.Fatalf("%v %s", err, c.Backend)
	}
	if err := sc.SelectBackend(c, map[string]string{AnnotationBackend: "vm"}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("got %v", err)
	}
}

// TestLoadConfigFileRefusesWhatIsNotAFile: a ConfigPath naming a directory,
// fifo or device fails at once with its kind; none is read (a fifo would
// block, /dev/zero never ends).
func TestLoadConfigFileRefusesWhatIsNotAFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.toml")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.toml")
	if err := os.WriteFile(big, []byte("# "+strings.Repeat("x", maxConfigSize)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path, text string
		is         func(error) bool
	}{
		{dir, "not a regular file (d", errdefs.IsInvalidArgument},
		{fifo, "not a regular file (p", errdefs.IsInvalidArgument},
		{"/dev/zero", "not a regular file (Dc", errdefs.IsInvalidArgument},
		{big, "more than the 65536", errdefs.IsInvalidArgument},
		{filepath.Join(dir, "missing.toml"), "does not exist", errdefs.IsNotFound},
		{filepath.Join(plain, "x.toml"), "does not exist", errdefs.IsNotFound},
		{"/" + strings.Repeat("a", 5000), "file name too long", errdefs.IsInvalidArgument},
	} {
		_, err := testSchema().LoadConfigFile(tc.path)
		if err == nil || !tc.is(err) || !strings.Contains(err.Error(), tc.text) || !strings.Contains(err.Error(), tc.path[:min(len(tc.path), 40)]) {
			t.Errorf("%s: got %v, want %q of the right kind, naming the file", tc.path[:min(len(tc.path), 40)], err, tc.text)
		}
	}
}

// The configuration a bundle keeps for "delete" round-trips.
func TestConfigFileRoundTrip(t *testing.T) {
	sc := testSchema()
	c, err := sc.ParseConfig([]byte("backend = \"runsc\"\nruntime_handler = \"h\"\n[runsc]\nplatform = \"ptrace\"\n"), "x.toml")
	if err != nil {
		t.Fatal(err)
	}
	c.IoUID = 9
	b := bundle.Bundle(t.TempDir())
	if _, err := sc.ReadConfigFile(b); !errdefs.IsNotFound(err) {
		t.Fatalf("no file: got %v, want NotFound", err)
	}
	if err := WriteConfigFile(b, c); err != nil {
		t.Fatal(err)
	}
	got, err := sc.ReadConfigFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Backend != "runsc" || got.RuntimeHandler != "h" || got.IoUID != 9 || runscOf(got).Platform != "ptrace" || runscOf(got).BinaryName != "runsc" {
		t.Fatalf("round trip: %+v %+v", got, runscOf(got))
	}
}
