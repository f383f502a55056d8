package install

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Binaries are what the image carries in Installer.Source and the node
// gets in Installer.Prefix.
var Binaries = []string{"containerd-shim-custom-v2", "containerd-shim-custom-metrics"}

// header starts every file the installer writes: uninstall removes only
// files that start with it.
const header = "# Written by containerd-shim-custom-install"

// ErrRestartNeeded says the drop-in changed and the installer may not restart
// containerd; the node stays unlabelled until containerd has been
// restarted and an install run again finds nothing to change.
var ErrRestartNeeded = errors.New("containerd must be restarted to load the runtime's handlers, and the installer is not allowed to (restart policy)")

// Installer installs the runtime on the node it runs on.
type Installer struct {
	Host         string // the host's root in the installer's Pod ("/host")
	Source       string // the image's binaries
	Prefix       string // where the host gets them ("/usr/local/bin")
	ConfigPath   string // containerd's configuration on the host ("/etc/containerd/config.toml")
	DropInPath   string // containerd's drop-in on the host ("/etc/containerd/conf.d/custom-runtime.toml")
	DefaultsPath string // the shim's defaults file on the host ("/etc/containerd/custom-shim.toml")
	DropIn       DropIn // its Version is the running containerd's
	Containerd   Containerd
	// Check runs the installed shim's `check` on the host.
	Check func(ctx context.Context) error
	Node  *Node
	// Version is the label's value: the installed version.
	Version string
	// Wait bounds the wait for containerd after a restart.
	Wait time.Duration
	Logf func(format string, args ...any)
}

func (i *Installer) host(p string) string { return filepath.Join(i.Host, p) }

// Install puts the binaries and the drop-in on the host, restarts
// containerd if the drop-in changed (and the policy allows), waits for it,
// runs the shim's check and then labels the node. Running again with
// nothing changed only checks and labels: an upgrade replaces the binaries
// (running shims keep theirs) without restarting containerd.
func (i *Installer) Install(ctx context.Context) error {
	version, err := i.Containerd.Version(ctx)
	if err != nil {
		return err
	}
	d := i.DropIn
	d.Version = version
	dropIn, err := d.Render()
	if err != nil {
		return fmt.Errorf("containerd %s: %w", version, err)
	}
	defaults, err := d.Defaults()
	if err != nil {
		return err
	}
	config, err := os.ReadFile(i.host(i.ConfigPath))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("containerd's configuration: %w", err)
	}
	if err := CheckImported(config, err == nil, i.ConfigPath, i.DropInPath, version); err != nil {
		return err
	}
	// The binaries first: a restarted containerd may start the handlers'
	// shims at once.
	for _, b := range Binaries {
		changed, err := CopyFile(filepath.Join(i.Source, b), i.host(filepath.Join(i.Prefix, b)), 0o755)
		if err != nil {
			return err
		}
		i.Logf("%s: %s", filepath.Join(i.Prefix, b), map[bool]string{true: "installed", false: "unchanged"}[changed])
	}
	reload := false
	if defaults != nil {
		changed, err := WriteFile(i.host(i.DefaultsPath), defaults, 0o644)
		if err != nil {
			return err
		}
		reload = reload || changed
	}
	changed, err := WriteFile(i.host(i.DropInPath), dropIn, 0o644)
	if err != nil {
		return err
	}
	reload = reload || changed
	if reload {
		if len(i.Containerd.Restart) == 0 {
			return fmt.Errorf("%s (containerd %s, drop-in %s): %w", i.Node.Name, version, i.DropInPath, ErrRestartNeeded)
		}
		i.Logf("%s changed: restarting containerd (%s)", i.DropInPath, strings.Join(i.Containerd.Restart, " "))
		if err := i.Containerd.RestartAndWait(ctx, i.Wait); err != nil {
			return err
		}
	}
	if err := i.Check(ctx); err != nil {
		return fmt.Errorf("containerd-shim-custom-v2 check on the host: %w", err)
	}
	yes, v := "true", i.Version
	if err := i.Node.SetLabels(ctx, map[string]*string{LabelKey: &yes, VersionKey: &v}); err != nil {
		return err
	}
	i.Logf("node %s labelled %s=true, %s=%s (containerd %s, handlers %s)", i.Node.Name, LabelKey, VersionKey, i.Version, version, strings.Join(d.Handlers, ", "))
	return nil
}

// Uninstall removes the node's label first (no new Pod is scheduled to
// it), then the drop-in (and a defaults file the installer wrote),
// restarts containerd if the policy allows, and removes the binaries last:
// Pods still running on the runtime keep their shims (drain the node's
// Pods of its RuntimeClasses first; a shim that dies later needs the
// binary for containerd's cleanup).
func (i *Installer) Uninstall(ctx context.Context) error {
	if err := i.Node.SetLabels(ctx, map[string]*string{LabelKey: nil, VersionKey: nil}); err != nil {
		return err
	}
	i.Logf("node %s: labels %s, %s removed", i.Node.Name, LabelKey, VersionKey)
	reload := false
	for _, p := range []string{i.DropInPath, i.DefaultsPath} {
		data, err := os.ReadFile(i.host(p))
		if err != nil || !strings.HasPrefix(string(data), header) {
			continue // absent, or the operator's own
		}
		removed, err := RemoveFile(i.host(p))
		if err != nil {
			return err
		}
		reload = reload || removed
	}
	if reload && len(i.Containerd.Restart) > 0 {
		i.Logf("restarting containerd (%s)", strings.Join(i.Containerd.Restart, " "))
		if err := i.Containerd.RestartAndWait(ctx, i.Wait); err != nil {
			return err
		}
	} else if reload {
		i.Logf("containerd keeps the handlers until it is restarted (restart policy)")
	}
	for _, b := range Binaries {
		if _, err := RemoveFile(i.host(filepath.Join(i.Prefix, b))); err != nil {
			return err
		}
	}
	return nil
}
