package runsc

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
)

func defaults() *Config {
	return Registration().Settings().(*Config)
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Config)
		field  string // "" when valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"ptrace host", func(c *Config) { c.Platform, c.Network = "ptrace", "host" }, ""},
		{"unknown platform", func(c *Config) { c.Platform = "xen" }, "runsc.platform"},
		{"unknown network", func(c *Config) { c.Network = "bridge" }, "runsc.network"},
		{"flag with dashes", func(c *Config) { c.Flags = map[string]string{"--debug": "true"} }, "runsc.flags"},
		{"flag with =", func(c *Config) { c.Flags = map[string]string{"a=b": "c"} }, "runsc.flags"},
		{"empty binary", func(c *Config) { c.BinaryName = "" }, "runsc.binary_name"},
		{"relative root", func(c *Config) { c.Root = "run/x" }, "runsc.root"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := defaults()
			tc.mutate(c)
			err := c.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), `field "`+tc.field+`"`) {
				t.Fatalf("got %v, want InvalidArgument naming %s", err, tc.field)
			}
		})
	}
}

func TestConfigFromRuncOptions(t *testing.T) {
	c := defaults()
	if !c.ClaimsBinary("runsc") || !c.ClaimsBinary("runsc-debug") || c.ClaimsBinary("runc") || c.ClaimsBinary("crun") {
		t.Fatal("runsc claims exactly the runsc binaries")
	}
	c.ApplyRuncOptions(&runcoptions.Options{BinaryName: "/opt/runsc", Root: "/r"})
	if c.BinaryName != "/opt/runsc" || c.Root != "/r" || c.Platform != "systrap" || c.UsesSystemdCgroup() {
		t.Fatalf("%+v", c)
	}
	// SystemdCgroup = true, as containerd's runc shim reads it: runsc's
	// --systemd-cgroup (kubelet's cgroupDriver: systemd).
	c.ApplyRuncOptions(&runcoptions.Options{SystemdCgroup: true})
	if !c.SystemdCgroup || !c.UsesSystemdCgroup() {
		t.Fatalf("SystemdCgroup not taken: %+v", c)
	}
}

func TestSandboxNetwork(t *testing.T) {
	netns := func(path string) *specs.Spec {
		return &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: path}}}}
	}
	cases := []struct {
		name, configured string
		sandbox          bool
		spec             *specs.Spec
		want             string
	}{
		{"CRI pod netns", "sandbox", true, netns("/var/run/netns/cni-1"), "sandbox"},
		{"fresh netns (ctr, nerdctl --net none)", "sandbox", true, netns(""), "none"},
		{"host network pod", "sandbox", true, &specs.Spec{Linux: &specs.Linux{}}, "host"},
		{"sub-container follows its sandbox", "sandbox", false, netns(""), "sandbox"},
		{"operator's choice stands", "none", true, netns("/x"), "none"},
		{"no linux section", "sandbox", true, &specs.Spec{}, "sandbox"},
	}
	for _, tc := range cases {
		if got := sandboxNetwork(tc.configured, tc.sandbox, tc.spec); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestCheckExecutable(t *testing.T) {
	b := bundle.Bundle(t.TempDir())
	rootfs := b.Rootfs()
	check(t, os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755))
	check(t, os.WriteFile(filepath.Join(rootfs, "bin", "sh"), []byte("#!"), 0o755))
	check(t, os.WriteFile(filepath.Join(rootfs, "bin", "data"), []byte("x"), 0o644))
	spec := func(args ...string) *specs.Spec {
		return &specs.Spec{
			Root:    &specs.Root{Path: "rootfs"},
			Process: &specs.Process{Args: args, Cwd: "/", Env: []string{"PATH=/bin"}},
			Mounts:  []specs.Mount{{Destination: "/opt/tools"}},
		}
	}
	for _, tc := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"sh"}, true},
		{[]string{"/bin/sh"}, true},
		{[]string{"bin/sh"}, true}, // relative to cwd
		{[]string{"nope"}, false},
		{[]string{"data"}, false},              // not executable
		{[]string{"/opt/tools/x"}, true},       // under a mount: cannot tell
		{[]string{"../../../../bin/sh"}, true}, // resolved inside the rootfs
	} {
		err := checkExecutable(b, spec(tc.args...))
		if tc.ok != (err == nil) {
			t.Errorf("%v: %v", tc.args, err)
		}
		if err != nil && (!errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), `field "process.args"`)) {
			t.Errorf("%v: %v, want InvalidArgument naming process.args", tc.args, err)
		}
	}
}

func TestShareHostnameKeepsUnknownFields(t *testing.T) {
	b := bundle.Bundle(t.TempDir())
	raw := `{"ociVersion":"1.2.0","hostname":"","linux":{"namespaces":[{"type":"mount"}]},"x-future":{"a":1}}`
	check(t, os.WriteFile(b.Spec(), []byte(raw), 0o644))
	s := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.MountNamespace}}}}
	if err := shareHostname(b, s); err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	data, _ := os.ReadFile(b.Spec())
	var got map[string]any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatalf("config.json after: %v\n%s", err, data)
	}
	if got["hostname"] != host || got["x-future"] == nil || s.Hostname != host {
		t.Fatalf("config.json after: %s", data)
	}
	// A sandbox with its own UTS namespace keeps what the spec says.
	s2 := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.UTSNamespace}}}}
	if err := shareHostname(b, s2); err != nil || s2.Hostname != "" {
		t.Fatalf("%v %q", err, s2.Hostname)
	}
}

func TestHostPids(t *testing.T) {
	b := bundle.Bundle(t.TempDir())
	check(t, os.WriteFile(b.InitPidFile(), []byte("5000"), 0o600))
	check(t, os.WriteFile(b.ExecPidFile("e1"), []byte("5100"), 0o600))
	check(t, os.WriteFile(b.ExecInternalPidFile("e1"), []byte("7"), 0o600))
	check(t, os.WriteFile(b.ExecPidFile("e2"), []byte("5200"), 0o600)) // no internal pid: not mapped
	got := (&Backend{bundle: b}).hostPids([]int{1, 4, 7})
	want := []int{5000, 4, 5100}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

func TestMetricsMapping(t *testing.T) {
	s := &gorunc.Stats{}
	s.Cpu.Usage.Total, s.Cpu.Usage.User, s.Cpu.Usage.Kernel = 3_000_000, 2_000_000, 1_000_000
	s.Memory.Usage = gorunc.MemoryEntry{Usage: 10 << 20, Limit: 64 << 20, Max: 12 << 20}
	s.Memory.Swap = gorunc.MemoryEntry{Usage: 1, Limit: 2}
	s.Pids.Current, s.Pids.Limit = 3, 100
	v1 := v1Metrics(s, 2)
	if v1.CPU.Usage.Total != 3_000_000 || v1.Memory.Usage.Limit != 64<<20 || v1.Pids.Current != 3 || v1.MemoryOomControl.OomKill != 2 {
		t.Fatalf("v1: %+v", v1)
	}
	v2 := v2Metrics(s, 2)
	if v2.CPU.UsageUsec != 3000 || v2.CPU.UserUsec != 2000 || v2.CPU.SystemUsec != 1000 ||
		v2.Memory.Usage != 10<<20 || v2.Memory.UsageLimit != 64<<20 || v2.Memory.MaxUsage != 12<<20 ||
		v2.Memory.SwapUsage != 1 || v2.Pids.Limit != 100 || v2.MemoryEvents.OomKill != 2 {
		t.Fatalf("v2: %+v", v2)
	}
}

func TestWithoutUserNamespaces(t *testing.T) {
	on := true
	f := &features.Features{Linux: &features.Linux{
		Namespaces:      []string{"mount", "user", "pid"},
		MountExtensions: &features.MountExtensions{IDMap: &features.IDMap{Enabled: &on}},
	}}
	withoutUserNamespaces(f)
	if strings.Join(f.Linux.Namespaces, ",") != "mount,pid" || *f.Linux.MountExtensions.IDMap.Enabled {
		t.Fatalf("%+v", f.Linux)
	}
	withoutUserNamespaces(&features.Features{}) // no linux section: no panic
}

func TestRemoveRootKeepsLiveGroups(t *testing.T) {
	root := t.TempDir()
	check(t, os.Mkdir(filepath.Join(root, "c1"), 0o700))
	removeRoot(root)
	if _, err := os.Stat(root); err != nil {
		t.Fatal("a root with a container left must stay")
	}
	os.Remove(filepath.Join(root, "c1"))
	removeRoot(root)
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Fatal("an empty root goes")
	}
}

// A container's lock file with no state beside it (its create ended before
// runsc wrote the state) does not keep the root: it goes with it, unless
// runsc holds it; a lock with its state is a live container's.
func TestRemoveRootOrphanLock(t *testing.T) {
	root := t.TempDir()
	lock := filepath.Join(root, "c2_sandbox:pod.lock")
	check(t, os.WriteFile(lock, nil, 0o600))
	check(t, os.WriteFile(filepath.Join(root, "null-netns"), nil, 0o444))

	held, err := os.Open(lock)
	check(t, err)
	check(t, unix.Flock(int(held.Fd()), unix.LOCK_EX))
	removeRoot(root)
	if _, err := os.Stat(lock); err != nil {
		t.Fatal("a lock runsc holds was removed")
	}
	check(t, held.Close())

	check(t, os.WriteFile(filepath.Join(root, "c2_sandbox:pod.state"), nil, 0o600))
	removeRoot(root)
	if _, err := os.Stat(lock); err != nil {
		t.Fatal("the lock of a container with state was removed")
	}
	check(t, os.Remove(filepath.Join(root, "c2_sandbox:pod.state")))

	removeRoot(root)
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(root)
		t.Fatalf("a root holding only null-netns and an orphan lock stays: %v", entries)
	}
}

// A flag set runsc accepted is not probed again by the next shim process;
// a refusal is, and a changed binary is probed afresh.
func TestProbeCacheAcrossShims(t *testing.T) {
	dir := t.TempDir()
	probeCacheDir = filepath.Join(dir, "cache")
	count := filepath.Join(dir, "count")
	bin := filepath.Join(dir, "runsc")
	script := "#!/bin/sh\necho x >> " + count + "\ncase \"$*\" in *--bad*) echo 'flag provided but not defined: -bad'; exit 2;; esac\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	runs := func() int {
		data, _ := os.ReadFile(count)
		return strings.Count(string(data), "x")
	}
	newShim := func() { probes = sync.Map{} } // a new shim process: empty memory cache
	if err := probe(bin, "systrap", []string{"--network=none"}); err != nil || runs() != 1 {
		t.Fatalf("first probe: %v, %d runs", err, runs())
	}
	newShim()
	if err := probe(bin, "systrap", []string{"--network=none"}); err != nil || runs() != 1 {
		t.Fatalf("second shim: %v, %d runs (want the cached acceptance)", err, runs())
	}
	for range 2 {
		newShim()
		if err := probe(bin, "systrap", []string{"--bad"}); err == nil || !strings.Contains(err.Error(), "-bad") {
			t.Fatalf("refused flags: %v", err)
		}
	}
	if runs() != 3 {
		t.Fatalf("a refusal is probed by every shim: %d runs, want 3", runs())
	}
	newShim()
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(bin, later, later); err != nil {
		t.Fatal(err)
	}
	if err := probe(bin, "systrap", []string{"--network=none"}); err != nil || runs() != 4 {
		t.Fatalf("changed binary: %v, %d runs (want a fresh probe)", err, runs())
	}
}

// check fails the test on a setup step's error.
func check(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A runsc command the sandbox never answers (a wedged sentry) ends with
// its request: killed at the deadline, an error that says so, and the
// sandbox's stacks in the log.
func TestUnansweredCommandIsKilledWithStacks(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "runsc")
	script := "#!/bin/sh\ncase \"$*\" in\n*debug*) echo 'goroutine 7 [semacquire, 3 minutes]: wedged'; exit 0 ;;\n*start*) exec sleep 60 ;;\nesac\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	hook := logtest.NewLocal(log.L.Logger)
	b := &Backend{bin: fake, bundle: bundle.Bundle(dir), log: filepath.Join(dir, "log.json"), sandbox: true}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	began := time.Now()
	err := b.Start(ctx, "web", nil)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no answer from the sandbox") {
		t.Fatalf("got %v", err)
	}
	// The fake runs 60 s unless killed.
	if took := time.Since(began); took > 30*time.Second {
		t.Fatalf("the hung command was not killed at the deadline (%s)", took)
	}
	var logged bool
	for _, e := range hook.AllEntries() {
		if s, _ := e.Data["stacks"].(string); strings.Contains(s, "wedged") && e.Data["op"] == "start" && e.Data["id"] == "web" {
			logged = true
		}
	}
	if !logged {
		t.Fatalf("no stacks logged: %v", hook.AllEntries())
	}
}
