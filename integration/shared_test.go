package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// sharedSandboxDaemon is sandboxDaemon with pods_per_shim = n in the
// handler's configuration (docs/shared-shim.md).
func sharedSandboxDaemon(t *testing.T, like *env, n int) (*env, func() runtimeapi.RuntimeServiceClient) {
	t.Helper()
	if harness.MajorVersion(like.version) == 1 {
		t.Skip("containerd 1.7: no shim sandboxer (README)")
	}
	base, err := os.ReadFile(filepath.Join(cfgDir, like.backend+".toml"))
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
// processes; one Pod's stop and remove leaves its neighbour running on the
// same shim; SIGKILL of that shim ends exactly its Pods (their exits
// reported, nothing left) while the other shim's Pod runs on.
func TestSharedShimPods(t *testing.T) {
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		e, connect := sharedSandboxDaemon(t, like, 2)
		var pods []*sbPod
		var apps []string
		for i := range 3 {
			p := &sbPod{t: t, e: e, rc: connect(), ctx: testContext(t), logDir: t.TempDir()}
			p.cfg = sandboxPodConfig(t, p.logDir)
			p.cfg.Metadata.Name = fmt.Sprintf("shared-%d", i)
			p.cfg.Metadata.Uid = containerID(t, fmt.Sprintf("uid%d", i))
			pod, err := p.rc.RunPodSandbox(p.ctx, &runtimeapi.RunPodSandboxRequest{Config: p.cfg, RuntimeHandler: sbHandler})
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

		// One Pod of the shared shim goes; its neighbour and the shim stay.
		pods[1].remove()
		pods[0].waitState(runtimeapi.PodSandboxState_SANDBOX_READY)
		if err := syscall.Kill(shared.Pid, 0); err != nil {
			t.Fatalf("the shared shim went with one of its pods: %v", err)
		}

		// SIGKILL of the shared shim ends its Pod, not the other shim's.
		if err := syscall.Kill(shared.Pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		pods[0].waitState(runtimeapi.PodSandboxState_SANDBOX_NOTREADY)
		pods[0].waitExited(apps[0], -1)
		pods[2].waitState(runtimeapi.PodSandboxState_SANDBOX_READY)
		st, err := pods[2].rc.ContainerStatus(pods[2].ctx, &runtimeapi.ContainerStatusRequest{ContainerId: apps[2]})
		if err != nil || st.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Fatalf("the other shim's container: %v %v", st, err)
		}
		pods[0].remove()
		pods[2].remove()
		report(t, fmt.Sprintf("shared-shim %s: 3 pods on 2 shims; a pod removed, its neighbour ran on; SIGKILL ended exactly its pods; nothing left", like.name()))
	})
}
