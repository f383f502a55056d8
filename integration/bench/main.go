// Command bench measures containerd-shim-custom-v2 (runc and gVisor
// backends) against containerd's own containerd-shim-runc-v2, on one private
// containerd, with the same images, runc and machine, in one run. Rounds
// interleave the runtimes (A, B, C, A, B, C, ...) so that machine drift
// affects them alike. It writes docs/benchmarks.md (replacing it).
//
// Run it through `make bench` (root; after scripts/deps.sh and make build).
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

const ns = "bench"

var (
	flagOut        = flag.String("out", "docs/benchmarks.md", "report to write (replaced)")
	flagSeq        = flag.Int("seq", 40, "sequential lifecycles per runtime")
	flagParallel   = flag.Int("parallel", 10, "parallelism of the throughput test")
	flagTotal      = flag.Int("total", 200, "lifecycles in the throughput test, per runtime")
	flagExecs      = flag.Int("execs", 150, "execs and stats calls per runtime")
	flagTTYExecs   = flag.Int("tty-execs", 10, "execs with a terminal and large output per runtime")
	flagMem        = flag.Int("mem", 10, "containers for the memory test")
	flagRestart    = flag.Int("restart", 100, "running tasks across a containerd restart")
	flagBackground = flag.Int("background", 200, "running containers behind the loaded lifecycle test")
	flagGVisorBg   = flag.Int("gvisor-background", 50, "the same for gVisor (each is a sandbox)")
	flagRuntimes   = flag.String("runtimes", "custom-runc,custom-runc-cli,runc-shim,runc-shim-1.5,custom-runsc", "runtimes to measure")
	flagVersion    = flag.String("containerd", "2.4.2", "containerd version (from .tools)")
	flagNote       = flag.String("note", "", "a line added to the report (e.g. before/after)")
	flagSteps      = flag.String("steps", "", "only these steps (comma-separated: sequential,throughput,exec,tty,memory,load,restart,floor,pods,density); a partial run prints but writes no report")
	flagPods       = flag.Int("pods", 20, "pods started per runtime in the pod start test (CRI)")
	flagPodChurn   = flag.Int("pod-churn", 40, "pods run and removed per runtime at parallelism 5 (gVisor: half)")
	flagDensity    = flag.String("density", "10,50", "running pods per runtime at which memory per pod is measured (ascending)")
	flagDensityRts = flag.String("density-runtimes", "custom-runc-sb,custom-runc,runc-shim,custom-runc-pool,custom-runsc-sb,runsc-shim", "rows of the node-scale memory table")
)

// rt is a runtime under test.
type rt struct {
	name    string // column name
	runtime string // containerd runtime name
	opts    any    // runtime options
	shim    string // shim binary name, to find its processes
	gvisor  bool
}

type bench struct {
	root    string
	d       *harness.Daemon
	c       *client.Client
	image   client.Image
	ctx     context.Context
	rts     []rt
	results map[string]map[string]string // metric -> runtime -> value
	// densityResults: memory per running pod at node scale (the pods step).
	densityResults []densityResult
	densityNs      []int
	densitySkipped []string         // rows not measured, and why
	poolStart      [2]time.Duration // pod start p50, p99 on the shared-shim handler (pods step)
	order          []string         // metric order
	seq            int
}

func main() {
	flag.Parse()
	if os.Geteuid() != 0 {
		fatal(fmt.Errorf("run as root"))
	}
	root, err := harness.ModuleRoot()
	if err != nil {
		fatal(err)
	}
	runsc := filepath.Join(root, ".tools", "runsc", "runsc")
	all := map[string]rt{
		"custom-runc": {name: "custom-runc", runtime: "io.containerd.custom.v2", shim: "containerd-shim-custom-v2",
			opts: &runtimeoptions.Options{ConfigBody: []byte("backend = \"runc\"\n")}},
		"custom-runc-cli": {name: "custom-runc-cli", runtime: "io.containerd.custom.v2", shim: "containerd-shim-custom-v2",
			opts: &runtimeoptions.Options{ConfigBody: []byte("backend = \"runc\"\n[runc]\nmode = \"cli\"\n")}},
		"runc-shim-1.5": {name: "runc-shim-1.5", runtime: "io.containerd.runc.v2", shim: "containerd-shim-runc-v2",
			opts: &runcoptions.Options{BinaryName: runcLib(root)}},
		"custom-runsc": {name: "custom-runsc", runtime: "io.containerd.custom.v2", shim: "containerd-shim-custom-v2", gvisor: true,
			opts: &runtimeoptions.Options{ConfigBody: []byte(fmt.Sprintf("backend = \"runsc\"\n[runsc]\nbinary_name = %q\n", runsc))}},
		"runc-shim": {name: "runc-shim", runtime: "io.containerd.runc.v2", shim: "containerd-shim-runc-v2"},
	}
	b := &bench{root: root, results: map[string]map[string]string{}}
	for _, n := range strings.Split(*flagRuntimes, ",") {
		r, ok := all[n]
		if !ok {
			fatal(fmt.Errorf("unknown runtime %q", n))
		}
		b.rts = append(b.rts, r)
	}
	d, err := harness.StartDaemon(context.Background(), harness.Config{
		ContainerdBinDir: filepath.Join(root, ".tools", "containerd", *flagVersion, "bin"),
		ShimDir:          filepath.Join(root, "bin"),
		Namespace:        ns,
		LogLevel:         "info",
	})
	if err != nil {
		fatal(err)
	}
	defer func() {
		if err := d.Cleanup(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: containerd cleanup:", err)
		}
	}()
	b.d, b.c = d, d.Client()
	b.ctx = namespaces.WithNamespace(context.Background(), ns)
	imgs, err := harness.ImportImage(b.ctx, b.c, ns, busybox(root))
	if err != nil {
		fatal(err)
	}
	_ = imgs
	if b.image, err = b.c.GetImage(b.ctx, harness.BusyboxImage); err != nil {
		fatal(err)
	}

	b.step("sequential", "sequential lifecycle", b.sequential)
	b.step("throughput", "parallel throughput", b.throughput)
	b.step("exec", "exec and stats latency", b.execStats)
	b.step("tty", "exec with a terminal and large output", b.ttyOutput)
	b.step("memory", "shim memory", b.memory)
	b.step("load", "lifecycle under load", b.underLoad)
	b.step("restart", "containerd restart", b.restart)
	b.step("floor", "backend floor", b.floor)
	b.step("pods", "pods through CRI: sandboxed (ours) against the pause path (runc shim)", b.pods)
	b.step("density", "memory per running pod at node scale (CRI)", b.density)
	if *flagSteps != "" {
		return // a partial table would replace the whole report
	}
	if err := b.write(*flagOut); err != nil {
		fatal(err)
	}
	fmt.Println("wrote", *flagOut)
}

// runcLib is the runc CLI of the version the shim links (scripts/deps.sh
// builds it), so containerd's runc shim is also measured with the same runc.
func runcLib(root string) string {
	return filepath.Join(root, ".tools", "runc-"+runcLibVersion, "runc")
}

// runcLibVersion is the runc the shim links (go.mod).
const runcLibVersion = "1.5.3"

func busybox(root string) string {
	out := filepath.Join(root, ".tools", "images")
	if err := exec.Command("bash", filepath.Join(root, "scripts", "mkimage.sh"), out).Run(); err != nil {
		fatal(fmt.Errorf("mkimage.sh: %w", err))
	}
	return filepath.Join(out, "busybox.tar")
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func (b *bench) step(key, name string, fn func()) {
	if *flagSteps != "" && !slices.Contains(strings.Split(*flagSteps, ","), key) {
		return
	}
	start := time.Now()
	fmt.Printf("== %s\n", name)
	fn()
	fmt.Printf("   %.1fs\n", time.Since(start).Seconds())
}

func (b *bench) record(metric, runtime, value string) {
	if b.results[metric] == nil {
		b.results[metric] = map[string]string{}
		b.order = append(b.order, metric)
	}
	b.results[metric][runtime] = value
	fmt.Printf("   %-45s %-13s %s\n", metric, runtime, value)
}

// container creates a container (metadata and snapshot: not timed).
func (b *bench) container(r rt, id string, args []string, extra ...oci.SpecOpts) (client.Container, error) {
	opts := append([]oci.SpecOpts{oci.WithImageConfig(b.image), oci.WithProcessArgs(args...)}, extra...)
	return b.c.NewContainer(b.ctx, id,
		client.WithNewSnapshot(id+"-snap", b.image),
		client.WithNewSpec(opts...),
		client.WithRuntime(r.runtime, r.opts))
}

func (b *bench) id(prefix string) string {
	b.seq++
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), b.seq)
}

type phases struct{ create, start, exit, delete time.Duration }

// lifecycle runs one create/start/exit/delete of `true` and times each phase.
func (b *bench) lifecycle(r rt, id string) (phases, error) {
	var p phases
	c, err := b.container(r, id, []string{"true"})
	if err != nil {
		return p, err
	}
	defer func() { _ = c.Delete(b.ctx, client.WithSnapshotCleanup) }() // best effort, like kill
	t0 := time.Now()
	task, err := c.NewTask(b.ctx, cio.NullIO)
	if err != nil {
		return p, err
	}
	t1 := time.Now()
	statusC, err := task.Wait(b.ctx)
	if err != nil {
		return p, err
	}
	t2 := time.Now()
	if err := task.Start(b.ctx); err != nil {
		return p, err
	}
	t3 := time.Now()
	<-statusC
	t4 := time.Now()
	if _, err := task.Delete(b.ctx); err != nil {
		return p, err
	}
	t5 := time.Now()
	return phases{create: t1.Sub(t0), start: t3.Sub(t2), exit: t4.Sub(t3), delete: t5.Sub(t4)}, nil
}

func (b *bench) sequential() {
	samples := map[string][]phases{}
	for i := 0; i < *flagSeq; i++ {
		for _, r := range shuffled(b.rts, i) {
			p, err := b.lifecycle(r, b.id("seq-"+r.name))
			if err != nil {
				fatal(fmt.Errorf("%s lifecycle: %w", r.name, err))
			}
			samples[r.name] = append(samples[r.name], p)
		}
	}
	for _, r := range b.rts {
		var c, s, e, d, t []time.Duration
		for _, p := range samples[r.name] {
			c, s, e, d = append(c, p.create), append(s, p.start), append(e, p.exit), append(d, p.delete)
			t = append(t, p.create+p.start+p.exit+p.delete)
		}
		b.record("lifecycle p50 (ms)", r.name, ms(pct(t, 50)))
		b.record("lifecycle p99 (ms)", r.name, ms(pct(t, 99)))
		b.record("  create p50/p99 (ms)", r.name, ms(pct(c, 50))+" / "+ms(pct(c, 99)))
		b.record("  start p50/p99 (ms)", r.name, ms(pct(s, 50))+" / "+ms(pct(s, 99)))
		b.record("  exit p50/p99 (ms)", r.name, ms(pct(e, 50))+" / "+ms(pct(e, 99)))
		b.record("  delete p50/p99 (ms)", r.name, ms(pct(d, 50))+" / "+ms(pct(d, 99)))
	}
}

func (b *bench) throughput() {
	// Two halves per runtime, the second in reverse order, so that no
	// runtime always starts right after the same other one.
	done := map[string]int{}
	elapsed := map[string]time.Duration{}
	for half := 0; half < 2; half++ {
		order := append([]rt(nil), b.rts...)
		if half == 1 {
			slices.Reverse(order)
		}
		for _, r := range order {
			n := *flagTotal / 2
			start := time.Now()
			var wg sync.WaitGroup
			work := make(chan string, n)
			for i := 0; i < n; i++ {
				work <- b.id("par-" + r.name)
			}
			close(work)
			var mu sync.Mutex
			var firstErr error
			for w := 0; w < *flagParallel; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for id := range work {
						if _, err := b.lifecycle(r, id); err != nil {
							mu.Lock()
							if firstErr == nil {
								firstErr = err
							}
							mu.Unlock()
						}
					}
				}()
			}
			wg.Wait()
			if firstErr != nil {
				fatal(fmt.Errorf("%s throughput: %w", r.name, firstErr))
			}
			done[r.name] += n
			elapsed[r.name] += time.Since(start)
		}
	}
	for _, r := range b.rts {
		b.record(fmt.Sprintf("throughput, %d lifecycles at parallelism %d (per s)", *flagTotal, *flagParallel), r.name,
			fmt.Sprintf("%.1f", float64(done[r.name])/elapsed[r.name].Seconds()))
	}
}

func (b *bench) execStats() {
	rs := b.sleepers("exec-")
	execs, stats := map[string][]time.Duration{}, map[string][]time.Duration{}
	execPhases := map[string][4][]time.Duration{} // exec, start, exit, delete
	for i := 0; i < *flagExecs; i++ {
		for _, x := range shuffled(rs, i) {
			spec, _ := x.c.Spec(b.ctx)
			ps := *spec.Process
			ps.Args = []string{"true"}
			t0 := time.Now()
			p, err := x.task.Exec(b.ctx, fmt.Sprintf("e%d", i), &ps, cio.NullIO)
			if err != nil {
				fatal(err)
			}
			ch, _ := p.Wait(b.ctx)
			t1 := time.Now()
			if err := p.Start(b.ctx); err != nil {
				fatal(err)
			}
			t2 := time.Now()
			<-ch
			t3 := time.Now()
			if _, err := p.Delete(b.ctx); err != nil {
				fatal(fmt.Errorf("%s exec delete: %w", x.r.name, err))
			}
			execs[x.r.name] = append(execs[x.r.name], time.Since(t0))
			ph := execPhases[x.r.name]
			execPhases[x.r.name] = [4][]time.Duration{append(ph[0], t1.Sub(t0)), append(ph[1], t2.Sub(t1)), append(ph[2], t3.Sub(t2)), append(ph[3], time.Since(t3))}
			t0 = time.Now()
			if _, err := x.task.Metrics(b.ctx); err != nil {
				fatal(fmt.Errorf("%s stats: %w", x.r.name, err))
			}
			stats[x.r.name] = append(stats[x.r.name], time.Since(t0))
		}
	}
	for _, x := range rs {
		b.record("exec of `true` p50/p99 (ms)", x.r.name, ms(pct(execs[x.r.name], 50))+" / "+ms(pct(execs[x.r.name], 99)))
		ph := execPhases[x.r.name]
		b.record("  start p50 (exec / exit / delete) (ms)", x.r.name,
			ms(pct(ph[1], 50))+" ("+ms(pct(ph[0], 50))+" / "+ms(pct(ph[2], 50))+" / "+ms(pct(ph[3], 50))+")")
		b.record("Stats p50/p99 (ms)", x.r.name, ms(pct(stats[x.r.name], 50))+" / "+ms(pct(stats[x.r.name], 99)))
		b.kill(x.c, x.task)
	}
}

// kill removes a container and its task, best effort: what it misses, the
// daemon's Cleanup removes at exit.
func (b *bench) kill(c client.Container, task client.Task) {
	ch, _ := task.Wait(b.ctx)
	_ = task.Kill(b.ctx, syscall.SIGKILL, client.WithKillAll)
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
	}
	_, _ = task.Delete(b.ctx, client.WithProcessKill)
	_ = c.Delete(b.ctx, client.WithSnapshotCleanup)
}

// start runs n `sleep` containers, each in its own shim, or all in one
// group when group is set.
func (b *bench) start(r rt, n int, prefix, group string) ([]client.Container, []client.Task) {
	var cs []client.Container
	var ts []client.Task
	for i := 0; i < n; i++ {
		id := b.id(prefix)
		var extra []oci.SpecOpts
		if group != "" {
			extra = append(extra, oci.WithAnnotations(map[string]string{"io.containerd.runc.v2.group": group}))
		}
		c, err := b.container(r, id, []string{"sleep", "100000"}, extra...)
		if err != nil {
			fatal(err)
		}
		task, err := c.NewTask(b.ctx, cio.NullIO)
		if err != nil {
			fatal(fmt.Errorf("%s: %w", r.name, err))
		}
		if err := task.Start(b.ctx); err != nil {
			fatal(err)
		}
		cs, ts = append(cs, c), append(ts, task)
	}
	return cs, ts
}

func (b *bench) stopAll(cs []client.Container, ts []client.Task) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 10)
	for i := range cs {
		wg.Add(1)
		sem <- struct{}{}
		go func(c client.Container, t client.Task) {
			defer wg.Done()
			b.kill(c, t)
			<-sem
		}(cs[i], ts[i])
	}
	wg.Wait()
}

// ttyOutput: an exec with a terminal that writes 6.9 MB (what containerd's
// TestContainerExecLargeOutputWithTTY does 100 times): the console copy path.
func (b *bench) ttyOutput() {
	rs := b.sleepers("tty-")
	took := map[string][]time.Duration{}
	for i := 0; i < *flagTTYExecs; i++ {
		for _, x := range shuffled(rs, i) {
			spec, _ := x.c.Spec(b.ctx)
			ps := *spec.Process
			ps.Args = []string{"sh", "-c", `seq -s " " 1000000`}
			ps.Terminal = true
			var out countingWriter
			t0 := time.Now()
			p, err := x.task.Exec(b.ctx, fmt.Sprintf("t%d", i), &ps, cio.NewCreator(cio.WithStreams(nil, &out, nil), cio.WithTerminal))
			if err != nil {
				fatal(err)
			}
			ch, _ := p.Wait(b.ctx)
			if err := p.Start(b.ctx); err != nil {
				fatal(err)
			}
			<-ch
			if _, err := p.Delete(b.ctx); err != nil {
				fatal(fmt.Errorf("%s tty exec delete: %w", x.r.name, err))
			}
			took[x.r.name] = append(took[x.r.name], time.Since(t0))
			if out.n < 6_000_000 {
				fatal(fmt.Errorf("%s: tty exec wrote %d bytes, want about 6.9 MB", x.r.name, out.n))
			}
		}
	}
	for _, x := range rs {
		b.record("exec with a tty writing 6.9 MB, p50 (ms)", x.r.name, ms(pct(took[x.r.name], 50)))
		b.kill(x.c, x.task)
	}
}

// running is a long-running task of one runtime that a step execs into.
type running struct {
	r    rt
	c    client.Container
	task client.Task
}

// sleepers starts one `sleep` task per runtime.
func (b *bench) sleepers(prefix string) []running {
	var rs []running
	for _, r := range b.rts {
		c, err := b.container(r, b.id(prefix+r.name), []string{"sleep", "100000"})
		if err != nil {
			fatal(err)
		}
		task, err := c.NewTask(b.ctx, cio.NullIO)
		if err != nil {
			fatal(err)
		}
		if err := task.Start(b.ctx); err != nil {
			fatal(err)
		}
		rs = append(rs, running{r, c, task})
	}
	return rs
}

type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

// shuffled returns xs in the i-th order of a fixed pseudo-random sequence.
// Interleaved loops use it so that drift hits every runtime alike and no
// runtime always runs right after the same other one: a fixed or rotated
// order put this shim right after gVisor's exec and Stats every time, and
// runsc's leftover work cost it 5-10 ms per exec.
func shuffled[T any](xs []T, i int) []T {
	out := append([]T(nil), xs...)
	r := rand.New(rand.NewPCG(uint64(i), 0x5eed))
	r.Shuffle(len(out), func(a, b int) { out[a], out[b] = out[b], out[a] })
	return out
}

func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	if i < 0 {
		i = 0
	}
	return s[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000) }
func mib(b float64) string      { return fmt.Sprintf("%.2f", b/(1<<20)) }

func num(s string) float64 {
	f, err := strconv.ParseFloat(strings.Fields(s)[0], 64)
	if err != nil {
		return math.NaN()
	}
	return f
}
