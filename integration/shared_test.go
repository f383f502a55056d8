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

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// sharedConfig writes the backend's handler configuration with
// pods_per_shim = n (docs/shared-shim.md) and returns its path.
func sharedConfig(t *testing.T, backend string, n int) string {
	t.Helper()
	base, err := os.ReadFile(filepath.Join(cfgDir, backend+".toml"))
	if err != nil {
		t.Fatal(err)
	}
	// pods_per_shim is a top-level key: before the backend's table.
	head, table, _ := strings.Cut(string(base), "\n[")
	conf := fmt.Sprintf("%s\npods_per_shim = %d\n", head, n)
	if table != "" {
		conf += "[" + table
	}
	path := filepath.Join(t.TempDir(), "shared.toml")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// sharedSandboxDaemon is sandboxDaemon with pods_per_shim = n in the
// sandboxed handler's configuration.
func sharedSandboxDaemon(t *testing.T, like *env, n int) (*env, func() runtimeapi.RuntimeServiceClient) {
	t.Helper()
	if harness.MajorVersion(like.version) == 1 {
		t.Skip("containerd 1.7: no shim sandboxer (README)")
	}
	path := sharedConfig(t, like.backend, n)
	e := ownDaemon(t, like, func(c *harness.Config) {
		c.EnableCRI = true
		c.ExtraConfig = sandboxCRIConfigFor(t, like.version, path)
		c.Env = append(c.Env, "CONTAINERD_SHIM_CUSTOM_CONFIG="+path)
	})
	harness.ImportBusybox(t, e.client, criNamespace)
	_, connect := sandboxDaemonClient(t, e)
	return e, connect
}

// servingShims lists the shim server processes of daemon e.
func servingShims(t *testing.T, e *env) []harness.Proc {
	t.Helper()
	ps, err := harness.ProcessesMatching(shimName + " -namespace " + criNamespace + " -id ")
	if err != nil {
		t.Fatal(err)
	}
	var mine []harness.Proc
	for _, p := range ps {
		if strings.Contains(p.Cmdline, "-address "+e.d.Address()+" ") && strings.Contains(p.Cmdline, " -socket ") {
			mine = append(mine, p)
		}
	}
	return mine
}

// TestSharedShimPods: with pods_per_shim = 2, three Pods run on two shim
// processes. The Pod whose id the shared shim carries (its bundle is the
// shim's working directory and log) is removed first: its neighbour goes on
// (exec, stats, a new container and its log, a stop), and a fourth Pod
// takes the freed place without a new process; across a containerd
// restart every Pod is served. SIGKILL of that shim ends
// exactly its Pods (exits reported, nothing left) while the other shim's
// Pod runs on.
func TestSharedShimPods(t *testing.T) {
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		e, connect := sharedSandboxDaemon(t, like, 2)
		sharedShimScenario(t, like, e, connect, sbHandler, "sandboxed")
	})
}

// TestSharedShimPausePods: the same on the pause path (handler "custom",
// a pause container per Pod, host network: no CNI needed), on every
// containerd line.
func TestSharedShimPausePods(t *testing.T) {
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		e, connect := criDaemonWith(t, like, sharedConfig(t, like.backend, 2))
		sharedShimScenario(t, like, e, connect, criHandler, "pause")
	})
}

func sharedShimScenario(t *testing.T, like *env, e *env, connect func() runtimeapi.RuntimeServiceClient, handler, path string) {
	{
		var pods []*sbPod
		var apps []string
		newPod := func(i int) {
			p := &sbPod{t: t, e: e, rc: connect(), ctx: testContext(t), logDir: t.TempDir()}
			p.cfg = sandboxPodConfig(t, p.logDir)
			p.cfg.Metadata.Name = fmt.Sprintf("shared-%d", i)
			p.cfg.Metadata.Uid = containerID(t, fmt.Sprintf("uid%d", i))
			if path == "pause" {
				p.cfg.Linux.SecurityContext.NamespaceOptions.Network = runtimeapi.NamespaceMode_NODE
				p.cfg.Hostname = ""
			}
			pod, err := p.rc.RunPodSandbox(p.ctx, &runtimeapi.RunPodSandboxRequest{Config: p.cfg, RuntimeHandler: handler})
			if err != nil {
				t.Fatalf("RunPodSandbox %d: %v", i, err)
			}
			p.id = pod.PodSandboxId
			t.Cleanup(func() {
				rc := connect()
				_, _ = rc.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id})
				_, _ = rc.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id})
			})
			pods = append(pods, p)
			apps = append(apps, p.start("a", "sleep", "1000"))
		}
		for i := range 3 {
			newPod(i)
		}
		shims := servingShims(t, e)
		if len(shims) != 2 {
			t.Fatalf("3 pods at 2 per shim: %d shim processes, want 2: %+v", len(shims), shims)
		}
		// The first two share the first Pod's shim (its -id).
		var shared harness.Proc
		for _, s := range shims {
			if strings.Contains(s.Cmdline, "-id "+pods[0].id+" ") {
				shared = s
			}
		}
		if shared.Pid == 0 {
			t.Fatalf("no shim serves pod 0 under its id: %+v", shims)
		}

		// The Pod the shim was started for goes; its neighbour and the
		// shim stay, and the neighbour is served as before.
		pods[0].remove()
		if err := syscall.Kill(shared.Pid, 0); err != nil {
			t.Fatalf("the shared shim went with one of its pods: %v", err)
		}
		p := pods[1]
		p.waitState(runtimeapi.PodSandboxState_SANDBOX_READY)
		r, err := p.rc.ExecSync(p.ctx, &runtimeapi.ExecSyncRequest{ContainerId: apps[1], Cmd: []string{"echo", "neighbour"}, Timeout: 20})
		if err != nil || r.ExitCode != 0 || strings.TrimSpace(string(r.Stdout)) != "neighbour" {
			t.Fatalf("exec in the neighbour after its first pod went: %v %v", r, err)
		}
		if _, err := p.rc.ContainerStats(p.ctx, &runtimeapi.ContainerStatsRequest{ContainerId: apps[1]}); err != nil {
			t.Fatalf("stats of the neighbour: %v", err)
		}
		b := p.start("b", "sh", "-c", "echo from-b; exit 3")
		p.waitExited(b, 3)
		eventually(t, 30*time.Second, "the new container's log", func() error {
			data, err := os.ReadFile(filepath.Join(p.logDir, "b.log"))
			if err != nil || !strings.Contains(string(data), "from-b") {
				return fmt.Errorf("b.log: %q: %w", data, err)
			}
			return nil
		})

		// The shim's own log still reaches containerd's: it moved from the
		// gone Pod's fifo to its neighbour's. SIGUSR1 makes the shim log
		// its goroutines.
		if err := syscall.Kill(shared.Pid, syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "the shared shim's log after its first pod went", func() error {
			data, err := os.ReadFile(e.d.LogPath())
			if err != nil || !strings.Contains(string(data), "goroutine stack dump") {
				return fmt.Errorf("no stack dump of shim %d in %s (read: %w)", shared.Pid, e.d.LogPath(), err)
			}
			return nil
		})

		// A fourth Pod takes the freed place: still two shims.
		newPod(3)
		if got := servingShims(t, e); len(got) != 2 {
			t.Fatalf("a fourth pod with a place free: %d shim processes, want 2: %+v", len(got), got)
		}

		// containerd restarts: it reconnects to the shared shim once per
		// Pod, and each is served as before.
		if err := e.d.Restart(); err != nil {
			t.Fatal(err)
		}
		rc := connect()
		eventually(t, 60*time.Second, "CRI serves after the restart", func() error {
			_, err := rc.Status(testContext(t), &runtimeapi.StatusRequest{})
			return err
		})
		for _, i := range []int{1, 2, 3} {
			p := pods[i]
			p.rc = rc
			p.waitState(runtimeapi.PodSandboxState_SANDBOX_READY)
			r, err := p.rc.ExecSync(p.ctx, &runtimeapi.ExecSyncRequest{ContainerId: apps[i], Cmd: []string{"true"}, Timeout: 20})
			if err != nil || r.ExitCode != 0 {
				t.Fatalf("exec in pod %d after containerd's restart: %v %v", i, r, err)
			}
		}
		if got := servingShims(t, e); len(got) != 2 || syscall.Kill(shared.Pid, 0) != nil {
			t.Fatalf("after containerd's restart: %+v, want the same 2 shims", got)
		}

		// SIGKILL of the shared shim ends its Pods, not the other shim's.
		if err := syscall.Kill(shared.Pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for _, i := range []int{1, 3} {
			pods[i].waitState(runtimeapi.PodSandboxState_SANDBOX_NOTREADY)
			pods[i].waitExited(apps[i], -1)
		}
		pods[2].waitState(runtimeapi.PodSandboxState_SANDBOX_READY)
		st, err := pods[2].rc.ContainerStatus(pods[2].ctx, &runtimeapi.ContainerStatusRequest{ContainerId: apps[2]})
		if err != nil || st.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Fatalf("the other shim's container: %v %v", st, err)
		}
		// containerd cleans up after a dead shim asynchronously, one id
		// at a time; until it has, a removal can answer "ttrpc: closed"
		// and kubelet retries it.
		for _, i := range []int{1, 3} {
			p := pods[i]
			eventually(t, 60*time.Second, "pod "+p.id+" removed after its shim's death", func() error {
				if _, err := p.rc.StopPodSandbox(p.ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
					return err
				}
				_, err := p.rc.RemovePodSandbox(p.ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id})
				return err
			})
			assertPodGone(t, e, p.id)
		}
		pods[2].remove()
		// Its last Pod gone, the other shim exits too.
		eventually(t, 30*time.Second, "no shared shim left", func() error {
			if got := servingShims(t, e); len(got) > 0 {
				return fmt.Errorf("shims left: %+v", got)
			}
			return nil
		})
		report(t, fmt.Sprintf("shared-shim %s %s: 3 pods on 2 shims; the shim's first pod removed, its neighbour served on (exec, stats, a new container's log); a fourth pod took the place; containerd restarted, every pod served; SIGKILL ended exactly its pods; nothing left", path, like.name()))
	}
}
