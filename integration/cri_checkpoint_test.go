package integration

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// TestCRICheckpoint: CRI's CheckpointContainer, what `crictl checkpoint
// --export` and the kubelet's checkpoint API (POST /checkpoint/...) call,
// on the pause path and on a sandboxed Pod: the archive holds what
// Kubernetes' node e2e test looks for (CRIU's checkpoint/inventory.img,
// spec.dump, config.dump) and the container keeps running, as the
// Forensic Container Checkpointing KEP wants. CRIU runs where it can: the
// cgroup v2 guest (make test-cgroup2).
func TestCRICheckpoint(t *testing.T) {
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		if like.backend != "runc" {
			t.Skip("CRI's checkpoint archive holds CRIU's images (runc backend); gVisor checkpoints through containerd's API (TestCheckpointRestore)")
		}
		if harness.MajorVersion(like.version) == 1 {
			t.Skip("containerd 1.7: CRI's checkpoint is checked on the 2.x lines")
		}
		_, err := exec.LookPath("criu")
		harness.RequireDep(t, "criu (scripts/deps.sh installs it)", err)
		if v, kernel, old := criuTooOld(t); old {
			t.Skipf("criu %s cannot run on kernel %s (make test-cgroup2 runs this test)", v, kernel)
		}
		for _, kind := range []string{"pause", "sandboxed"} {
			t.Run(kind, func(t *testing.T) { criCheckpoint(t, like, kind) })
		}
	})
}

func criCheckpoint(t *testing.T, like *env, kind string) {
	var (
		connect func() runtimeapi.RuntimeServiceClient
		handler string
		podCfg  *runtimeapi.PodSandboxConfig
	)
	if kind == "pause" {
		_, connect = criDaemon(t, like)
		handler = criHandler
		podCfg = &runtimeapi.PodSandboxConfig{
			Metadata: &runtimeapi.PodSandboxMetadata{Name: "ckpt", Uid: containerID(t, "uid"), Namespace: "test"},
			Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			}},
		}
	} else {
		_, connect = sandboxDaemon(t, like)
		handler = sbHandler
		podCfg = sandboxPodConfig(t, t.TempDir())
	}
	rc := connect()
	ctx := testContext(t)
	pod, err := rc.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg, RuntimeHandler: handler})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		rc := connect()
		_, _ = rc.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.PodSandboxId})
		_, _ = rc.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.PodSandboxId})
	})
	cc, err := rc.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod.PodSandboxId,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "counter"},
			Image:    &runtimeapi.ImageSpec{Image: criImage},
			Command:  []string{"sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done"},
		},
		SandboxConfig: podCfg,
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := rc.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cc.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	location := filepath.Join(t.TempDir(), "checkpoint.tar")
	if _, err := rc.CheckpointContainer(ctx, &runtimeapi.CheckpointContainerRequest{ContainerId: cc.ContainerId, Location: location, Timeout: 120}); err != nil {
		t.Fatalf("CheckpointContainer: %v", err)
	}
	names, err := archiveNames(location)
	if err != nil {
		t.Fatalf("the checkpoint archive %s: %v", location, err)
	}
	for _, want := range []string{"checkpoint/inventory.img", "spec.dump", "config.dump"} {
		if _, ok := names[want]; !ok {
			t.Errorf("the checkpoint archive lacks %s; it holds %v", want, slices.Sorted(maps.Keys(names)))
		}
	}
	st, err := rc.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: cc.ContainerId})
	if err != nil || st.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("after the checkpoint the container is %v (%v), want running", st.GetStatus().GetState(), err)
	}
	r, err := rc.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: cc.ContainerId, Cmd: []string{"cat", "/tmp/count"}, Timeout: 30})
	if err != nil || r.ExitCode != 0 {
		t.Fatalf("exec after the checkpoint: %v %v", r, err)
	}
	t.Logf("%s: %d entries in the archive, the container still counting (%s)", kind, len(names), string(r.Stdout))
}

// archiveNames lists a tar archive's entries (gzip-compressed or not),
// without a leading "./".
func archiveNames(path string) (map[string]struct{}, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var r io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, err
		}
		defer gz.Close()
		r = gz
	}
	names := map[string]struct{}{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names, nil
		}
		if err != nil {
			return nil, err
		}
		name := filepath.Clean(h.Name)
		names[name] = struct{}{}
	}
}
