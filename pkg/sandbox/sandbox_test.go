package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	sandboxapi "github.com/containerd/containerd/api/runtime/sandbox/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
	criapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/custom-runtime/containerd-shim-custom-v2/internal/testdeps"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
)

func podOpts(t *testing.T, pc *criapi.PodSandboxConfig) *anypb.Any {
	t.Helper()
	a, err := typeurl.MarshalAnyToProto(pc)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func nsOpts(network, ipc, pid criapi.NamespaceMode) *criapi.LinuxPodSandboxConfig {
	return &criapi.LinuxPodSandboxConfig{SecurityContext: &criapi.LinuxSandboxSecurityContext{
		NamespaceOptions: &criapi.NamespaceOption{Network: network, Ipc: ipc, Pid: pid},
	}}
}

func idm(container, host, length uint32) *criapi.IDMapping {
	return &criapi.IDMapping{ContainerId: container, HostId: host, Length: length}
}

// usernsOpts is a pod config with user namespace options: mode, the PID
// namespace mode, and optionally a UID then a GID mapping.
func usernsOpts(mode, pid criapi.NamespaceMode, maps ...*criapi.IDMapping) *criapi.PodSandboxConfig {
	u := &criapi.UserNamespace{Mode: mode}
	if len(maps) == 2 {
		u.Uids, u.Gids = maps[:1], maps[1:]
	}
	return &criapi.PodSandboxConfig{Linux: &criapi.LinuxPodSandboxConfig{SecurityContext: &criapi.LinuxSandboxSecurityContext{
		NamespaceOptions: &criapi.NamespaceOption{Pid: pid, UsernsOptions: u}}}}
}

// What CRI sends as CreateSandboxRequest.options, and what is refused.
func TestDecodePodConfig(t *testing.T) {
	if u := podOpts(t, &criapi.PodSandboxConfig{}).GetTypeUrl(); u != "runtime.v1.PodSandboxConfig" {
		t.Fatalf("containerd's type URL for the pod config is %q", u)
	}
	cases := []struct {
		name   string
		pc     *criapi.PodSandboxConfig
		netns  string
		check  func(*podConfig) bool
		errIs  func(error) bool
		errHas string
	}{
		{"pod network, private PID", &criapi.PodSandboxConfig{Hostname: "web-0", Linux: nsOpts(criapi.NamespaceMode_POD, criapi.NamespaceMode_POD, criapi.NamespaceMode_CONTAINER)},
			"/var/run/netns/cni-1", func(c *podConfig) bool {
				return c.hostname == "web-0" && !c.hostNetwork && !c.sharedPID && c.sysctls["net.ipv4.ip_unprivileged_port_start"] == "0"
			}, nil, ""},
		{"shared PID (shareProcessNamespace)", &criapi.PodSandboxConfig{Linux: nsOpts(criapi.NamespaceMode_POD, criapi.NamespaceMode_POD, criapi.NamespaceMode_POD)},
			"/n", func(c *podConfig) bool { return c.sharedPID && c.hostname != "" }, nil, ""},
		{"host network: no CRI sysctls", &criapi.PodSandboxConfig{Linux: nsOpts(criapi.NamespaceMode_NODE, criapi.NamespaceMode_NODE, criapi.NamespaceMode_NODE)},
			"", func(c *podConfig) bool { return c.hostNetwork && c.hostIPC && c.hostPID && len(c.sysctls) == 0 }, nil, ""},
		{"pod sysctls", &criapi.PodSandboxConfig{Linux: &criapi.LinuxPodSandboxConfig{Sysctls: map[string]string{"kernel.shm_rmid_forced": "1", "net.ipv4.ip_unprivileged_port_start": "1024"}}},
			"/n", func(c *podConfig) bool {
				return c.sysctls["kernel.shm_rmid_forced"] == "1" && c.sysctls["net.ipv4.ip_unprivileged_port_start"] == "1024"
			}, nil, ""},
		{"node sysctl refused", &criapi.PodSandboxConfig{Linux: &criapi.LinuxPodSandboxConfig{Sysctls: map[string]string{"vm.swappiness": "1"}}},
			"/n", nil, errdefs.IsInvalidArgument, `"vm.swappiness": not a namespaced sysctl`},
		{"net sysctl on host network refused", &criapi.PodSandboxConfig{Linux: &criapi.LinuxPodSandboxConfig{
			Sysctls: map[string]string{"net.core.somaxconn": "1"}, SecurityContext: nsOpts(criapi.NamespaceMode_NODE, 0, 0).SecurityContext}},
			"", nil, errdefs.IsInvalidArgument, "host-network"},
		{"pod network without a netns", &criapi.PodSandboxConfig{}, "", nil, errdefs.IsInvalidArgument, "netns_path"},
		{"TARGET pid", &criapi.PodSandboxConfig{Linux: nsOpts(0, 0, criapi.NamespaceMode_TARGET)}, "/n", nil, errdefs.IsInvalidArgument, "TARGET"},
		{"user namespace", usernsOpts(criapi.NamespaceMode_POD, criapi.NamespaceMode_CONTAINER, idm(0, 65536, 65536), idm(0, 131072, 65536)),
			"/n", func(c *podConfig) bool {
				u := c.userns
				_, ping := c.sysctls["net.ipv4.ping_group_range"]
				return u != nil && u.UID == (specs.LinuxIDMapping{ContainerID: 0, HostID: 65536, Size: 65536}) &&
					u.GID == (specs.LinuxIDMapping{ContainerID: 0, HostID: 131072, Size: 65536}) &&
					!ping && c.sysctls["net.ipv4.ip_unprivileged_port_start"] == "0"
			}, nil, ""},
		{"user namespace: NODE is the host's", usernsOpts(criapi.NamespaceMode_NODE, criapi.NamespaceMode_CONTAINER),
			"/n", func(c *podConfig) bool { return c.userns == nil && c.sysctls["net.ipv4.ping_group_range"] != "" }, nil, ""},
		{"user namespace: NODE with mappings", usernsOpts(criapi.NamespaceMode_NODE, criapi.NamespaceMode_CONTAINER, idm(0, 65536, 65536), idm(0, 65536, 65536)),
			"/n", nil, errdefs.IsInvalidArgument, "mode NODE with 1 UID and 1 GID mappings"},
		{"user namespace: POD without mappings", usernsOpts(criapi.NamespaceMode_POD, criapi.NamespaceMode_CONTAINER),
			"/n", nil, errdefs.IsInvalidArgument, "uids\": 0 mappings, want exactly one"},
		{"user namespace: two UID mappings", &criapi.PodSandboxConfig{Linux: &criapi.LinuxPodSandboxConfig{SecurityContext: &criapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &criapi.NamespaceOption{UsernsOptions: &criapi.UserNamespace{Mode: criapi.NamespaceMode_POD,
				Uids: []*criapi.IDMapping{idm(0, 65536, 1), idm(1, 65537, 1)}, Gids: []*criapi.IDMapping{idm(0, 65536, 2)}}}}}},
			"/n", nil, errdefs.IsInvalidArgument, "uids\": 2 mappings"},
		{"user namespace: root not mapped", usernsOpts(criapi.NamespaceMode_POD, criapi.NamespaceMode_CONTAINER, idm(0, 65536, 65536), idm(1000, 65536, 65536)),
			"/n", nil, errdefs.IsInvalidArgument, "gids\": mapping container 1000"},
		{"user namespace: zero length", usernsOpts(criapi.NamespaceMode_POD, criapi.NamespaceMode_CONTAINER, idm(0, 65536, 0), idm(0, 65536, 1)),
			"/n", nil, errdefs.IsInvalidArgument, "length 0"},
		{"user namespace: past 32 bits", usernsOpts(criapi.NamespaceMode_POD, criapi.NamespaceMode_CONTAINER, idm(0, 4294967295, 2), idm(0, 65536, 1)),
			"/n", nil, errdefs.IsInvalidArgument, "within 32 bits"},
		{"user namespace with the host's network", func() *criapi.PodSandboxConfig {
			pc := usernsOpts(criapi.NamespaceMode_POD, criapi.NamespaceMode_CONTAINER, idm(0, 65536, 65536), idm(0, 65536, 65536))
			pc.Linux.SecurityContext.NamespaceOptions.Network = criapi.NamespaceMode_NODE
			return pc
		}(), "", nil, errdefs.IsInvalidArgument, "host's network, IPC or PID"},
		{"user namespace with the host's IPC", func() *criapi.PodSandboxConfig {
			pc := usernsOpts(criapi.NamespaceMode_POD, criapi.NamespaceMode_CONTAINER, idm(0, 65536, 65536), idm(0, 65536, 65536))
			pc.Linux.SecurityContext.NamespaceOptions.Ipc = criapi.NamespaceMode_NODE
			return pc
		}(), "/n", nil, errdefs.IsInvalidArgument, "host's network, IPC or PID"},
		{"user namespace with the host's PID namespace", usernsOpts(criapi.NamespaceMode_POD, criapi.NamespaceMode_NODE, idm(0, 65536, 65536), idm(0, 65536, 65536)),
			"/n", nil, errdefs.IsInvalidArgument, "host's network, IPC or PID"},
		{"user namespace with a shared PID namespace", usernsOpts(criapi.NamespaceMode_POD, criapi.NamespaceMode_POD, idm(0, 65536, 65536), idm(0, 65536, 65536)),
			"/n", func(c *podConfig) bool { return c.userns != nil && c.sharedPID }, nil, ""},
		{"user namespace per container", &criapi.PodSandboxConfig{Linux: &criapi.LinuxPodSandboxConfig{SecurityContext: &criapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &criapi.NamespaceOption{UsernsOptions: &criapi.UserNamespace{Mode: criapi.NamespaceMode_CONTAINER}}}}},
			"/n", nil, errdefs.IsInvalidArgument, "userns_options.mode"},
		{"user namespace of a target", &criapi.PodSandboxConfig{Linux: &criapi.LinuxPodSandboxConfig{SecurityContext: &criapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &criapi.NamespaceOption{UsernsOptions: &criapi.UserNamespace{Mode: criapi.NamespaceMode_TARGET}}}}},
			"/n", nil, errdefs.IsInvalidArgument, "userns_options.mode"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := decodePodConfig(podOpts(t, tc.pc), tc.netns)
			if tc.errIs != nil {
				if err == nil || !tc.errIs(err) || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("got %v, want an error with %q of the right kind", err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(c) {
				t.Fatalf("unexpected %+v", c)
			}
		})
	}
	if _, err := decodePodConfig(nil, "/n"); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("no options: %v", err)
	}
	if _, err := decodePodConfig(&anypb.Any{TypeUrl: "runtime.v1.PodSandboxConfig", Value: []byte{0xff}}, "/n"); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("garbage: %v", err)
	}
}

// The states are CRI's enum names, which CRI compares as strings.
func TestStateNames(t *testing.T) {
	if criReady != criapi.PodSandboxState_SANDBOX_READY.String() || criNotReady != criapi.PodSandboxState_SANDBOX_NOTREADY.String() {
		t.Fatal("state names differ from CRI's")
	}
}

// The wire decoder reads what k8s.io/cri-api encodes, field for field.
func TestDecodeCRIPodConfigRoundTrip(t *testing.T) {
	in := &criapi.PodSandboxConfig{
		Metadata:     &criapi.PodSandboxMetadata{Name: "web-0", Uid: "u-1", Namespace: "shop", Attempt: 2},
		Hostname:     "web-0",
		DnsConfig:    &criapi.DNSConfig{Servers: []string{"10.0.0.10", "10.0.0.11"}, Searches: []string{"a.b"}, Options: []string{"ndots:5"}},
		Labels:       map[string]string{"app": "web"},
		Annotations:  map[string]string{"dev.gvisor.spec.mount.x.share": "pod", "k": ""},
		PortMappings: []*criapi.PortMapping{{ContainerPort: 80}},
		Linux: &criapi.LinuxPodSandboxConfig{
			CgroupParent: "/kubepods/pod-u-1",
			Sysctls:      map[string]string{"net.core.somaxconn": "1024"},
			SecurityContext: &criapi.LinuxSandboxSecurityContext{
				Privileged: true,
				NamespaceOptions: &criapi.NamespaceOption{Network: criapi.NamespaceMode_NODE, Pid: criapi.NamespaceMode_CONTAINER, Ipc: criapi.NamespaceMode_NODE,
					UsernsOptions: &criapi.UserNamespace{Mode: criapi.NamespaceMode_NODE}},
			},
		},
	}
	got, err := decodeCRIPodConfig(podOpts(t, in).GetValue())
	if err != nil {
		t.Fatal(err)
	}
	if got.name != "web-0" || got.uid != "u-1" || got.namespace != "shop" || got.hostname != "web-0" ||
		strings.Join(got.dns.servers, ",") != "10.0.0.10,10.0.0.11" || strings.Join(got.dns.searches, ",") != "a.b" || got.dns.options[0] != "ndots:5" ||
		got.labels["app"] != "web" || got.annotations["dev.gvisor.spec.mount.x.share"] != "pod" || len(got.annotations) != 2 ||
		got.cgroupParent != "/kubepods/pod-u-1" || got.sysctls["net.core.somaxconn"] != "1024" ||
		got.network != modeNode || got.pid != modeContainer || got.ipc != modeNode || got.userns == nil || *got.userns != modeNode {
		t.Fatalf("decoded %+v (dns %+v)", got, got.dns)
	}
	empty, err := decodeCRIPodConfig(nil)
	if err != nil || empty.userns != nil || empty.pid != modePod {
		t.Fatalf("empty: %+v %v", empty, err)
	}
	for _, bad := range [][]byte{{0x0a}, {0x12, 0x05, 'a'}, {0xff, 0xff, 0xff}} {
		if _, err := decodeCRIPodConfig(bad); err == nil {
			t.Errorf("%x decoded", bad)
		}
	}
}

func TestResolvConf(t *testing.T) {
	got := resolvConf(&criDNS{servers: []string{"10.0.0.10"}, searches: []string{"ns.svc.cluster.local", "svc.cluster.local"}, options: []string{"ndots:5"}})
	want := "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
	if got != want {
		t.Fatalf("got %q want %q", got, want)
	}
	if resolvConf(nil) != "" {
		t.Fatal("no DNS config: the node's file")
	}
}

// The pod's files land where CRI looks for them, and come back after
// containerd (restarting) removed them.
func TestPodFilesSurviveTheirRemoval(t *testing.T) {
	testdeps.RequireRoot(t, "mounts the pod's /dev/shm")
	top := t.TempDir()
	state, root := filepath.Join(top, "run"), filepath.Join(top, "lib")
	b := bundle.Bundle(filepath.Join(state, "io.containerd.sandbox.controller.v1.shim", "k8s.io", "sb1"))
	work := filepath.Join(root, "io.containerd.sandbox.controller.v1.shim", "k8s.io", "sb1")
	for _, d := range []string{b.Path(), work} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(work, filepath.Join(b.Path(), "work")); err != nil {
		t.Fatal(err)
	}
	f, err := criDirs(b, "sb1", false)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, "io.containerd.grpc.v1.cri", "sandboxes", "sb1"); f.rootDir != want {
		t.Fatalf("CRI root dir %s, want %s", f.rootDir, want)
	}
	if want := filepath.Join(state, "io.containerd.grpc.v1.cri", "sandboxes", "sb1", "shm"); f.shmPath() != want {
		t.Fatalf("shm %s, want %s", f.shmPath(), want)
	}
	defer func() { _ = f.remove() }()
	if err := f.create("web-0", "nameserver 10.0.0.10\n"); err != nil {
		t.Fatal(err)
	}
	assertFiles := func() {
		t.Helper()
		if data, _ := os.ReadFile(filepath.Join(f.rootDir, "hostname")); string(data) != "web-0\n" {
			t.Fatalf("hostname %q", data)
		}
		if data, _ := os.ReadFile(filepath.Join(f.rootDir, "resolv.conf")); string(data) != "nameserver 10.0.0.10\n" {
			t.Fatalf("resolv.conf %q", data)
		}
		if _, err := os.Stat(filepath.Join(f.rootDir, "hosts")); err != nil {
			t.Fatal(err)
		}
		if m, _ := mountinfo.Mounted(f.shmPath()); !m {
			t.Fatal("the pod's /dev/shm is not mounted at CRI's path")
		}
	}
	assertFiles()
	// A file written to the pod's shm is seen through the CRI path.
	if err := os.WriteFile(filepath.Join(f.shmKeep, "x"), []byte("1"), 0o600); err != nil {
		t.Fatal(err)
	}
	// What containerd's restart does to directories it cannot tie to a
	// pause container.
	if err := unmountAll(f.shmPath()); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(f.rootDir); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(f.stateDir); err != nil {
		t.Fatal(err)
	}
	if err := f.lay(); err != nil {
		t.Fatal(err)
	}
	assertFiles()
	if _, err := os.Stat(filepath.Join(f.shmPath(), "x")); err != nil {
		t.Fatalf("the pod's shm content after laying it out again: %v", err)
	}
	if err := f.remove(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{f.rootDir, f.stateDir, f.keepDir} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Fatalf("%s left: %v", d, err)
		}
	}
}

func unmountAll(p string) error {
	return (&podFiles{stateDir: filepath.Dir(p), shmKeep: filepath.Join(os.TempDir(), "none-such")}).unmount()
}

// A pod whose CreateSandbox was refused still gets ShutdownSandbox from
// containerd: it succeeds and lets the shim exit, or the shim would outlive
// its pod (critest's refused user-namespace pods left one each).
func TestShutdownUnknownSandboxExits(t *testing.T) {
	exited := make(chan struct{})
	s := NewService(context.Background(), Config{Shutdown: func() { close(exited) }})
	if _, err := s.ShutdownSandbox(context.Background(), &sandboxapi.ShutdownSandboxRequest{SandboxID: "refused"}); err != nil {
		t.Fatalf("ShutdownSandbox of a sandbox never created: %v", err)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the shim was not asked to exit")
	}
}

// TestPodCgroupStatsSystemdParent: kubelet's systemd driver gives a Pod's
// cgroup parent as the slice's cgroupfs path; SandboxMetrics reads that
// path (here absent: NotFound) rather than refusing it as a slice name.
func TestPodCgroupStatsSystemdParent(t *testing.T) {
	for _, parent := range []string{
		"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podnone" + strconv.Itoa(os.Getpid()) + ".slice",
		"kubepods-burstable-podnone" + strconv.Itoa(os.Getpid()) + ".slice",
	} {
		_, err := podCgroupStats(parent)
		if !errdefs.IsNotFound(err) {
			t.Errorf("podCgroupStats(%q): %v, want NotFound (no such cgroup here)", parent, err)
		}
	}
}

// An IDMapping's fields are uint32: a wider varint is refused, not cut.
func TestDecodeIDMappingRange(t *testing.T) {
	b := protowire.AppendTag(nil, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, 1<<32+65536)
	if m, err := decodeIDMapping(protowire.BytesType, b); err == nil {
		t.Fatalf("host id 2^32+65536 decoded as %+v", m)
	}
	b = protowire.AppendTag(nil, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, 65536)
	if m, err := decodeIDMapping(protowire.BytesType, b); err != nil || m.hostID != 65536 {
		t.Fatalf("host id 65536: %+v %v", m, err)
	}
}
