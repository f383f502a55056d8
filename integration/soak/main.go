// Command soak runs the shim under a mixed load for a long time and checks
// that nothing it holds grows: `make soak` (root; not in CI's default
// path). It starts a private containerd (2.4.2 by default) with CRI and
// this shim's sandboxed handlers, runs SOAK_PARALLEL workers for
// SOAK_DURATION mixing lifecycles, execs, Stats, pause/resume, Update, OOM
// kills and two CRI pods (custom-runc-sb, custom-runsc-sb) whose container
// crash-loops and is recreated as kubelet would, restarts containerd twice,
// and samples every shim and the node every SOAK_INTERVAL. It passes when
// every resource is flat after the warm-up (the first third; see judge),
// every started task's exit was delivered, and nothing is left at the end.
// It writes docs/soak.md and docs/soak.svg (SOAK_REPORT names the .md).
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

const (
	taskNS    = "soak"   // the Task API workers' namespace
	criNS     = "k8s.io" // CRI's
	shimType  = "io.containerd.custom.v2"
	criImage  = "ghcr.io/containerd/busybox:1.36"
	podParent = "/soak-pods"
	// exitWait bounds the wait for one exit; longer is a lost exit.
	exitWait = 3 * time.Minute
)

type soak struct {
	root, runsc string
	duration    time.Duration
	interval    time.Duration
	parallel    int
	version     string
	report      string
	handlers    []string // CRI handlers with a crash-loop pod (SOAK_HANDLERS)

	d     *harness.Daemon
	image client.Image
	cri   runtimeapi.RuntimeServiceClient
	start time.Time

	started, exited, lost, oomKills, opErrors atomic.Int64
	// scrapeErrors counts shims whose metrics did not answer a sample (one
	// exiting meanwhile); their goroutines count as 0 there.
	scrapeErrors    atomic.Int64
	exitedWhileDown atomic.Int64 // tasks containerd removed as it restarted
	restarting      sync.RWMutex // held for writing while containerd restarts

	mu       sync.Mutex
	samples  []sample
	restarts []float64 // minutes
	errs     []string  // the first few operation errors, for the report
	lostIDs  []string  // every task whose exit was not delivered
	// pods: the CRI pods the soak made; CRI's namespace on this host may
	// hold other pods' runsc roots (another containerd's), not counted.
	pods []string
}

func main() {
	s := &soak{
		duration: envDuration("SOAK_DURATION", 30*time.Minute),
		interval: envDuration("SOAK_INTERVAL", time.Minute),
		parallel: envInt("SOAK_PARALLEL", 10),
		version:  envString("SOAK_CONTAINERD", "2.4.2"),
	}
	root, err := harness.ModuleRoot()
	if err != nil {
		fatal(err)
	}
	s.root = root
	s.runsc = envString("RUNSC_BINARY", filepath.Join(root, ".tools", "runsc", "runsc"))
	s.report = envString("SOAK_REPORT", filepath.Join(root, "docs", "soak.md"))
	if err := harness.NeedRoot(); err != nil {
		fatal(err)
	}
	for _, p := range []string{s.runsc, filepath.Join(root, "bin", "containerd-shim-custom-v2")} {
		if err := harness.NeedExecutable(p); err != nil {
			fatal(fmt.Errorf("%w (make deps build)", err))
		}
	}
	ok := s.run()
	if !ok {
		os.Exit(1)
	}
}

func (s *soak) run() bool {
	s.startDaemon()
	defer func() {
		if err := s.d.Cleanup(); err != nil {
			fmt.Fprintln(os.Stderr, "soak: cleanup:", err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), s.duration)
	defer cancel()
	s.start = time.Now()
	fmt.Printf("soak: %s at parallelism %d on containerd %s, sampled every %s\n", s.duration, s.parallel, s.version, s.interval)

	var wg sync.WaitGroup
	residents := s.residents()
	workers := max(s.parallel-2, 1)
	for i := range workers {
		wg.Add(1)
		go func() { defer wg.Done(); s.worker(ctx, i, residents) }()
	}
	s.handlers = strings.Fields(envString("SOAK_HANDLERS", "custom-runc-sb custom-runsc-sb"))
	for _, h := range s.handlers {
		wg.Add(1)
		go func() { defer wg.Done(); s.crashLoop(ctx, h) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); s.restarter(ctx) }()
	s.sampleLoop(ctx)
	wg.Wait()
	for _, r := range residents {
		s.stopTask(r)
	}
	left := s.leftovers()
	return s.writeReport(left)
}

// startDaemon starts containerd with CRI and the sandboxed handlers (as
// integration/bench does), and imports busybox into both namespaces.
func (s *soak) startDaemon() {
	work, err := os.MkdirTemp("", "soak-cni-")
	if err != nil {
		fatal(err)
	}
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "soak-ptp", "plugins": [
  {"type": "ptp", "ipMasq": false, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.236.0.0/20"}]], "dataDir": %q}},
  {"type": "loopback"}]}`, filepath.Join(work, "ipam"))
	if err := os.WriteFile(filepath.Join(work, "10-ptp.conflist"), []byte(conf), 0o644); err != nil {
		fatal(err)
	}
	extra := fmt.Sprintf(`[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = %q
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.custom-runc-sb]
    runtime_type = %q
    sandboxer = "shim"
    disable_pause_image_pull = true
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.custom-runc-sb.options]
      backend = "runc"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.custom-runsc-sb]
    runtime_type = %q
    sandboxer = "shim"
    disable_pause_image_pull = true
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.custom-runsc-sb.options]
      backend = "runsc"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.custom-runsc-sb.options.runsc]
        binary_name = %q
`, work, shimType, shimType, s.runsc)
	s.d, err = harness.StartDaemon(context.Background(), harness.Config{
		ContainerdBinDir: filepath.Join(s.root, ".tools", "containerd", s.version, "bin"),
		ShimDir:          filepath.Join(s.root, "bin"),
		Namespace:        taskNS,
		LogLevel:         "info",
		EnableCRI:        true,
		ExtraConfig:      extra,
	})
	if err != nil {
		fatal(err)
	}
	archive := filepath.Join(s.root, ".tools", "images", "busybox.tar")
	if err := runCmd("bash", filepath.Join(s.root, "scripts", "mkimage.sh"), filepath.Dir(archive)); err != nil {
		fatal(err)
	}
	for _, ns := range []string{criNS, taskNS} {
		imgs, err := harness.ImportImage(namespaces.WithNamespace(context.Background(), ns), s.d.Client(), ns, archive)
		if err != nil {
			fatal(err)
		}
		if ns == taskNS {
			s.image = imgs[0]
		}
	}
	conn, err := grpc.NewClient("unix://"+s.d.Address(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fatal(err)
	}
	s.cri = runtimeapi.NewRuntimeServiceClient(conn)
}

// opts picks the backend of a Task API container.
func (s *soak) opts(backend string) *runtimeoptions.Options {
	body := "backend = \"runc\"\n"
	if backend == "runsc" {
		body = fmt.Sprintf("backend = \"runsc\"\n[runsc]\nbinary_name = %q\n", s.runsc)
	}
	return &runtimeoptions.Options{ConfigBody: []byte(body)}
}

func (s *soak) ctx() context.Context {
	return namespaces.WithNamespace(context.Background(), taskNS)
}

// opError counts a failed operation (containerd restarting makes some).
func (s *soak) opError(what string, err error) {
	s.opErrors.Add(1)
	s.mu.Lock()
	if len(s.errs) < 20 {
		line := fmt.Sprintf("%.1f min %s: %v", s.minutes(), what, err)
		s.errs = append(s.errs, line)
		fmt.Println("soak: error:", line)
	}
	s.mu.Unlock()
}

// lostExit records a task whose exit did not come within exitWait.
func (s *soak) lostExit(what string) {
	s.lost.Add(1)
	line := fmt.Sprintf("%.1f min %s", s.minutes(), what)
	s.mu.Lock()
	s.lostIDs = append(s.lostIDs, line)
	s.mu.Unlock()
	fmt.Println("soak: exit not delivered:", line)
}

func (s *soak) minutes() float64 { return time.Since(s.start).Minutes() }

// restarter restarts containerd at one third and two thirds of the run.
func (s *soak) restarter(ctx context.Context) {
	for _, at := range []time.Duration{s.duration / 3, 2 * s.duration / 3} {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(s.start.Add(at))):
		}
		s.restarting.Lock()
		err := s.d.Restart()
		s.mu.Lock()
		s.restarts = append(s.restarts, s.minutes())
		s.mu.Unlock()
		s.restarting.Unlock()
		if err != nil {
			fatal(fmt.Errorf("restart containerd: %w", err))
		}
		fmt.Printf("soak: containerd restarted at %.1f min\n", s.minutes())
	}
}

func envDuration(k string, def time.Duration) time.Duration {
	if v := os.Getenv(k); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fatal(fmt.Errorf("%s: %w", k, err))
		}
		return d
	}
	return def
}

func envInt(k string, def int) int {
	if v := os.Getenv(k); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			fatal(fmt.Errorf("%s=%q: want a positive number", k, v))
		}
		return n
	}
	return def
}

func envString(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func runCmd(name string, args ...string) error {
	cmd := execCommand(name, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, out)
	}
	return nil
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "soak:", err)
	os.Exit(1)
}
