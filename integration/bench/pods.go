package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// podRuntime is a CRI runtime handler measured by the pod steps.
type podRuntime struct {
	name    string // column
	handler string
	shim    string // shim binary name, to find its processes
	// sandboxed: a pod sandbox through containerd's Sandbox API (no pause).
	sandboxed bool
	// foreign: another project's shim; a host it cannot run on leaves its
	// row unmeasured instead of failing the bench.
	foreign bool
	// pooled: the handler shares a shim between Pods (pods_per_shim):
	// memory is summed over all its shims, not per Pod's shim.
	pooled bool
}

// poolRuntime is custom-runc-sb with pods_per_shim = 10.
var poolRuntime = podRuntime{name: "custom-runc-pool", handler: "custom-runc-pool", shim: "containerd-shim-custom-v2", sandboxed: true, pooled: true}

var podRuntimes = []podRuntime{
	{name: "custom-runc", handler: "custom-runc-sb", shim: "containerd-shim-custom-v2", sandboxed: true},
	{name: "runc-shim", handler: "runc", shim: "containerd-shim-runc-v2"},
	{name: "custom-runsc", handler: "custom-runsc-sb", shim: "containerd-shim-custom-v2", sandboxed: true},
}

const (
	benchPauseImage = "registry.k8s.io/pause:bench"
	benchCRIImage   = "ghcr.io/containerd/busybox:1.36"
)

// podDaemon is a second containerd, with CRI, a point-to-point CNI network
// and the handlers above: containerd's runc shim on the pause path, this
// shim with sandboxer = "shim" (no pause container, no pause image).
func (b *bench) podDaemon() (*harness.Daemon, runtimeapi.RuntimeServiceClient) {
	work, err := os.MkdirTemp("", "bench-cri-")
	if err != nil {
		fatal(err)
	}
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "bench-ptp", "plugins": [
  {"type": "ptp", "ipMasq": false, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.232.0.0/20"}]], "dataDir": %q}},
  {"type": "loopback"}]}`, filepath.Join(work, "ipam"))
	if err := os.WriteFile(filepath.Join(work, "10-ptp.conflist"), []byte(conf), 0o644); err != nil {
		fatal(err)
	}
	runsc := filepath.Join(b.root, ".tools", "runsc", "runsc")
	// gVisor's own shim (scripts/gvisor-shim.sh) with the same runsc.
	gvisorShim := filepath.Join(b.root, ".tools", "runsc", "containerd-shim-runsc-v1")
	runscToml := filepath.Join(work, "runsc.toml")
	if err := os.WriteFile(runscToml, []byte(fmt.Sprintf("binary_name = %q\n", runsc)), 0o644); err != nil {
		fatal(err)
	}
	extra := fmt.Sprintf(`[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = %q
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = %q
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.custom-runc-sb]
    runtime_type = "io.containerd.custom.v2"
    sandboxer = "shim"
    disable_pause_image_pull = true
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.custom-runc-sb.options]
      backend = "runc"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.custom-runc-pool]
    runtime_type = "io.containerd.custom.v2"
    sandboxer = "shim"
    disable_pause_image_pull = true
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.custom-runc-pool.options]
      backend = "runc"
      pods_per_shim = 10
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.custom-runc]
    runtime_type = "io.containerd.custom.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.custom-runc.options]
      backend = "runc"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runsc-shim]
    runtime_type = "io.containerd.runsc.v1"
    runtime_path = %q
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runsc-shim.options]
      TypeUrl = "io.containerd.runsc.v1.options"
      ConfigPath = %q
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.custom-runsc-sb]
    runtime_type = "io.containerd.custom.v2"
    sandboxer = "shim"
    disable_pause_image_pull = true
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.custom-runsc-sb.options]
      backend = "runsc"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.custom-runsc-sb.options.runsc]
        binary_name = %q
`, benchPauseImage, work, gvisorShim, runscToml, runsc)
	d, err := harness.StartDaemon(context.Background(), harness.Config{
		ContainerdBinDir: filepath.Join(b.root, ".tools", "containerd", *flagVersion, "bin"),
		ShimDir:          filepath.Join(b.root, "bin"),
		Namespace:        "k8s.io",
		LogLevel:         "info",
		EnableCRI:        true,
		ExtraConfig:      extra,
	})
	if err != nil {
		fatal(err)
	}
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	if _, err := harness.ImportImage(ctx, d.Client(), "k8s.io", busybox(b.root)); err != nil {
		fatal(err)
	}
	if _, err := harness.ImportImage(ctx, d.Client(), "k8s.io", b.pauseImage()); err != nil {
		fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+d.Address(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fatal(err)
	}
	return d, runtimeapi.NewRuntimeServiceClient(conn)
}

// pauseImage is the pause path's image: Debian's static busybox sleeping,
// as small a process as the real pause (a few hundred KiB resident).
func (b *bench) pauseImage() string {
	dir, err := os.MkdirTemp("", "bench-pause-")
	if err != nil {
		fatal(err)
	}
	rootfs := filepath.Join(dir, "rootfs", "bin")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		fatal(err)
	}
	if out, err := exec.Command("cp", "/bin/busybox", rootfs).CombinedOutput(); err != nil {
		fatal(fmt.Errorf("copy busybox: %w: %s", err, out))
	}
	out := filepath.Join(dir, "pause.tar")
	cmd := exec.Command("bash", filepath.Join(b.root, "scripts", "peer", "mkoci.sh"), out, filepath.Join(dir, "rootfs"),
		`{"Entrypoint":["/bin/busybox","sleep","2147483647"]}`, benchPauseImage)
	if o, err := cmd.CombinedOutput(); err != nil {
		fatal(fmt.Errorf("build pause image: %w: %s", err, o))
	}
	return out
}

// pod runs one pod with one container (RunPodSandbox, CreateContainer,
// StartContainer) and returns the pod id and how long that took.
func (b *bench) pod(rc runtimeapi.RuntimeServiceClient, r podRuntime, name string) (string, time.Duration, error) {
	ctx := context.Background()
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Uid: name, Namespace: "bench"},
		Linux:    &runtimeapi.LinuxPodSandboxConfig{CgroupParent: "/bench-pods/" + name},
	}
	t0 := time.Now()
	pod, err := rc.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: r.handler})
	if err != nil {
		return "", 0, fmt.Errorf("%s RunPodSandbox: %w", r.name, err)
	}
	cc, err := rc.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod.PodSandboxId,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
			Image:    &runtimeapi.ImageSpec{Image: benchCRIImage},
			Command:  []string{"sleep", "100000"},
		},
		SandboxConfig: cfg,
	})
	if err != nil {
		return pod.PodSandboxId, 0, fmt.Errorf("%s CreateContainer: %w", r.name, err)
	}
	if _, err := rc.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cc.ContainerId}); err != nil {
		return pod.PodSandboxId, 0, fmt.Errorf("%s StartContainer: %w", r.name, err)
	}
	return pod.PodSandboxId, time.Since(t0), nil
}

func removePod(rc runtimeapi.RuntimeServiceClient, id string) error {
	ctx := context.Background()
	if _, err := rc.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		return err
	}
	_, err := rc.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id})
	return err
}

// pods measures pod start, pod churn and memory per running pod: this shim
// on sandboxed handlers against containerd's runc shim on the pause path.
func (b *bench) pods() {
	d, rc := b.podDaemon()
	defer func() {
		if err := d.Cleanup(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: CRI containerd cleanup:", err)
		}
	}()
	rts := podRuntimes
	// Pod start, interleaved and shuffled as the other steps.
	starts := map[string][]time.Duration{}
	n := *flagPods
	for i := 0; i < n; i++ {
		for _, r := range shuffled(rts, i) {
			id, dt, err := b.pod(rc, r, fmt.Sprintf("start-%s-%d", r.name, i))
			if err != nil {
				fatal(err)
			}
			starts[r.name] = append(starts[r.name], dt)
			if err := removePod(rc, id); err != nil {
				fatal(fmt.Errorf("%s remove pod: %w", r.name, err))
			}
		}
	}
	for _, r := range rts {
		b.record("pod start p50/p99 (ms) (RunPodSandbox+CreateContainer+StartContainer)", r.name, ms(pct(starts[r.name], 50))+" / "+ms(pct(starts[r.name], 99)))
	}
	b.poolStart = b.pooledStarts(rc, n)
	// Churn: run, start and remove pods at parallelism 5.
	for _, r := range rts {
		total, par := *flagPodChurn, 5
		if r.name == "custom-runsc" {
			total /= 2
		}
		jobs := make(chan int)
		var wg sync.WaitGroup
		var failed error
		var mu sync.Mutex
		t0 := time.Now()
		for w := 0; w < par; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range jobs {
					id, _, err := b.pod(rc, r, fmt.Sprintf("churn-%s-%d", r.name, i))
					if err == nil {
						err = removePod(rc, id)
					}
					if err != nil {
						mu.Lock()
						failed = err
						mu.Unlock()
					}
				}
			}()
		}
		for i := 0; i < total; i++ {
			jobs <- i
		}
		close(jobs)
		wg.Wait()
		if failed != nil {
			fatal(failed)
		}
		b.record(fmt.Sprintf("pod churn at parallelism 5 (pods per s) (%d pods; gVisor half)", *flagPodChurn), r.name,
			fmt.Sprintf("%.2f", float64(total)/time.Since(t0).Seconds()))
	}
}

// pooledStarts measures pod start on the shared-shim handler as a node
// sees it: with a Pod of the pool running, so that a start joins its shim
// instead of starting one. It returns p50 and p99.
func (b *bench) pooledStarts(rc runtimeapi.RuntimeServiceClient, n int) [2]time.Duration {
	anchor, _, err := b.pod(rc, poolRuntime, "start-pool-anchor")
	if err != nil {
		fatal(err)
	}
	var starts []time.Duration
	for i := 0; i < n; i++ {
		id, dt, err := b.pod(rc, poolRuntime, fmt.Sprintf("start-%s-%d", poolRuntime.name, i))
		if err != nil {
			fatal(err)
		}
		starts = append(starts, dt)
		if err := removePod(rc, id); err != nil {
			fatal(fmt.Errorf("%s remove pod: %w", poolRuntime.name, err))
		}
	}
	if err := removePod(rc, anchor); err != nil {
		fatal(fmt.Errorf("%s remove pod: %w", poolRuntime.name, err))
	}
	fmt.Printf("   pod start, shared shim (a Pod of the pool running) %-10s %s / %s\n", poolRuntime.name, ms(pct(starts, 50)), ms(pct(starts, 99)))
	return [2]time.Duration{pct(starts, 50), pct(starts, 99)}
}
