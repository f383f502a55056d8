package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/pkg/oci"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// The systemd tests run where most Kubernetes nodes run: systemd as PID 1
// on pure cgroup v2, kubelet with cgroupDriver: systemd. make test-systemd
// (scripts/systemd) boots such a guest; there SYSTEMD_GUEST=1 turns a skip
// into a failure.

// requireSystemd skips the test unless PID 1 is systemd on pure cgroup v2.
// This host (cgroup v1, no systemd) cannot run them, CI included: the guest
// of make test-systemd does, and fails instead of skipping.
func requireSystemd(t *testing.T) {
	t.Helper()
	requireSuite(t)
	comm, _ := os.ReadFile("/proc/1/comm")
	var st unix.Statfs_t
	_ = unix.Statfs("/sys/fs/cgroup", &st)
	why := ""
	switch {
	case strings.TrimSpace(string(comm)) != "systemd":
		why = fmt.Sprintf("PID 1 is %q, not systemd", strings.TrimSpace(string(comm)))
	case st.Type != unix.CGROUP2_SUPER_MAGIC:
		why = "/sys/fs/cgroup is not cgroup v2 alone"
	default:
		if _, err := exec.LookPath("busctl"); err != nil {
			why = "no busctl"
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("SYSTEMD_GUEST") != "" {
		t.Fatalf("the systemd guest cannot run the systemd tests: %s", why)
	}
	t.Skipf("needs systemd as PID 1 on cgroup v2 (make test-systemd): %s", why)
}

// sdHandler is a CRI runtime handler under the systemd driver, and how it
// asks for it.
type sdHandler struct {
	name string
	// toml is the handler's table below runtimes.<name>.
	toml string
	// sandboxed: sandboxer = "shim" (the pod's holder or gVisor sandbox
	// is the shim's, no pause container).
	sandboxed bool
	// gvisor: the handler runs gVisor (sub-containers share the sandbox's
	// cgroup).
	gvisor bool
}

// systemdHandlers are the handlers the backend's guest checks, one per way
// of asking for the systemd driver.
func systemdHandlers(backend, sdConfig string) []sdHandler {
	opts := func(name, body string) string {
		return fmt.Sprintf("    [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.%s.options]\n%s", name, body)
	}
	typ := "    runtime_type = \"io.containerd.custom.v2\"\n"
	sb := "    sandboxer = \"shim\"\n    disable_pause_image_pull = true\n"
	if backend == "runsc" {
		return []sdHandler{
			// runc-style options, as containerd's docs tell every handler.
			{name: "custom-runsc", gvisor: true, toml: typ + opts("custom-runsc",
				fmt.Sprintf("      SystemdCgroup = true\n      BinaryName = %q\n", runscBin))},
			// the project's own key, in the config file.
			{name: "custom-runsc-file", gvisor: true, toml: typ + opts("custom-runsc-file",
				fmt.Sprintf("      ConfigPath = %q\n", sdConfig))},
			{name: "custom-runsc-sb", gvisor: true, sandboxed: true, toml: typ + sb + opts("custom-runsc-sb",
				fmt.Sprintf("      ConfigPath = %q\n", sdConfig))},
		}
	}
	return []sdHandler{
		// containerd's own runc shim: the baseline.
		{name: "runc", toml: "    runtime_type = \"io.containerd.runc.v2\"\n" + opts("runc", "      SystemdCgroup = true\n")},
		// runc-style options in the handler's table (CRI passes it as ConfigBody).
		{name: "custom-runc", toml: typ + opts("custom-runc", "      SystemdCgroup = true\n")},
		// the project's own TOML key, in the file ConfigPath names.
		{name: "custom-runc-file", toml: typ + opts("custom-runc-file", fmt.Sprintf("      ConfigPath = %q\n", sdConfig))},
		// no options: the defaults file ($CONTAINERD_SHIM_CUSTOM_CONFIG).
		{name: "custom-runc-nil", toml: typ},
		// runc CLI mode, the project's key inline.
		{name: "custom-runc-cli", toml: typ + opts("custom-runc-cli", "      [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.custom-runc-cli.options.runc]\n        mode = \"cli\"\n        systemd_cgroup = true\n")},
		{name: "custom-runc-sb", sandboxed: true, toml: typ + sb + opts("custom-runc-sb", fmt.Sprintf("      ConfigPath = %q\n", sdConfig))},
	}
}

// systemdDaemon starts a CRI containerd whose handlers all use the systemd
// driver; its defaults file asks for it too.
func systemdDaemon(t *testing.T, like *env, handlers []sdHandler, sdConfig string) (*env, runtimeapi.RuntimeServiceClient) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  sandbox = %q\n", criPauseImage)
	b.WriteString("[plugins.\"io.containerd.cri.v1.runtime\"]\n  restrict_oom_score_adj = true\n")
	for _, h := range handlers {
		fmt.Fprintf(&b, "  [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.%s]\n%s", h.name, h.toml)
	}
	e := ownDaemon(t, like, func(c *harness.Config) {
		c.EnableCRI = true
		c.ExtraConfig = b.String()
		c.Env = append(c.Env, "CONTAINERD_SHIM_CUSTOM_CONFIG="+sdConfig)
	})
	harness.ImportBusybox(t, e.client, criNamespace)
	if _, err := harness.ImportImage(nsCtx(testContext(t)), e.client, criNamespace, pauseImage(t)); err != nil {
		t.Fatalf("import pause image: %v", err)
	}
	conn, err := grpc.NewClient("unix://"+e.d.Address(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return e, runtimeapi.NewRuntimeServiceClient(conn)
}

// writeSystemdConfig writes the backend's config file with the project's
// own key for the systemd driver.
func writeSystemdConfig(t *testing.T, backend string) string {
	t.Helper()
	body := "backend = \"runc\"\n[runc]\nsystemd_cgroup = true\n"
	if backend == "runsc" {
		body = fmt.Sprintf("backend = \"runsc\"\n[runsc]\nbinary_name = %q\nsystemd_cgroup = true\n", runscBin)
	}
	p := filepath.Join(t.TempDir(), backend+"-systemd.toml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// podSlice creates a Burstable Pod's slice as kubelet does with
// cgroupDriver: systemd (a transient unit over D-Bus, the Pod's memory
// limit, the sum of its containers', as a property; systemd makes
// kubepods.slice and kubepods-burstable.slice with it) and returns the
// cgroup parent kubelet gives CRI: the slice's cgroupfs path. The slice is
// stopped at cleanup, as kubelet does once the Pod is gone.
func podSlice(t *testing.T, uid string, memoryMax int64) (name, parent string) {
	t.Helper()
	name = "kubepods-burstable-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice"
	out, err := exec.Command("busctl", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
		"org.freedesktop.systemd1.Manager", "StartTransientUnit", "ssa(sv)a(sa(sv))", name, "replace",
		"3", "Description", "s", "test pod "+uid, "MemoryAccounting", "b", "true", "MemoryMax", "t", fmt.Sprint(memoryMax),
		"0").CombinedOutput()
	if err != nil {
		t.Fatalf("create %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("systemctl", "stop", name).Run() })
	eventually(t, 30*time.Second, name+" active", func() error {
		if st := unitProps(t, name, "ActiveState")["ActiveState"]; st != "active" {
			return fmt.Errorf("ActiveState %q", st)
		}
		return nil
	})
	return name, "/kubepods.slice/kubepods-burstable.slice/" + name
}

// unitProps reads unit properties as systemctl show prints them.
func unitProps(t *testing.T, unit string, props ...string) map[string]string {
	t.Helper()
	args := []string{"show", unit}
	for _, p := range props {
		args = append(args, "-p", p)
	}
	out, err := exec.Command("systemctl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("systemctl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

// unitCgroupFile reads a control file of a unit's cgroup.
func unitCgroupFile(t *testing.T, unit, file string) string {
	t.Helper()
	cg := unitProps(t, unit, "ControlGroup")["ControlGroup"]
	if cg == "" {
		t.Fatalf("%s has no cgroup", unit)
	}
	data, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", cg, file))
	if err != nil {
		t.Fatalf("%s: %v", unit, err)
	}
	return strings.TrimSpace(string(data))
}

// assertScope checks that unit is a running scope in the Pod's slice.
func assertScope(t *testing.T, unit, slice string) {
	t.Helper()
	p := unitProps(t, unit, "LoadState", "ActiveState", "Slice")
	if p["LoadState"] != "loaded" || p["ActiveState"] != "active" || p["Slice"] != slice {
		t.Errorf("%s: %v, want an active scope in %s", unit, p, slice)
	}
}

// TestSystemdCgroupDriver drives each handler through CRI as kubelet with
// cgroupDriver: systemd does (Pod slices, slice:cri-containerd:<id> cgroup
// paths) and checks what a node depends on: each container (and the Pod's
// holder or sandbox) is a scope unit in the Pod's slice; its limits are
// unit properties that survive systemctl daemon-reload; Update changes
// them; Stats reads the scope; an OOM kill is reported; a removed Pod
// leaves no unit and no cgroup.
func TestSystemdCgroupDriver(t *testing.T) {
	requireSystemd(t)
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		sdConfig := writeSystemdConfig(t, like.backend)
		handlers := systemdHandlers(like.backend, sdConfig)
		e, rc := systemdDaemon(t, like, handlers, sdConfig)
		for _, h := range handlers {
			t.Run(h.name, func(t *testing.T) { systemdPodChecks(t, e, rc, h) })
		}
	})
}

func systemdPodChecks(t *testing.T, e *env, rc runtimeapi.RuntimeServiceClient, h sdHandler) {
	ctx := testContext(t)
	uid := containerID(t, "uid")
	const mib = 1 << 20
	podMem := int64(256 * mib)
	if h.gvisor {
		// Small enough for the OOM below to come soon under TCG, with
		// room for the sandbox.
		podMem = 128 * mib
	}
	slice, parent := podSlice(t, uid, podMem)
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "sd", Uid: uid, Namespace: "test"},
		LogDirectory: t.TempDir(),
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: parent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			},
		},
	}
	pod, err := rc.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg, RuntimeHandler: h.name})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	podID := pod.PodSandboxId
	logOnFailure(t, e, podID)
	removed := false
	t.Cleanup(func() {
		if !removed {
			ctx := context.Background()
			_, _ = rc.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID})
			_, _ = rc.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID})
		}
	})
	// The pause container, the holder (runc, sandboxed) or the gVisor
	// sandbox: a scope of the Pod's slice, as pause is with runc.
	podUnit := "cri-containerd-" + podID + ".scope"
	assertScope(t, podUnit, slice)

	create := func(name string, mem int64, cmd string) string {
		t.Helper()
		cc, err := rc.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId: podID,
			Config: &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: name},
				Image:    &runtimeapi.ImageSpec{Image: criImage},
				Command:  []string{"sh", "-c", cmd},
				LogPath:  name + ".log",
				Linux: &runtimeapi.LinuxContainerConfig{Resources: &runtimeapi.LinuxContainerResources{
					MemoryLimitInBytes: mem, CpuPeriod: 100000, CpuQuota: 50000, CpuShares: 512,
				}},
			},
			SandboxConfig: podCfg,
		})
		if err != nil {
			t.Fatalf("CreateContainer %s: %v", name, err)
		}
		if _, err := rc.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cc.ContainerId}); err != nil {
			t.Fatalf("StartContainer %s: %v", name, err)
		}
		return cc.ContainerId
	}

	// The limits: on the container's scope.
	id := create("app", 64*mib, "sleep 100000")
	unit := "cri-containerd-" + id + ".scope"
	limited := unit
	if !h.gvisor {
		assertScope(t, unit, slice)
	}
	wantMem := func(what string, want int64) {
		t.Helper()
		if p := unitProps(t, limited, "MemoryMax")["MemoryMax"]; p != fmt.Sprint(want) {
			t.Errorf("%s: %s MemoryMax=%s, want %d", what, limited, p, want)
		}
		if f := unitCgroupFile(t, limited, "memory.max"); f != fmt.Sprint(want) {
			t.Errorf("%s: %s memory.max %s, want %d", what, limited, f, want)
		}
	}
	if !h.gvisor {
		wantMem("created", 64*mib)
		if p := unitProps(t, unit, "CPUQuotaPerSecUSec")["CPUQuotaPerSecUSec"]; p != "500ms" {
			t.Errorf("%s CPUQuotaPerSecUSec=%s, want 500ms (50000/100000)", unit, p)
		}
		if f := unitCgroupFile(t, unit, "cpu.max"); f != "50000 100000" {
			t.Errorf("%s cpu.max %q, want \"50000 100000\"", unit, f)
		}
		// A daemon-reload re-applies unit properties to the cgroup: a
		// limit written only to the files would be undone here.
		if out, err := exec.Command("systemctl", "daemon-reload").CombinedOutput(); err != nil {
			t.Fatalf("daemon-reload: %v: %s", err, out)
		}
		wantMem("after daemon-reload", 64*mib)
		if f := unitCgroupFile(t, unit, "cpu.max"); f != "50000 100000" {
			t.Errorf("after daemon-reload: %s cpu.max %q, want \"50000 100000\"", unit, f)
		}
		if _, err := rc.UpdateContainerResources(ctx, &runtimeapi.UpdateContainerResourcesRequest{
			ContainerId: id,
			Linux:       &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 96 * mib, CpuPeriod: 100000, CpuQuota: 50000, CpuShares: 512},
		}); err != nil {
			t.Fatalf("UpdateContainerResources: %v", err)
		}
		wantMem("after Update", 96*mib)
		if out, err := exec.Command("systemctl", "daemon-reload").CombinedOutput(); err != nil {
			t.Fatalf("daemon-reload: %v: %s", err, out)
		}
		wantMem("after Update and daemon-reload", 96*mib)
	}
	// gVisor runs every container of the Pod in its sandbox's cgroup: the
	// Pod's limit (kubelet's, on the slice) bounds them only if the
	// sandbox's scope is in the slice (assertScope above).
	// Stats read the container's cgroup (the scope; gVisor: its sandbox).
	eventually(t, 30*time.Second, "ContainerStats shows memory", func() error {
		st, err := rc.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: id})
		if err != nil {
			return err
		}
		if st.Stats.GetMemory().GetWorkingSetBytes().GetValue() == 0 && st.Stats.GetMemory().GetUsageBytes().GetValue() == 0 {
			return fmt.Errorf("no memory usage in %v", st.Stats)
		}
		return nil
	})

	// OOM: a child process goes over the limit while the container's main
	// process lives on (systemd may collect the scope of an OOM-killed
	// main process before anyone reads memory.events: README).
	if !h.gvisor {
		oom := create("oom", 32*mib, "tail /dev/zero; sleep 1; exit 3")
		var st *runtimeapi.ContainerStatus
		eventually(t, 90*time.Second, "the OOM container exits", func() error {
			r, err := rc.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: oom})
			if err != nil {
				return err
			}
			if st = r.Status; st.State != runtimeapi.ContainerState_CONTAINER_EXITED {
				return fmt.Errorf("state %v", st.State)
			}
			return nil
		})
		if st.Reason != "OOMKilled" {
			t.Errorf("OOM container: reason %q exit %d, want OOMKilled", st.Reason, st.ExitCode)
		}
	} else if h.name == "custom-runsc" || h.name == "custom-runsc-sb" {
		// Not on custom-runsc-file (the same as custom-runsc here, and an
		// OOM costs minutes under TCG).
		// gVisor: the Pod's limit on the slice bounds the sandbox; a
		// container going over it gets the sandbox, or its own stub
		// process, OOM-killed (gVisor then ends the container). systemd
		// may collect the sandbox's empty scope before its memory.events
		// is read (README): then the reason is Error, as containerd's
		// runc shim gives; a success is never right.
		oom := create("oom", 0, "tail /dev/zero; exit 3")
		var st *runtimeapi.ContainerStatus
		eventually(t, 120*time.Second, "the OOM container exits", func() error {
			r, err := rc.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: oom})
			if err != nil {
				return err
			}
			if st = r.Status; st.State != runtimeapi.ContainerState_CONTAINER_EXITED {
				return fmt.Errorf("state %v", st.State)
			}
			return nil
		})
		t.Logf("gVisor OOM container: reason %q exit %d", st.Reason, st.ExitCode)
		if st.Reason != "OOMKilled" && st.Reason != "Error" || st.ExitCode == 0 {
			t.Errorf("gVisor OOM container: reason %q exit %d, want OOMKilled", st.Reason, st.ExitCode)
		}
	}

	// As kubelet does, until it succeeds: after a gVisor sandbox's OOM
	// death containerd may still be retrying a container's TaskExit
	// (CRI's event backoff), and until then RemovePodSandbox answers
	// "container is still running, to stop first".
	eventually(t, 60*time.Second, "the Pod stopped and removed", func() error {
		if _, err := rc.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
			return fmt.Errorf("StopPodSandbox: %w", err)
		}
		if _, err := rc.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
			return fmt.Errorf("RemovePodSandbox: %w", err)
		}
		return nil
	})
	removed = true
	// Nothing of ours is left: no scope unit, no cgroup below the Pod's
	// slice (kubelet removes the slice itself).
	sliceDir := filepath.Join("/sys/fs/cgroup", unitProps(t, slice, "ControlGroup")["ControlGroup"])
	eventually(t, 30*time.Second, "no unit or cgroup left in "+slice, func() error {
		for _, u := range []string{podUnit, unit} {
			if p := unitProps(t, u, "LoadState", "ActiveState"); p["LoadState"] == "loaded" && p["ActiveState"] != "inactive" {
				return fmt.Errorf("%s left: %v", u, p)
			}
		}
		ents, err := os.ReadDir(sliceDir)
		if err != nil {
			return err
		}
		for _, en := range ents {
			if en.IsDir() {
				return fmt.Errorf("cgroup %s/%s left", sliceDir, en.Name())
			}
		}
		return nil
	})
}

// TestSystemdCgroupDriverMismatch: a cgroupfs parent on a systemd handler,
// and a slice on a cgroupfs handler, are refused at RunPodSandbox with
// InvalidArgument naming both, not half-created.
func TestSystemdCgroupDriverMismatch(t *testing.T) {
	requireSystemd(t)
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		sdConfig := writeSystemdConfig(t, like.backend)
		handlers := []sdHandler{
			{name: "systemd", toml: fmt.Sprintf("    runtime_type = \"io.containerd.custom.v2\"\n    [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.systemd.options]\n      ConfigPath = %q\n", sdConfig)},
			{name: "cgroupfs", toml: fmt.Sprintf("    runtime_type = \"io.containerd.custom.v2\"\n    [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.cgroupfs.options]\n      ConfigPath = %q\n", filepath.Join(cfgDir, like.backend+".toml"))},
		}
		_, rc := systemdDaemon(t, like, handlers, sdConfig)
		uid := containerID(t, "uid")
		_, slice := podSlice(t, uid, 256<<20)
		for _, c := range []struct{ handler, parent, want string }{
			{"systemd", "/kubepods/besteffort/pod" + uid, "systemd"},
			{"cgroupfs", slice, "cgroupfs"},
		} {
			t.Run(c.handler, func(t *testing.T) {
				ctx := testContext(t)
				cfg := &runtimeapi.PodSandboxConfig{
					Metadata: &runtimeapi.PodSandboxMetadata{Name: "mismatch-" + c.handler, Uid: uid + c.handler, Namespace: "test"},
					Linux: &runtimeapi.LinuxPodSandboxConfig{CgroupParent: c.parent, SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
						NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
					}},
				}
				pod, err := rc.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: c.handler})
				if err == nil {
					_, _ = rc.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.PodSandboxId})
					_, _ = rc.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.PodSandboxId})
					t.Fatalf("RunPodSandbox with parent %s on a %s handler succeeded, want InvalidArgument", c.parent, c.want)
				}
				// The shim sees the pause container's cgroups path, which
				// names the Pod's slice (or holds the cgroupfs parent).
				msg, named := err.Error(), filepath.Base(c.parent)
				if status.Code(err) != codes.InvalidArgument || !strings.Contains(msg, named) || !strings.Contains(msg, c.want) {
					t.Errorf("RunPodSandbox: %v (code %v), want InvalidArgument naming %s and the %s driver", err, status.Code(err), named, c.want)
				}
			})
		}
	})
}

// sliceLeftovers says what of ours is left of a Pod in its slice: a unit
// of units still loaded and not inactive, or a cgroup directory below the
// slice's (kubelet removes the slice itself). "" when nothing is.
func sliceLeftovers(t *testing.T, slice string, units ...string) string {
	t.Helper()
	for _, u := range units {
		if p := unitProps(t, u, "LoadState", "ActiveState"); p["LoadState"] == "loaded" && p["ActiveState"] != "inactive" {
			return fmt.Sprintf("%s left: %v", u, p)
		}
	}
	dir := filepath.Join("/sys/fs/cgroup", unitProps(t, slice, "ControlGroup")["ControlGroup"])
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err.Error()
	}
	for _, en := range ents {
		if en.IsDir() {
			return fmt.Sprintf("cgroup %s/%s left", dir, en.Name())
		}
	}
	return ""
}

// sdPod is a Pod of a systemd handler in its own slice, driven through CRI.
type sdPod struct {
	t     *testing.T
	rc    func() runtimeapi.RuntimeServiceClient
	h     sdHandler
	slice string
	cfg   *runtimeapi.PodSandboxConfig
	id    string
	ctrs  []string
	gone  bool
}

func runSdPod(t *testing.T, e *env, rc func() runtimeapi.RuntimeServiceClient, h sdHandler, memoryMax int64) *sdPod {
	t.Helper()
	uid := containerID(t, "uid-"+h.name)
	slice, parent := podSlice(t, uid, memoryMax)
	p := &sdPod{t: t, rc: rc, h: h, slice: slice, cfg: &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "sd-" + h.name, Uid: uid, Namespace: "test"},
		LogDirectory: t.TempDir(),
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: parent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			},
		},
	}}
	r, err := rc().RunPodSandbox(testContext(t), &runtimeapi.RunPodSandboxRequest{Config: p.cfg, RuntimeHandler: h.name})
	if err != nil {
		t.Fatalf("%s: RunPodSandbox: %v", h.name, err)
	}
	p.id = r.PodSandboxId
	logOnFailure(t, e, p.id)
	t.Cleanup(func() {
		if !p.gone {
			ctx := context.Background()
			_, _ = rc().StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id})
			_, _ = rc().RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id})
		}
	})
	return p
}

func (p *sdPod) start(name string, mem int64, cmd string) string {
	t := p.t
	t.Helper()
	ctx := testContext(t)
	cc, err := p.rc().CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: p.id,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: name},
			Image:    &runtimeapi.ImageSpec{Image: criImage},
			Command:  []string{"sh", "-c", cmd},
			LogPath:  name + ".log",
			Linux:    &runtimeapi.LinuxContainerConfig{Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: mem}},
		},
		SandboxConfig: p.cfg,
	})
	if err != nil {
		t.Fatalf("%s: CreateContainer %s: %v", p.h.name, name, err)
	}
	if _, err := p.rc().StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cc.ContainerId}); err != nil {
		t.Fatalf("%s: StartContainer %s: %v", p.h.name, name, err)
	}
	p.ctrs = append(p.ctrs, cc.ContainerId)
	return cc.ContainerId
}

// units are the scope units the Pod's sandbox and containers have (or had).
func (p *sdPod) units() []string {
	us := []string{"cri-containerd-" + p.id + ".scope"}
	for _, c := range p.ctrs {
		us = append(us, "cri-containerd-"+c+".scope")
	}
	return us
}

// working checks that the Pod still serves: its first container runs and
// execs, and its scopes are active in the Pod's slice.
func (p *sdPod) working(when string) {
	t := p.t
	t.Helper()
	ctx := testContext(t)
	r, err := p.rc().ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: p.ctrs[0], Cmd: []string{"echo", "ok"}, Timeout: 60})
	if err != nil || r.ExitCode != 0 || strings.TrimSpace(string(r.Stdout)) != "ok" {
		t.Errorf("%s: %s: ExecSync: %v %+v", p.h.name, when, err, r)
	}
	us := p.units()
	if p.h.gvisor {
		us = us[:1] // gVisor's containers run in the sandbox's scope
	}
	for _, u := range us {
		assertScope(t, u, p.slice)
	}
}

// remove stops and removes the Pod and checks that nothing of it is left.
func (p *sdPod) remove(when string) {
	t := p.t
	t.Helper()
	ctx := testContext(t)
	if _, err := p.rc().StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Errorf("%s: %s: StopPodSandbox: %v", p.h.name, when, err)
	}
	if _, err := p.rc().RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Errorf("%s: %s: RemovePodSandbox: %v", p.h.name, when, err)
	}
	p.gone = true
	deadline := time.Now().Add(30 * time.Second)
	for {
		left := sliceLeftovers(t, p.slice, p.units()...)
		if left == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: %s: %s", p.h.name, when, left)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSystemdFaults: under the systemd driver, running Pods keep working
// across a containerd restart and a systemd re-exec (their scopes stay in
// their slices, execs and new containers work), and a Pod whose shim was
// SIGKILLed leaves no scope unit and no cgroup once removed.
func TestSystemdFaults(t *testing.T) {
	requireSystemd(t)
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		sdConfig := writeSystemdConfig(t, like.backend)
		var handlers []sdHandler
		for _, h := range systemdHandlers(like.backend, sdConfig) {
			switch h.name {
			case "custom-runc", "custom-runc-cli", "custom-runc-sb", "custom-runsc", "custom-runsc-sb":
				handlers = append(handlers, h)
			}
		}
		e, first := systemdDaemon(t, like, handlers, sdConfig)
		rcNow := first
		rc := func() runtimeapi.RuntimeServiceClient { return rcNow }
		var pods []*sdPod
		for _, h := range handlers {
			p := runSdPod(t, e, rc, h, 256<<20)
			p.start("app", 64<<20, "sleep 100000")
			pods = append(pods, p)
		}

		if err := e.d.Restart(); err != nil {
			t.Fatal(err)
		}
		eventually(t, 60*time.Second, "CRI serves again after the restart", func() error {
			_, err := rc().Status(testContext(t), &runtimeapi.StatusRequest{})
			return err
		})
		for _, p := range pods {
			p.working("after a containerd restart")
			p.start("after-restart", 64<<20, "sleep 100000")
			p.working("a container created after the containerd restart")
		}

		if out, err := exec.Command("systemctl", "daemon-reexec").CombinedOutput(); err != nil {
			t.Fatalf("daemon-reexec: %v: %s", err, out)
		}
		for _, p := range pods {
			p.working("after systemctl daemon-reexec")
			p.start("after-reexec", 64<<20, "sleep 100000")
			p.working("a container created after the systemd re-exec")
		}

		// One shim at a time, as they crash: containerd gives the shim's
		// delete command 5 s to clean up after it.
		for _, p := range pods {
			// A pause-based Pod's dead shim is cleaned up by one "delete"
			// per container, each cut at 5 s: under TCG a delete took
			// longer, and the pause or sandbox scope stayed running
			// until the delete killed the container's cgroup first.
			shims, _ := harness.ProcessesMatching(shimName + " -namespace " + criNamespace + " -id " + p.id)
			if len(shims) != 1 {
				t.Fatalf("%s: want the Pod's shim, got %+v", p.h.name, shims)
			}
			if err := unix.Kill(shims[0].Pid, unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			// As kubelet does: remove the Pod once CRI reports its
			// containers exited.
			for _, c := range p.ctrs {
				eventually(t, 90*time.Second, p.h.name+": "+c+" exited after its shim's SIGKILL", func() error {
					r, err := rc().ContainerStatus(testContext(t), &runtimeapi.ContainerStatusRequest{ContainerId: c})
					if err != nil {
						return err
					}
					if r.Status.State != runtimeapi.ContainerState_CONTAINER_EXITED {
						return fmt.Errorf("state %v", r.Status.State)
					}
					return nil
				})
			}
			p.remove("after its shim was SIGKILLed")
		}
	})
}

// TestSystemdCrun: Debian's crun runs a container through the CLI path
// with the systemd driver: a scope in the given slice with the memory
// limit as a unit property, gone after delete.
func TestSystemdCrun(t *testing.T) {
	requireSystemd(t)
	forEach(t, func(t *testing.T, e *env) {
		e.skipOn(t, "runsc", "crun is a runc-backend binary")
		harness.RequireDep(t, "crun (scripts/deps.sh installs it)", harness.NeedExecutable("/usr/bin/crun"))
		id := containerID(t, "")
		slice, _ := podSlice(t, containerID(t, "uid"), 256<<20)
		unit := "crun-" + id + ".scope"
		c := newContainer(t, e, id, &runtimeoptions.Options{ConfigBody: []byte("[runc]\nbinary_name = \"crun\"\nsystemd_cgroup = true\n")},
			oci.WithProcessArgs("sh", "-c", "exec sleep 100000"), withSpecVersion("1.0.2"),
			oci.WithCgroup(slice+":crun:"+id), oci.WithMemoryLimit(64<<20))
		ctx := testContext(t)
		var out outputs
		task, err := c.NewTask(ctx, out.creator())
		if err != nil {
			t.Fatal(err)
		}
		statusC, err := task.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Start(ctx); err != nil {
			t.Fatal(err)
		}
		assertScope(t, unit, slice)
		// The limit must bound the container's process: its own cgroup
		// (crun may use a sub-cgroup of the scope) or the scope.
		own, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", task.Pid()))
		if err != nil {
			t.Fatal(err)
		}
		cg := filepath.Join("/sys/fs/cgroup", strings.TrimPrefix(strings.TrimSpace(string(own)), "0::"))
		var limits []string
		for d := cg; strings.HasPrefix(d, filepath.Join("/sys/fs/cgroup", unitProps(t, unit, "ControlGroup")["ControlGroup"])); d = filepath.Dir(d) {
			m, _ := os.ReadFile(filepath.Join(d, "memory.max"))
			limits = append(limits, d+"="+strings.TrimSpace(string(m)))
		}
		t.Logf("%s: MemoryMax=%s; memory.max from the process's cgroup up: %v", unit, unitProps(t, unit, "MemoryMax")["MemoryMax"], limits)
		if !strings.Contains(strings.Join(limits, " "), fmt.Sprintf("=%d", 64<<20)) {
			t.Errorf("crun under the systemd driver: no 64 MiB memory.max on the container's cgroups: %v", limits)
		}
		if err := task.Kill(ctx, unix.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitExit(t, statusC, 30*time.Second)
		if _, err := task.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "nothing left in "+slice, func() error {
			if left := sliceLeftovers(t, slice, unit); left != "" {
				return errors.New(left)
			}
			return nil
		})
	})
}
