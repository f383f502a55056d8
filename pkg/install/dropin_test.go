package install

import (
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/runc"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/runsc"
)

// runtimes returns the drop-in's runtimes table, as containerd reads it.
func runtimes(t *testing.T, data []byte, major int) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("drop-in is not TOML: %v\n%s", err, data)
	}
	plugin := "io.containerd.cri.v1.runtime"
	if major < 2 {
		plugin = "io.containerd.grpc.v1.cri"
	}
	cri, _ := doc["plugins"].(map[string]any)[plugin].(map[string]any)
	rts, _ := cri["containerd"].(map[string]any)["runtimes"].(map[string]any)
	if rts == nil {
		t.Fatalf("no %s runtimes table:\n%s", plugin, data)
	}
	return rts
}

// checkOptions validates a handler's options table as the shim will read
// it (CRI passes the table as ConfigBody).
func checkOptions(t *testing.T, h string, opts map[string]any) string {
	t.Helper()
	body, err := toml.Marshal(opts)
	if err != nil {
		t.Fatal(err)
	}
	reg := runtime.NewRegistry(runc.Registration(), runsc.Registration())
	cfg, err := reg.Schema().ParseConfig(body, h)
	if err != nil {
		t.Fatalf("%s's options, as the shim reads them: %v\n%s", h, err, body)
	}
	return cfg.Backend
}

func TestDropIn24(t *testing.T) {
	d := DropIn{Handlers: Handlers, Version: "v2.4.2", SystemdCgroup: true, Runsc: "/usr/local/bin/runsc"}
	data, err := d.Render()
	if err != nil {
		t.Fatal(err)
	}
	rts := runtimes(t, data, 2)
	for _, h := range Handlers {
		rt, _ := rts[h].(map[string]any)
		if rt["runtime_type"] != "io.containerd.custom.v2" {
			t.Fatalf("%s: runtime_type %v", h, rt["runtime_type"])
		}
		sb := strings.HasSuffix(h, "-sb")
		if got := rt["sandboxer"] == "shim"; got != sb {
			t.Errorf("%s: sandboxer %v", h, rt["sandboxer"])
		}
		opts, _ := rt["options"].(map[string]any)
		want := "runc"
		if strings.Contains(h, "runsc") {
			want = "runsc"
		}
		if got := checkOptions(t, h, opts); got != want {
			t.Errorf("%s: backend %s, want %s", h, got, want)
		}
		section, _ := opts[want].(map[string]any)
		if section["systemd_cgroup"] != true {
			t.Errorf("%s: no systemd_cgroup in [%s]: %v", h, want, section)
		}
		if want == "runsc" && section["binary_name"] != "/usr/local/bin/runsc" {
			t.Errorf("%s: runsc binary %v", h, section["binary_name"])
		}
	}
	if defaults, err := d.Defaults(); err != nil || defaults != nil {
		t.Errorf("2.4 needs no defaults file: %q %v", defaults, err)
	}
}

func TestDropIn22SandboxedFromDefaults(t *testing.T) {
	d := DropIn{Handlers: []string{"custom-runc", "custom-runsc-sb"}, Version: "2.2.9"}
	data, err := d.Render()
	if err != nil {
		t.Fatal(err)
	}
	rts := runtimes(t, data, 2)
	sb, _ := rts["custom-runsc-sb"].(map[string]any)
	if _, ok := sb["options"]; ok || sb["sandboxer"] != "shim" {
		t.Fatalf("2.2's sandboxed handler must have no options table: %v", sb)
	}
	if _, ok := sb["disable_pause_image_pull"]; ok {
		t.Errorf("2.2 has no disable_pause_image_pull: %v", sb)
	}
	defaults, err := d.Defaults()
	if err != nil || defaults == nil {
		t.Fatalf("defaults: %q %v", defaults, err)
	}
	reg := runtime.NewRegistry(runc.Registration(), runsc.Registration())
	if cfg, err := reg.Schema().ParseConfig(defaults, "custom-shim.toml"); err != nil || cfg.Backend != "runsc" {
		t.Fatalf("defaults file: %v %v\n%s", cfg, err, defaults)
	}
	if _, err := (DropIn{Handlers: []string{"custom-runc-sb", "custom-runsc-sb"}, Version: "2.2.9"}).Render(); err == nil {
		t.Error("two sandboxed backends on 2.2: no error")
	}
}

func TestDropIn17(t *testing.T) {
	d := DropIn{Handlers: []string{"custom-runc", "custom-runsc"}, Version: "1.7.36", RestrictOOMScoreAdj: true}
	data, err := d.Render()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "version = 2\n") {
		t.Errorf("1.7 reads config version 2:\n%s", data)
	}
	rts := runtimes(t, data, 1)
	if rc, _ := rts["runc"].(map[string]any); rc["runtime_type"] != "io.containerd.runc.v2" {
		t.Errorf("1.7: the default runtime runc must stay in the table: %v", rts["runc"])
	}
	for _, h := range d.Handlers {
		opts, _ := rts[h].(map[string]any)["options"].(map[string]any)
		checkOptions(t, h, opts)
	}
	if _, err := (DropIn{Handlers: []string{"custom-runc-sb"}, Version: "1.7.36"}).Render(); err == nil || !strings.Contains(err.Error(), "2.2") {
		t.Errorf("a sandboxed handler on 1.7: %v, want an error naming 2.2", err)
	}
}

func TestDropInRefusesUnknown(t *testing.T) {
	for _, d := range []DropIn{
		{Handlers: []string{"custom-crun"}, Version: "2.4.2"},
		{Version: "2.4.2"},
		{Handlers: []string{"custom-runc"}, Version: "latest"},
	} {
		if _, err := d.Render(); err == nil {
			t.Errorf("%+v: no error", d)
		}
	}
}

func TestCheckImported(t *testing.T) {
	const dropIn = "/etc/containerd/conf.d/custom-runtime.toml"
	for _, c := range []struct {
		name    string
		config  string
		exists  bool
		version string
		ok      bool
	}{
		{"2.x default", "", false, "2.4.2", true},
		{"1.7 default imports nothing", "", false, "1.7.36", false},
		{"a file without imports", "version = 3\n", true, "2.4.2", false},
		{"a file importing conf.d", "version = 2\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n", true, "1.7.36", true},
		{"a file importing elsewhere", "version = 3\nimports = [\"/etc/containerd/other/*.toml\"]\n", true, "2.2.9", false},
	} {
		err := CheckImported([]byte(c.config), c.exists, "/etc/containerd/config.toml", dropIn, c.version)
		if (err == nil) != c.ok {
			t.Errorf("%s: %v, want ok=%v", c.name, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "conf.d/*.toml") {
			t.Errorf("%s: %v does not say what to add", c.name, err)
		}
	}
}
