package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

const sbHandler = "custom-sb"

// sandboxCRIConfig registers this shim as a CRI runtime handler with
// sandboxer = "shim" (containerd's Sandbox API: no pause container), and a
// point-to-point CNI network (Debian's ptp and host-local plugins: a veth
// per pod, no shared bridge to clean up) so pods get a network namespace
// of their own, as on a node. containerd 2.2 fails every StartContainer of a
// sandboxed handler that has an options table (it can only pass the
// sandbox's address in runc options), so there the backend comes from the
// daemon's default config ($CONTAINERD_SHIM_CUSTOM_CONFIG) instead.
func sandboxCRIConfig(t *testing.T, version, backend string) string {
	return sandboxCRIConfigFor(t, version, filepath.Join(cfgDir, backend+".toml"))
}

// sandboxCRIConfigFor is sandboxCRIConfig with the handler's shim config
// file given (on 2.2, the daemon's default config must name the same).
func sandboxCRIConfigFor(t *testing.T, version, configPath string) string {
	cniDir := t.TempDir()
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "sb-ptp", "plugins": [
  {"type": "ptp", "ipMasq": false, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.231.%d.0/24"}]], "dataDir": %q}},
  {"type": "loopback"}]}`, os.Getpid()%250, filepath.Join(cniDir, "ipam"))
	if err := os.WriteFile(filepath.Join(cniDir, "10-lo.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	options := fmt.Sprintf(`    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.%s.options]
      ConfigPath = %q
`, sbHandler, configPath)
	extra := "    disable_pause_image_pull = true\n"
	if strings.HasPrefix(version, "2.2.") {
		options, extra = "", ""
	}
	return fmt.Sprintf(`[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = %q
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.%s]
    runtime_type = "io.containerd.custom.v2"
    sandboxer = "shim"
%s%s`, cniDir, sbHandler, extra, options)
}

func sandboxDaemon(t *testing.T, like *env) (*env, func() runtimeapi.RuntimeServiceClient) {
	t.Helper()
	if harness.MajorVersion(like.version) == 1 {
		t.Skip("containerd 1.7: the shim sandboxer needs ENABLE_CRI_SANDBOXES, which moves every pod to 1.7's experimental CRI server and loses sandbox exits across restarts (README)")
	}
	e := ownDaemon(t, like, func(c *harness.Config) {
		c.EnableCRI = true
		c.ExtraConfig = sandboxCRIConfig(t, like.version, like.backend)
	})
	harness.ImportBusybox(t, e.client, criNamespace)
	// No pause image is imported: a sandboxed pod must not need one.
	return sandboxDaemonClient(t, e)
}

// sandboxDaemonClient returns e and a CRI client maker for it.
func sandboxDaemonClient(t *testing.T, e *env) (*env, func() runtimeapi.RuntimeServiceClient) {
	connect := func() runtimeapi.RuntimeServiceClient {
		conn, err := grpc.NewClient("unix://"+e.d.Address(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return runtimeapi.NewRuntimeServiceClient(conn)
	}
	return e, connect
}

func sandboxPodConfig(t *testing.T, logDir string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "sb", Uid: containerID(t, "uid"), Namespace: "test"},
		Hostname:     "sb-pod",
		LogDirectory: logDir,
		DnsConfig:    &runtimeapi.DNSConfig{Servers: []string{"10.9.8.7"}, Searches: []string{"test.svc.example"}},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: "/custom-sb-test-" + runID,
			Sysctls:      map[string]string{"kernel.shm_rmid_forced": "1"},
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_POD},
			},
		},
	}
}

// TestSandboxedPod: a pod on a handler with sandboxer = "shim" runs with no
// pause container and no pause image; its containers share the sandbox's
// namespaces and get what a pause pod gives them (hostname, DNS file,
// /dev/shm, sysctls, one PID namespace); stop and remove leave nothing.
func TestSandboxedPod(t *testing.T) {
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		e, connect := sandboxDaemon(t, like)
		rc := connect()
		ctx := testContext(t)
		logDir := t.TempDir()
		podCfg := sandboxPodConfig(t, logDir)
		pod, err := rc.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg, RuntimeHandler: sbHandler})
		if err != nil {
			t.Fatalf("RunPodSandbox: %v", err)
		}
		podID := pod.PodSandboxId
		t.Cleanup(func() {
			ctx := context.Background()
			rc := connect()
			_, _ = rc.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID})
			_, _ = rc.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID})
		})
		st, err := rc.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: podID})
		if err != nil || st.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
			t.Fatalf("pod status: %v %v", st, err)
		}
		criCtx := namespaces.WithNamespace(ctx, criNamespace)
		if cs, err := e.client.Containers(criCtx); err != nil || len(cs) != 0 {
			t.Fatalf("containerd's store holds %d containers for a sandboxed pod with none (a pause container?): %v", len(cs), err)
		}

		start := func(name string, cmd ...string) string {
			t.Helper()
			cc, err := rc.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
				PodSandboxId: podID,
				Config: &runtimeapi.ContainerConfig{
					Metadata: &runtimeapi.ContainerMetadata{Name: name},
					Image:    &runtimeapi.ImageSpec{Image: criImage},
					Command:  cmd,
					LogPath:  name + ".log",
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
		a := start("a", "sh", "-c", "echo shared > /dev/shm/from-a; exec sleep 1000")
		b := start("b", "sleep", "1000")
		exec := func(id string, cmd ...string) string {
			t.Helper()
			r, err := rc.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 20})
			if err != nil || r.ExitCode != 0 {
				t.Fatalf("exec %v in %s: %v %v %s", cmd, id, r, err, r.GetStderr())
			}
			return strings.TrimSpace(string(r.Stdout))
		}
		if got := exec(b, "hostname"); got != "sb-pod" {
			t.Errorf("hostname %q, want sb-pod", got)
		}
		if got := exec(b, "cat", "/etc/resolv.conf"); !strings.Contains(got, "nameserver 10.9.8.7") || !strings.Contains(got, "search test.svc.example") {
			t.Errorf("resolv.conf %q", got)
		}
		if got := exec(b, "cat", "/etc/hosts"); !strings.Contains(got, "localhost") {
			t.Errorf("/etc/hosts %q", got)
		}
		eventually(t, 10*time.Second, "container a's /dev/shm file seen from b", func() error {
			r, err := rc.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: b, Cmd: []string{"cat", "/dev/shm/from-a"}, Timeout: 10})
			if err != nil {
				return err
			}
			if strings.TrimSpace(string(r.GetStdout())) != "shared" {
				return fmt.Errorf("stdout %q, stderr %q", r.GetStdout(), r.GetStderr())
			}
			return nil
		})
		if like.backend == "runc" {
			if got := exec(b, "cat", "/proc/sys/kernel/shm_rmid_forced"); got != "1" {
				t.Errorf("pod sysctl kernel.shm_rmid_forced = %q in the container", got)
			}
			// One PID namespace for the pod, whose init is the holder.
			if got := exec(b, "sh", "-c", "ps -o pid,comm | grep -c sleep"); got != "2" {
				t.Errorf("containers a and b do not share a PID namespace: %q sleep processes seen from b", got)
			}
		}
		if _, err := rc.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: a}); err != nil {
			t.Errorf("ContainerStats: %v", err)
		}
		if strings.HasPrefix(like.version, "2.4.") {
			if s, err := rc.PodSandboxStats(ctx, &runtimeapi.PodSandboxStatsRequest{PodSandboxId: podID}); err != nil || s.GetStats().GetLinux().GetCpu() == nil {
				t.Errorf("PodSandboxStats: %v %v", s, err)
			}
		}
		shims, _ := harness.ProcessesMatching(shimName + " -namespace " + criNamespace + " -id " + podID)
		if len(shims) != 1 {
			t.Errorf("want one shim for the pod, got %+v", shims)
		}

		if _, err := rc.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
			t.Fatalf("StopPodSandbox with running containers: %v", err)
		}
		eventually(t, 30*time.Second, "the pod is NotReady after StopPodSandbox", func() error {
			st, err := rc.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: podID})
			if err != nil {
				return err
			}
			if st.Status.State != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
				return fmt.Errorf("state %v", st.Status.State)
			}
			return nil
		})
		if _, err := rc.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
			t.Fatalf("RemovePodSandbox: %v", err)
		}
		assertPodGone(t, e, podID)
		report(t, fmt.Sprintf("sandboxed-pod %s: no pause container; hostname, resolv.conf, hosts, shared /dev/shm%s; stop with running containers; nothing left",
			like.name(), map[bool]string{true: ", sysctl, one PID namespace", false: ""}[like.backend == "runc"]))
	})
}

// assertPodGone checks that nothing of a sandboxed pod is left: its shim,
// its sandbox process, CRI's files and mounts for it.
func assertPodGone(t *testing.T, e *env, podID string) {
	t.Helper()
	eventually(t, 30*time.Second, "the pod's shim and sandbox process exit", func() error {
		ps, _ := harness.ProcessesMatching(shimName + " -namespace " + criNamespace + " -id " + podID)
		for _, s := range ps {
			// A shared shim (pods_per_shim) outlives the Pod it was
			// started for while it serves others; its tests check it.
			if !strings.Contains(s.Cmdline, " -pool ") {
				return fmt.Errorf("the pod's shim still running: %+v", s)
			}
		}
		if ps := podSandboxProcesses(podID); len(ps) > 0 {
			return fmt.Errorf("the pod's sandbox processes still running: %+v", ps)
		}
		return nil
	})
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mounts), "\n") {
		if strings.Contains(l, podID) {
			t.Errorf("mount left: %s", l)
		}
	}
	for _, d := range []string{
		filepath.Join(e.d.RootDir(), "io.containerd.grpc.v1.cri", "sandboxes", podID),
		filepath.Join(e.d.StateDir(), "io.containerd.grpc.v1.cri", "sandboxes", podID),
		// gVisor: the pod's runsc root, with every sub-container's state.
		filepath.Join(e.stateRoot(), criNamespace, podID),
	} {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("%s left", d)
		}
	}
}

// sbPod is a sandboxed pod under test with its CRI client.
type sbPod struct {
	t      *testing.T
	e      *env
	rc     runtimeapi.RuntimeServiceClient
	ctx    context.Context
	id     string
	cfg    *runtimeapi.PodSandboxConfig
	logDir string
}

func runSandboxedPod(t *testing.T, like *env) (*sbPod, func() runtimeapi.RuntimeServiceClient) {
	t.Helper()
	e, connect := sandboxDaemon(t, like)
	p := &sbPod{t: t, e: e, rc: connect(), ctx: testContext(t), logDir: t.TempDir()}
	p.cfg = sandboxPodConfig(t, p.logDir)
	pod, err := p.rc.RunPodSandbox(p.ctx, &runtimeapi.RunPodSandboxRequest{Config: p.cfg, RuntimeHandler: sbHandler})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	p.id = pod.PodSandboxId
	t.Cleanup(func() {
		rc := connect()
		_, _ = rc.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id})
		_, _ = rc.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id})
	})
	return p, connect
}

func (p *sbPod) start(name string, cmd ...string) string {
	p.t.Helper()
	cc, err := p.rc.CreateContainer(p.ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: p.id,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: name},
			Image:    &runtimeapi.ImageSpec{Image: criImage},
			Command:  cmd,
			LogPath:  name + ".log",
		},
		SandboxConfig: p.cfg,
	})
	if err != nil {
		p.t.Fatalf("CreateContainer %s: %v", name, err)
	}
	if _, err := p.rc.StartContainer(p.ctx, &runtimeapi.StartContainerRequest{ContainerId: cc.ContainerId}); err != nil {
		p.t.Fatalf("StartContainer %s: %v", name, err)
	}
	return cc.ContainerId
}

func (p *sbPod) waitState(want runtimeapi.PodSandboxState) {
	p.t.Helper()
	eventually(p.t, 60*time.Second, "pod "+want.String(), func() error {
		st, err := p.rc.PodSandboxStatus(p.ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.id})
		if err != nil {
			return err
		}
		if st.Status.State != want {
			return fmt.Errorf("pod is %v", st.Status.State)
		}
		return nil
	})
}

func (p *sbPod) waitExited(id string, code int32) {
	p.t.Helper()
	eventually(p.t, 60*time.Second, "container "+id+" exited", func() error {
		st, err := p.rc.ContainerStatus(p.ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			return err
		}
		if st.Status.State != runtimeapi.ContainerState_CONTAINER_EXITED {
			return fmt.Errorf("container is %v", st.Status.State)
		}
		if code >= 0 && st.Status.ExitCode != code {
			return fmt.Errorf("exit code %d, want %d", st.Status.ExitCode, code)
		}
		return nil
	})
}

func (p *sbPod) remove() {
	p.t.Helper()
	if _, err := p.rc.StopPodSandbox(p.ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
		p.t.Fatalf("StopPodSandbox: %v", err)
	}
	if _, err := p.rc.RemovePodSandbox(p.ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
		p.t.Fatalf("RemovePodSandbox: %v", err)
	}
	assertPodGone(p.t, p.e, p.id)
}

// TestSandboxedPodAcrossContainerdRestart: with containerd down and up
// again, the pod stays Ready, its running container is still reached (its
// exit is delivered), and a container created afterwards still gets the
// pod's hosts, DNS and hostname files (containerd's restart removes CRI
// directories it cannot tie to a pause container; the shim lays them out
// again).
func TestSandboxedPodAcrossContainerdRestart(t *testing.T) {
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		p, connect := runSandboxedPod(t, like)
		a := p.start("a", "sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.1; done")
		if err := p.e.d.Restart(); err != nil {
			t.Fatal(err)
		}
		p.rc = connect()
		eventually(t, 60*time.Second, "CRI serves after the restart", func() error {
			_, err := p.rc.Status(p.ctx, &runtimeapi.StatusRequest{})
			return err
		})
		p.waitState(runtimeapi.PodSandboxState_SANDBOX_READY)
		b := p.start("b", "sleep", "1000")
		for _, f := range []string{"/etc/hosts", "/etc/resolv.conf", "/etc/hostname"} {
			r, err := p.rc.ExecSync(p.ctx, &runtimeapi.ExecSyncRequest{ContainerId: b, Cmd: []string{"cat", f}, Timeout: 20})
			if err != nil || r.ExitCode != 0 || len(r.Stdout) == 0 {
				t.Errorf("%s in a container created after the restart: %v %v %q", f, r, err, r.GetStderr())
			}
		}
		if _, err := p.rc.StopContainer(p.ctx, &runtimeapi.StopContainerRequest{ContainerId: a, Timeout: 10}); err != nil {
			t.Fatalf("StopContainer after the restart: %v", err)
		}
		p.waitExited(a, 7)
		p.remove()
		report(t, fmt.Sprintf("sandboxed-pod-restart %s: pod Ready across a containerd restart, exit 7 delivered after it, pod files for a new container, nothing left", like.name()))
	})
}

// TestSandboxedPodShimKilled: the pod's shim SIGKILLed: the pod goes
// NotReady, its containers' exits are reported, and once the pod is
// removed nothing of it is left (sandbox process, mounts, files).
func TestSandboxedPodShimKilled(t *testing.T) {
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		p, _ := runSandboxedPod(t, like)
		a := p.start("a", "sleep", "1000")
		shims, _ := harness.ProcessesMatching(shimName + " -namespace " + criNamespace + " -id " + p.id)
		if len(shims) != 1 {
			t.Fatalf("want the pod's shim, got %+v", shims)
		}
		if err := syscall.Kill(shims[0].Pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		p.waitState(runtimeapi.PodSandboxState_SANDBOX_NOTREADY)
		p.waitExited(a, -1)
		p.remove()
		report(t, fmt.Sprintf("sandboxed-pod-shim-killed %s: pod NotReady, container exit reported, nothing left", like.name()))
	})
}

// TestSandboxedPodProcessDies: the pod's sandbox process (the holder, or
// gVisor's sandbox) killed from outside: the pod goes NotReady, as a pause
// pod does when pause dies.
func TestSandboxedPodProcessDies(t *testing.T) {
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		p, _ := runSandboxedPod(t, like)
		p.start("a", "sleep", "1000")
		st, err := p.rc.PodSandboxStatus(p.ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.id, Verbose: true})
		if err != nil {
			t.Fatal(err)
		}
		pid := sandboxPid(t, p)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill the sandbox process %d: %v (status %v)", pid, err, st.Status.State)
		}
		p.waitState(runtimeapi.PodSandboxState_SANDBOX_NOTREADY)
		p.remove()
		report(t, fmt.Sprintf("sandboxed-pod-process-killed %s: pod NotReady, nothing left after removal", like.name()))
	})
}

// sandboxPid finds the pod's sandbox process: the holder (runc) or the
// runsc sandbox (gVisor).
func sandboxPid(t *testing.T, p *sbPod) int {
	t.Helper()
	pattern := "containerd-shim-custom-v2 sandbox-holder"
	if p.e.backend == "runsc" {
		pattern = "runsc-sandbox"
	}
	for _, c := range podSandboxProcesses(p.id) {
		if strings.Contains(c.Cmdline, pattern) {
			return c.Pid
		}
	}
	t.Fatalf("no %q process of pod %s", pattern, p.id)
	return 0
}

// podSandboxProcesses lists pod's holder (its cgroup is named for the pod)
// and gVisor processes (their command line names it): per pod, as other
// Pods of a shared shim keep theirs.
func podSandboxProcesses(podID string) []harness.Proc {
	var mine []harness.Proc
	for _, pat := range []string{"containerd-shim-custom-v2 sandbox-holder", "runsc-"} {
		ps, _ := harness.ProcessesMatching(pat)
		for _, c := range ps {
			cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", c.Pid))
			if strings.Contains(c.Cmdline, podID) || strings.Contains(string(cg), podID) {
				mine = append(mine, c)
			}
		}
	}
	return mine
}

// TestSandboxedGVisorPodStuckSandbox: a gVisor sandbox that no longer
// answers (stopped here with SIGSTOP; in the field a wedged sentry,
// google/gvisor#14408) does not keep its Pod forever: StopPodSandbox ends
// the sandbox on the host once runsc's kill gets no answer, the
// container's exit is reported, and RemovePodSandbox leaves nothing.
// Before, StopPodSandbox never returned (runsc's kill of the container
// hung) and the Pod could not be removed.
func TestSandboxedGVisorPodStuckSandbox(t *testing.T) {
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		like.skipOn(t, "runc", "gVisor's sandbox")
		p, _ := runSandboxedPod(t, like)
		a := p.start("a", "sleep", "1000")
		pid := sandboxPid(t, p)
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		if _, err := p.rc.StopPodSandbox(p.ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
			t.Fatalf("StopPodSandbox of a stuck sandbox: %v", err)
		}
		p.waitExited(a, -1)
		p.remove()
		report(t, fmt.Sprintf("sandboxed-pod-stuck-sandbox %s: a stopped sandbox ended on the host, pod removed in %.1fs, nothing left", like.name(), time.Since(began).Seconds()))
	})
}
