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
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
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
  {"type": "ptp", "ipMasq": false, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.233.0.0/20"}]], "dataDir": %q}},
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

// task is a started Task API task and where its exit comes.
type task struct {
	c      client.Container
	t      client.Task
	status <-chan client.ExitStatus
	// mu orders the workers' pause/resume and Update on a resident: a
	// second pause of a paused task is refused, rightly.
	mu sync.Mutex
}

// newTask creates and starts a task; it counts as started once Start
// succeeded. Waits are held off while containerd restarts.
func (s *soak) newTask(id, backend string, specOpts ...oci.SpecOpts) (*task, error) {
	s.restarting.RLock()
	defer s.restarting.RUnlock()
	ctx := s.ctx()
	cl := s.d.Client()
	c, err := cl.NewContainer(ctx, id,
		client.WithNewSnapshot(id+"-snap", s.image),
		client.WithNewSpec(append([]oci.SpecOpts{oci.WithImageConfig(s.image)}, specOpts...)...),
		client.WithRuntime(shimType, s.opts(backend)))
	if err != nil {
		return nil, err
	}
	t, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		_ = c.Delete(ctx, client.WithSnapshotCleanup)
		return nil, err
	}
	status, err := t.Wait(ctx)
	if err == nil {
		err = t.Start(ctx)
	}
	if err != nil {
		_, _ = t.Delete(ctx, client.WithProcessKill)
		_ = c.Delete(ctx, client.WithSnapshotCleanup)
		return nil, err
	}
	s.started.Add(1)
	return &task{c: c, t: t, status: status}, nil
}

// waitExit waits for the task's exit as containerd reports it (Wait
// returns only once containerd received the shim's TaskExit); a Wait cut
// by a containerd restart is made again. No exit within exitWait is lost.
func (s *soak) waitExit(tk *task) (uint32, bool) {
	deadline := time.Now().Add(exitWait)
	status := tk.status
	for time.Now().Before(deadline) {
		select {
		case st := <-status:
			if st.Error() == nil {
				s.exited.Add(1)
				return st.ExitCode(), true
			}
		case <-time.After(30 * time.Second):
			// No answer yet: ask again (a Wait made just before containerd
			// went down may never be answered), so that a lost exit is the
			// shim's and not a stale stream's.
		}
		// The stream broke (containerd restarting): wait again.
		s.restarting.RLock()
		ch, err := tk.t.Wait(s.ctx())
		s.restarting.RUnlock()
		if errdefs.IsNotFound(err) {
			// The task exited while containerd was down, and containerd,
			// loading the shim, saw it stopped and removed it
			// (core/runtime/v2/shim_load.go): the exit reached it then.
			s.exited.Add(1)
			s.exitedWhileDown.Add(1)
			return 0, false
		}
		if err != nil {
			time.Sleep(time.Second)
			continue
		}
		status = ch
	}
	s.lostExit(tk.c.ID())
	return 0, false
}

// stopTask kills (if needed), waits for and deletes a task and its container.
func (s *soak) stopTask(tk *task) {
	s.restarting.RLock()
	err := tk.t.Kill(s.ctx(), syscall.SIGKILL)
	s.restarting.RUnlock()
	if err != nil && !strings.Contains(err.Error(), "not found") {
		s.opError("kill "+tk.c.ID(), err)
	}
	s.waitExit(tk)
	s.deleteTask(tk)
}

func (s *soak) deleteTask(tk *task) {
	for i := 0; i < 30; i++ {
		s.restarting.RLock()
		_, err := tk.t.Delete(s.ctx())
		if err == nil || strings.Contains(err.Error(), "not found") {
			err = tk.c.Delete(s.ctx(), client.WithSnapshotCleanup)
		}
		s.restarting.RUnlock()
		if err == nil {
			return
		}
		if i == 29 {
			s.opError("delete "+tk.c.ID(), err)
		}
		time.Sleep(time.Second)
	}
}

// residents are long-lived tasks (one per backend) that the exec, Stats,
// pause/resume and Update operations work on: their shims live through
// the whole run and are judged one by one.
func (s *soak) residents() map[string]*task {
	out := map[string]*task{}
	for _, b := range []string{"runc", "runsc"} {
		tk, err := s.newTask("resident-"+b, b, oci.WithProcessArgs("sleep", "1000000"))
		if err != nil {
			fatal(fmt.Errorf("resident %s task: %w", b, err))
		}
		out[b] = tk
	}
	return out
}

// worker runs operations until ctx ends, a different one each round.
func (s *soak) worker(ctx context.Context, w int, residents map[string]*task) {
	for i := 0; ctx.Err() == nil; i++ {
		backend := []string{"runc", "runsc"}[(w+i)%2]
		id := fmt.Sprintf("w%d-%d", w, i)
		switch (w + i) % 4 {
		case 0, 1: // a lifecycle: run to its exit code
			tk, err := s.newTask(id, backend, oci.WithProcessArgs("sh", "-c", "exit "+strconv.Itoa(i%7)))
			if err != nil {
				s.opError("lifecycle "+id, err)
				break
			}
			if code, ok := s.waitExit(tk); ok && code != uint32(i%7) {
				s.opError("lifecycle "+id, fmt.Errorf("exit %d, want %d", code, i%7))
			}
			s.deleteTask(tk)
		case 2: // execs, Stats, pause/resume and Update on a resident
			s.residentOps(residents[backend], id)
		case 3: // an OOM kill (runc: gVisor's memory accounting is the sandbox's)
			tk, err := s.newTask(id, "runc", oci.WithMemoryLimit(16<<20), oci.WithMemorySwap(16<<20),
				oci.WithProcessArgs("sh", "-c", "x=aaaaaaaaaaaaaaaa; while :; do x=$x$x; done"))
			if err != nil {
				s.opError("oom "+id, err)
				break
			}
			if code, ok := s.waitExit(tk); ok {
				if code == 137 {
					s.oomKills.Add(1)
				} else {
					s.opError("oom "+id, fmt.Errorf("exit %d, want 137", code))
				}
			}
			s.deleteTask(tk)
		}
	}
}

func (s *soak) residentOps(tk *task, id string) {
	s.restarting.RLock()
	defer s.restarting.RUnlock()
	ctx := s.ctx()
	for j := range 3 {
		p, err := tk.t.Exec(ctx, fmt.Sprintf("%s-x%d", id, j), &specs.Process{Args: []string{"sh", "-c", "exit 3"}, Cwd: "/", Env: []string{"PATH=/bin:/usr/bin:/sbin:/usr/sbin"}}, cio.NullIO)
		if err != nil {
			s.opError("exec "+id, err)
			return
		}
		st, err := p.Wait(ctx)
		if err == nil {
			err = p.Start(ctx)
		}
		if err == nil {
			select {
			case e := <-st:
				if e.ExitCode() != 3 {
					err = fmt.Errorf("exec exit %d, want 3", e.ExitCode())
				}
			case <-time.After(exitWait):
				err = errors.New("exec exit not delivered")
			}
		}
		if err != nil {
			s.opError("exec "+id, err)
		}
		if _, err := p.Delete(ctx); err != nil {
			s.opError("exec delete "+id, err)
		}
	}
	if _, err := tk.t.Metrics(ctx); err != nil {
		s.opError("stats "+id, err)
	}
	tk.mu.Lock()
	defer tk.mu.Unlock()
	if err := tk.t.Pause(ctx); err != nil {
		s.opError("pause "+id, err)
	} else if err := tk.t.Resume(ctx); err != nil {
		s.opError("resume "+id, err)
	}
	shares := uint64(512 + len(id)%2*512)
	if err := tk.t.Update(ctx, client.WithResources(&specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: &shares}})); err != nil {
		s.opError("update "+id, err)
	}
}

// crashLoop runs a pod on handler whose one container exits every few
// seconds; each time it is removed and created again, as kubelet does.
func (s *soak) crashLoop(ctx context.Context, handler string) {
	name := "crash-" + strings.TrimSuffix(strings.TrimPrefix(handler, "custom-"), "-sb")
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Uid: name, Namespace: "soak"},
		Linux:    &runtimeapi.LinuxPodSandboxConfig{CgroupParent: podParent + "/" + name},
	}
	var pod string
	for pod == "" {
		s.restarting.RLock()
		resp, err := s.cri.RunPodSandbox(context.Background(), &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
		s.restarting.RUnlock()
		if err == nil {
			pod = resp.PodSandboxId
			s.mu.Lock()
			s.pods = append(s.pods, pod)
			s.mu.Unlock()
			break
		}
		s.opError("run pod "+name, err)
		if ctx.Err() != nil {
			return
		}
		time.Sleep(2 * time.Second)
	}
	for attempt := uint32(0); ctx.Err() == nil; attempt++ {
		s.crashOnce(pod, cfg, attempt)
	}
	for i := 0; i < 30; i++ {
		_, err := s.cri.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod})
		if err == nil {
			_, err = s.cri.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod})
		}
		if err == nil {
			removePodParent(name)
			return
		}
		time.Sleep(time.Second)
	}
	s.opError("remove pod "+name, errors.New("gave up"))
}

// removePodParent removes the pod's cgroup parent, as kubelet does once
// the pod is gone (it made it): rmdir, so a cgroup the pod left below it
// keeps it there and shows as a leftover.
func removePodParent(name string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", podParent, name))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup", podParent, name))
	for _, d := range dirs {
		_ = os.Remove(d)
	}
}

func (s *soak) crashOnce(pod string, cfg *runtimeapi.PodSandboxConfig, attempt uint32) {
	bg := context.Background()
	s.restarting.RLock()
	cc, err := s.cri.CreateContainer(bg, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "crasher", Attempt: attempt},
			Image:    &runtimeapi.ImageSpec{Image: criImage},
			Command:  []string{"sh", "-c", "sleep 2; exit 1"},
		},
		SandboxConfig: cfg,
	})
	if err == nil {
		_, err = s.cri.StartContainer(bg, &runtimeapi.StartContainerRequest{ContainerId: cc.ContainerId})
		if err == nil {
			s.started.Add(1)
		}
	}
	s.restarting.RUnlock()
	if err != nil {
		s.opError("crash-loop container", err)
		if cc != nil {
			_, _ = s.cri.RemoveContainer(bg, &runtimeapi.RemoveContainerRequest{ContainerId: cc.ContainerId})
		}
		time.Sleep(2 * time.Second)
		return
	}
	// The exit reaches CRI only as the shim's TaskExit.
	deadline := time.Now().Add(exitWait)
	for {
		st, err := s.cri.ContainerStatus(bg, &runtimeapi.ContainerStatusRequest{ContainerId: cc.ContainerId})
		if err == nil && st.Status.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			s.exited.Add(1)
			break
		}
		if time.Now().After(deadline) {
			s.lostExit("crash-loop container " + cc.ContainerId)
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	for i := 0; i < 30; i++ {
		if _, err := s.cri.RemoveContainer(bg, &runtimeapi.RemoveContainerRequest{ContainerId: cc.ContainerId}); err == nil {
			return
		}
		time.Sleep(time.Second)
	}
	s.opError("remove container "+cc.ContainerId, errors.New("gave up"))
}

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
