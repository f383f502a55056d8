package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

const (
	criNamespace  = "k8s.io" // CRI's containerd namespace
	criHandler    = "custom"
	criPauseImage = "registry.k8s.io/pause:custom-test"
	criImage      = "ghcr.io/containerd/busybox:1.36"
)

// criConfig registers this shim as the CRI runtime handler "custom" with
// the backend's config file, in the config format of containerd's line.
func criConfig(major int, backend string) string {
	cfg := filepath.Join(cfgDir, backend+".toml")
	if major == 1 {
		return fmt.Sprintf(`[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  # 1.7 replaces its built-in runtimes with the file's, and CRI will not
  # load without the default runtime (runc).
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.%s]
    runtime_type = "io.containerd.custom.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.%s.options]
      ConfigPath = %q
`, criPauseImage, criHandler, criHandler, cfg)
	}
	return fmt.Sprintf(`[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = %q
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.%s]
    runtime_type = "io.containerd.custom.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.%s.options]
      ConfigPath = %q
`, criPauseImage, criHandler, criHandler, cfg)
}

// criDaemon starts a daemon of its own with CRI on, the busybox image and
// a pause image in CRI's namespace, and returns a CRI client for it.
func criDaemon(t *testing.T, like *env) (*env, func() runtimeapi.RuntimeServiceClient) {
	t.Helper()
	e := ownDaemon(t, like, func(c *harness.Config) {
		c.EnableCRI = true
		c.ExtraConfig = criConfig(harness.MajorVersion(like.version), like.backend)
	})
	ctx := nsCtx(testContext(t))
	harness.ImportBusybox(t, e.client, criNamespace)
	if _, err := harness.ImportImage(ctx, e.client, criNamespace, pauseImage(t)); err != nil {
		t.Fatalf("import pause image: %v", err)
	}
	connect := func() runtimeapi.RuntimeServiceClient {
		conn, err := grpc.NewClient("unix://"+e.d.Address(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return runtimeapi.NewRuntimeServiceClient(conn)
	}
	return e, connect
}

// pauseImage builds a pause image whose entrypoint sleeps: Debian's
// busybox, made into an OCI archive by scripts/peer/mkoci.sh.
func pauseImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "/bin/busybox", filepath.Join(rootfs, "bin", "busybox")).CombinedOutput(); err != nil {
		t.Fatalf("copy busybox: %v: %s", err, out)
	}
	out := filepath.Join(dir, "pause.tar")
	cmd := exec.Command("bash", filepath.Join(rootDir, "scripts", "peer", "mkoci.sh"), out, rootfs,
		`{"Entrypoint":["/bin/busybox","sleep","2147483647"]}`, criPauseImage)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build pause image: %v: %s", err, b)
	}
	return out
}

// TestCRIStdoutWhileContainerdDown: with CRI, containerd itself reads a
// container's stdout (into the pod's log file). While containerd is
// stopped nobody reads, so the shim's copy and then the container's writes
// block; once containerd is back, CRI reattaches to the shim's fifos, the
// container must write again, and it must still stop on request.
func TestCRIStdoutWhileContainerdDown(t *testing.T) {
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		e, connect := criDaemon(t, like)
		rc := connect()
		ctx := testContext(t)
		logDir := t.TempDir()

		podCfg := &runtimeapi.PodSandboxConfig{
			Metadata:     &runtimeapi.PodSandboxMetadata{Name: "chatty", Uid: containerID(t, "uid"), Namespace: "test"},
			LogDirectory: logDir,
			Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			}},
		}
		pod, err := rc.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg, RuntimeHandler: criHandler})
		if err != nil {
			t.Fatalf("RunPodSandbox: %v", err)
		}
		podID := pod.PodSandboxId
		t.Cleanup(func() {
			ctx := context.Background()
			rc := connect()
			rc.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID})
			rc.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID})
		})
		// About 9 KB of numbered lines every 50 ms: far more than the pipe
		// and fifo buffers hold while containerd is away, yet bounded on disk.
		cc, err := rc.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId: podID,
			Config: &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: "writer"},
				Image:    &runtimeapi.ImageSpec{Image: criImage},
				Command:  []string{"sh", "-c", `i=0; while :; do seq $i $((i+1999)); i=$((i+2000)); sleep 0.05; done`},
				LogPath:  "writer.log",
			},
			SandboxConfig: podCfg,
		})
		if err != nil {
			t.Fatalf("CreateContainer: %v", err)
		}
		ctrID := cc.ContainerId
		if _, err := rc.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ctrID}); err != nil {
			t.Fatalf("StartContainer: %v", err)
		}
		logPath := filepath.Join(logDir, "writer.log")
		size := func() int64 {
			st, err := os.Stat(logPath)
			if err != nil {
				return 0
			}
			return st.Size()
		}
		eventually(t, 30*time.Second, "container log grows past 1 MB", func() error {
			if s := size(); s < 1<<20 {
				return fmt.Errorf("log is %d bytes", s)
			}
			return nil
		})
		st, err := rc.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctrID})
		if err != nil {
			t.Fatal(err)
		}
		if st.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Fatalf("writer is %v before the stop", st.Status.State)
		}

		if err := e.d.Stop(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		stalled := size()
		time.Sleep(3 * time.Second)
		if s := size(); s != stalled {
			t.Errorf("log grew from %d to %d bytes with containerd down: who is reading?", stalled, s)
		}
		if err := e.d.Restart(); err != nil {
			t.Fatal(err)
		}
		rc = connect()
		eventually(t, 60*time.Second, "container writes again after containerd is back", func() error {
			if s := size(); s < stalled+1<<20 {
				return fmt.Errorf("log is %d bytes, %d when containerd stopped", s, stalled)
			}
			return nil
		})
		t.Logf("log %d bytes at the stop, %d after the restart", stalled, size())

		if _, err := rc.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: ctrID, Timeout: 2}); err != nil {
			t.Fatalf("StopContainer after the restart: %v", err)
		}
		st, err = rc.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctrID})
		if err != nil {
			t.Fatal(err)
		}
		if st.Status.State != runtimeapi.ContainerState_CONTAINER_EXITED {
			t.Fatalf("writer is %v after StopContainer", st.Status.State)
		}
		lines, err := contiguousLog(logPath)
		if err != nil {
			t.Errorf("container output across the restart: %v", err)
		} else {
			report(t, fmt.Sprintf("cri-stdout-restart %s: containerd stopped 5s at %d bytes of output; writer resumed, %d lines contiguous, stopped on request, nothing left",
				like.name(), stalled, lines))
		}
		if _, err := rc.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
			t.Fatalf("StopPodSandbox: %v", err)
		}
		if _, err := rc.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
			t.Fatalf("RemovePodSandbox: %v", err)
		}
		eventually(t, 10*time.Second, "the pod's shim exits", func() error {
			ps, _ := harness.ProcessesMatching(shimName + " -namespace " + criNamespace + " -id " + podID)
			if len(ps) > 0 {
				return fmt.Errorf("shim still running: %+v", ps)
			}
			return nil
		})
		mounts, err := harness.MountsUnder(e.d.StateDir())
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range mounts {
			if strings.Contains(m, podID) || strings.Contains(m, ctrID) {
				t.Errorf("mount left behind: %s", m)
			}
		}
		for _, id := range []string{podID, ctrID} {
			if _, err := os.Stat(filepath.Join(e.stateRoot(), criNamespace, id)); !os.IsNotExist(err) {
				t.Errorf("%s state left behind for %s: %v", e.backend, id, err)
			}
		}
	})
}

// contiguousLog checks that a CRI log file holds the numbers 0, 1, 2, ...
// each once and in order: nothing the container wrote was lost or repeated
// while containerd was away. It returns the number of lines.
func contiguousLog(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	next := 0
	for i, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		// <timestamp> <stream> <F|P> <text>
		f := strings.SplitN(line, " ", 4)
		if len(f) != 4 || f[1] != "stdout" || f[2] != "F" {
			return 0, fmt.Errorf("line %d: unexpected %q", i+1, line)
		}
		if f[3] != strconv.Itoa(next) {
			return 0, fmt.Errorf("line %d: got %q, want %d", i+1, f[3], next)
		}
		next++
	}
	if next == 0 {
		return 0, fmt.Errorf("%s is empty", path)
	}
	return next, nil
}
