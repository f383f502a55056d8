package install

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/containerdversion/versiontest"
)

// recorder keeps what happened to the node, in order: containerd
// restarts (the restart command appends to restartLog; it has returned
// before anything after it happens), checks, label changes.
type recorder struct {
	mu         sync.Mutex
	events     []string
	restartLog string
}

func (r *recorder) drainRestarts() {
	if r.restartLog == "" {
		return
	}
	data, _ := os.ReadFile(r.restartLog)
	_ = os.Remove(r.restartLog)
	for range strings.Fields(string(data)) {
		r.events = append(r.events, "restart")
	}
}

func (r *recorder) add(e string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.drainRestarts()
	r.events = append(r.events, e)
}

func (r *recorder) take() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.drainRestarts()
	e := r.events
	r.events = nil
	return strings.Join(e, " ")
}

func newInstaller(t *testing.T, rec *recorder, restart bool) *Installer {
	t.Helper()
	src := t.TempDir()
	for _, b := range Binaries {
		if err := os.WriteFile(filepath.Join(src, b), []byte(b+" v1"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		var patch struct {
			Metadata struct {
				Labels map[string]*string `json:"labels"`
			} `json:"metadata"`
		}
		_ = json.Unmarshal(data, &patch)
		l := patch.Metadata.Labels
		switch {
		case l[LabelKey] != nil && *l[LabelKey] == "true" && l[VersionKey] != nil:
			rec.add("label=" + *l[VersionKey])
		case l[LabelKey] == nil && l[VersionKey] == nil && len(l) == 2:
			rec.add("unlabel")
		default:
			rec.add("bad-patch")
		}
	}))
	t.Cleanup(api.Close)
	i := &Installer{
		Host:         t.TempDir(),
		Source:       src,
		Prefix:       "/usr/local/bin",
		ConfigPath:   "/etc/containerd/config.toml",
		DropInPath:   "/etc/containerd/conf.d/custom-runtime.toml",
		DefaultsPath: "/etc/containerd/custom-shim.toml",
		DropIn:       DropIn{Handlers: []string{"custom-runc", "custom-runc-sb"}, SystemdCgroup: true},
		Containerd:   Containerd{Socket: versiontest.Serve(t, "v2.4.2")},
		Check:        func(context.Context) error { rec.add("check"); return nil },
		Node:         &Node{Name: "node-1", API: &API{URL: api.URL, Token: func() (string, error) { return "t", nil }, HTTP: api.Client()}},
		Version:      "v1",
		Wait:         10 * time.Second,
		Logf:         t.Logf,
	}
	if restart {
		script := filepath.Join(t.TempDir(), "restart")
		rec.restartLog = filepath.Join(t.TempDir(), "restarts")
		if err := os.WriteFile(script, []byte("#!/bin/sh\necho restart >> "+rec.restartLog+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		i.Containerd.Restart = []string{script}
	}
	return i
}

func TestInstallLabelsOnlyAfterContainerdAndCheck(t *testing.T) {
	rec := &recorder{}
	i := newInstaller(t, rec, true)
	if err := i.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := rec.take(); got != "restart check label=v1" {
		t.Fatalf("first install: %s, want restart check label=v1", got)
	}
	for _, b := range Binaries {
		if data, err := os.ReadFile(i.host(filepath.Join(i.Prefix, b))); err != nil || string(data) != b+" v1" {
			t.Fatalf("%s on the host: %q %v", b, data, err)
		}
	}
	dropIn, err := os.ReadFile(i.host(i.DropInPath))
	if err != nil || !strings.Contains(string(dropIn), `"custom-runc-sb"`) {
		t.Fatalf("drop-in: %s %v", dropIn, err)
	}

	// An upgrade: new binaries, the same drop-in: no restart.
	for _, b := range Binaries {
		if err := os.WriteFile(filepath.Join(i.Source, b), []byte(b+" v2"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	i.Version = "v2"
	if err := i.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := rec.take(); got != "check label=v2" {
		t.Fatalf("upgrade: %s, want check label=v2 (no containerd restart)", got)
	}
	if data, _ := os.ReadFile(i.host(filepath.Join(i.Prefix, Binaries[0]))); string(data) != Binaries[0]+" v2" {
		t.Fatalf("upgraded binary: %q", data)
	}
}

func TestInstallFailedCheckLeavesTheNodeUnlabelled(t *testing.T) {
	rec := &recorder{}
	i := newInstaller(t, rec, true)
	i.Check = func(context.Context) error { rec.add("check"); return errors.New("backend runc: unavailable") }
	if err := i.Install(context.Background()); err == nil || !strings.Contains(err.Error(), "backend runc: unavailable") {
		t.Fatalf("install with a failing check: %v", err)
	}
	if got := rec.take(); got != "restart check" {
		t.Fatalf("events %s, want restart check and no label", got)
	}
}

func TestInstallWithoutRestartPolicy(t *testing.T) {
	rec := &recorder{}
	i := newInstaller(t, rec, false)
	if err := i.Install(context.Background()); !errors.Is(err, ErrRestartNeeded) {
		t.Fatalf("a changed drop-in, no restart allowed: %v, want ErrRestartNeeded", err)
	}
	if got := rec.take(); got != "" {
		t.Fatalf("events %q, want none (no check, no label)", got)
	}
	// containerd restarted by the operator: the next install finds
	// nothing to change and labels.
	if err := i.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := rec.take(); got != "check label=v1" {
		t.Fatalf("events %s", got)
	}
}

func TestUninstallUnlabelsFirst(t *testing.T) {
	rec := &recorder{}
	i := newInstaller(t, rec, true)
	if err := i.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	rec.take()
	// The operator's own defaults file stays.
	own := i.host(i.DefaultsPath)
	if err := os.WriteFile(own, []byte("backend = \"runsc\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := i.Uninstall(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := rec.take(); got != "unlabel restart" {
		t.Fatalf("uninstall: %s, want the label removed before containerd's restart", got)
	}
	for _, p := range append([]string{i.DropInPath}, i.Prefix+"/"+Binaries[0], i.Prefix+"/"+Binaries[1]) {
		if _, err := os.Stat(i.host(p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left: %v", p, err)
		}
	}
	if _, err := os.Stat(own); err != nil {
		t.Errorf("the operator's defaults file was removed: %v", err)
	}
}
