package install

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// Handlers are those the installer can register (README "Install"; the Helm
// chart's values.handlers): the runc and gVisor backends on the pause path
// and, with -sb, as pod sandboxes of their own (sandboxer = "shim").
var Handlers = []string{"custom-runc", "custom-runsc", "custom-runc-sb", "custom-runsc-sb"}

// DropIn is what the installer writes into containerd's configuration.
type DropIn struct {
	// Handlers to register, of Handlers.
	Handlers []string
	// Version is the containerd that reads the drop-in ("2.4.2"): its
	// config schema and what its CRI supports.
	Version string
	// SystemdCgroup: the kubelet's cgroupDriver is systemd (kubeadm's
	// default); containers then are scopes in their Pod's slice.
	SystemdCgroup bool
	// Runsc is the runsc binary on the host; "" looks it up on PATH.
	Runsc string
	// RestrictOOMScoreAdj: hosts where lowering oom_score_adj is denied
	// (some VMs, nested containers) need CRI's restrict_oom_score_adj.
	RestrictOOMScoreAdj bool
}

// Render returns the drop-in's TOML: containerd 2.x's config version 3,
// or 1.7's version 2. Sandboxed handlers need containerd 2.2 or later; on
// 2.2 their options table must be absent (2.2 fails StartContainer
// otherwise), so the backend comes from the shim's defaults file: only one
// sandboxed backend per node there, and Defaults says which.
func (d DropIn) Render() ([]byte, error) {
	major, minor, err := majorMinor(d.Version)
	if err != nil {
		return nil, err
	}
	if len(d.Handlers) == 0 {
		return nil, fmt.Errorf("no handler to register (want some of %s)", strings.Join(Handlers, ", "))
	}
	var sandboxed []string
	for _, h := range d.Handlers {
		if !slices.Contains(Handlers, h) {
			return nil, fmt.Errorf("handler %q: unknown (want some of %s)", h, strings.Join(Handlers, ", "))
		}
		if strings.HasSuffix(h, "-sb") {
			sandboxed = append(sandboxed, h)
		}
	}
	if len(sandboxed) > 0 && (major < 2 || major == 2 && minor < 2) {
		return nil, fmt.Errorf("handlers %s: pods without pause containers need containerd 2.2 or later, this node has %s", strings.Join(sandboxed, ", "), d.Version)
	}
	if len(sandboxed) > 1 && major == 2 && minor == 2 {
		return nil, fmt.Errorf("handlers %s: containerd 2.2 takes a sandboxed handler's backend from the shim's defaults file, one per node: enable one of them", strings.Join(sandboxed, ", "))
	}
	var b strings.Builder
	b.WriteString(header + ": replaced on every install,\n# removed on uninstall. Handlers: " + strings.Join(d.Handlers, ", ") + ".\n")
	plugin := "plugins.'io.containerd.cri.v1.runtime'"
	if major < 2 {
		b.WriteString("version = 2\n")
		plugin = `plugins."io.containerd.grpc.v1.cri"`
	} else {
		b.WriteString("version = 3\n")
	}
	if major < 2 {
		// 1.7's CRI takes the runtimes table of its configuration as a
		// whole: a file that names only ours drops its default runtime,
		// and CRI does not load without it.
		fmt.Fprintf(&b, "\n[%s.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n", plugin)
	}
	if d.RestrictOOMScoreAdj {
		fmt.Fprintf(&b, "\n[%s]\n  restrict_oom_score_adj = true\n", plugin)
	}
	for _, h := range d.Handlers {
		backend := "runc"
		if strings.HasPrefix(h, "custom-runsc") {
			backend = "runsc"
		}
		table := fmt.Sprintf("%s.containerd.runtimes.%s", plugin, strconv.Quote(h))
		fmt.Fprintf(&b, "\n[%s]\n  runtime_type = \"io.containerd.custom.v2\"\n", table)
		if strings.HasSuffix(h, "-sb") {
			b.WriteString("  sandboxer = \"shim\"\n")
			if minor == 2 && major == 2 {
				continue // no options table on 2.2: Defaults
			}
			b.WriteString("  disable_pause_image_pull = true\n")
		}
		fmt.Fprintf(&b, "  [%s.options]\n    backend = %q\n    runtime_handler = %q\n", table, backend, h)
		d.backendTable(&b, table+".options", backend)
	}
	return []byte(b.String()), nil
}

// Defaults returns the shim's defaults file (/etc/containerd/custom-shim.toml)
// the drop-in relies on, or nil when it relies on none: on containerd 2.2,
// the sandboxed handler's backend.
func (d DropIn) Defaults() ([]byte, error) {
	major, minor, err := majorMinor(d.Version)
	if err != nil || major != 2 || minor != 2 {
		return nil, err
	}
	for _, h := range d.Handlers {
		if strings.HasSuffix(h, "-sb") {
			backend := strings.TrimSuffix(strings.TrimPrefix(h, "custom-"), "-sb")
			var b strings.Builder
			fmt.Fprintf(&b, header+" for %s on containerd 2.2\n# (whose sandboxed handlers carry no options).\nbackend = %q\n", h, backend)
			d.backendTable(&b, "", backend)
			return []byte(b.String()), nil
		}
	}
	return nil, nil
}

// backendTable writes the backend's own keys under table (the top level
// when table is "").
func (d DropIn) backendTable(b *strings.Builder, table, backend string) {
	var keys []string
	if d.SystemdCgroup {
		keys = append(keys, "systemd_cgroup = true")
	}
	if backend == "runsc" && d.Runsc != "" {
		keys = append(keys, "binary_name = "+strconv.Quote(d.Runsc))
	}
	if len(keys) == 0 {
		return
	}
	indent := ""
	if table != "" {
		indent = "      "
		fmt.Fprintf(b, "    [%s.%s]\n", table, backend)
	} else {
		fmt.Fprintf(b, "[%s]\n", backend)
	}
	for _, k := range keys {
		b.WriteString(indent + k + "\n")
	}
}

// majorMinor parses containerd's version ("v2.4.2", "2.2.9-k3s1").
func majorMinor(v string) (int, int, error) {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return 0, 0, fmt.Errorf("containerd version %q: want major.minor", v)
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(strings.SplitN(parts[1], "-", 2)[0])
	if err1 != nil || err2 != nil || major < 1 {
		return 0, 0, fmt.Errorf("containerd version %q: want major.minor", v)
	}
	return major, minor, nil
}

// CheckImported tells whether containerd reads the drop-in at dropIn: its
// configuration file (config, on the host; absent means the built-in
// default) must import it. containerd 2.x's default imports
// /etc/containerd/conf.d/*.toml, 1.7's imports nothing. The installer does
// not edit the operator's main configuration: it says what to add.
func CheckImported(config []byte, exists bool, configPath, dropIn, version string) error {
	major, _, err := majorMinor(version)
	if err != nil {
		return err
	}
	var imports []string
	if !exists {
		// The built-in default applies only where containerd looks by
		// default; elsewhere containerd was started with --config.
		if major >= 2 && configPath == "/etc/containerd/config.toml" {
			imports = []string{"/etc/containerd/conf.d/*.toml"}
		}
	} else {
		var doc struct {
			Imports []string `toml:"imports"`
		}
		if err := toml.Unmarshal(config, &doc); err != nil {
			return fmt.Errorf("containerd's configuration: %w", err)
		}
		imports = doc.Imports
	}
	for _, pattern := range imports {
		if ok, _ := filepath.Match(pattern, dropIn); ok {
			return nil
		}
	}
	return fmt.Errorf("containerd %s does not read %s: add imports = [%q] to its configuration (%s)", version, dropIn, filepath.Join(filepath.Dir(dropIn), "*.toml"), configPath)
}
