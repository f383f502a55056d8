package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

var execCommand = exec.Command

// resources sampled per process, with the tolerance a trend must exceed.
var resources = []struct {
	name string
	get  func(procStats) float64
	tol  tolerance
}{
	{"fds", func(p procStats) float64 { return float64(p.fds) }, tolerance{abs: 4, rel: 0.05}},
	{"threads", func(p procStats) float64 { return float64(p.threads) }, tolerance{abs: 2, rel: 0.05}},
	{"inotify", func(p procStats) float64 { return float64(p.inotify) }, tolerance{abs: 0.5}},
	{"goroutines", func(p procStats) float64 { return float64(p.goroutines) }, tolerance{abs: 4, rel: 0.05}},
	{"pss_kib", func(p procStats) float64 { return float64(p.pssKiB) }, tolerance{abs: 1024, rel: 0.05}},
}

// node-wide leftovers, with their tolerance: they move with the work in
// flight at the sample, so the relative part is larger.
var leftoverTol = tolerance{abs: 3, rel: 0.10}

// sample is one sampling round.
type sample struct {
	t        float64 // minutes since the start
	shims    map[string]procStats
	node     procStats // summed over the shims
	nshims   int
	mounts   int // below containerd's state directory
	cgroups  int // task and pod cgroups (memory hierarchy, or unified)
	runsc    int // runsc container state entries
	ctrd     procStats
	restarts int
}

func (s *soak) sampleLoop(ctx context.Context) {
	tick := time.NewTicker(s.interval)
	defer tick.Stop()
	s.takeSample()
	for {
		select {
		case <-ctx.Done():
			s.takeSample()
			return
		case <-tick.C:
			s.takeSample()
		}
	}
}

func (s *soak) takeSample() {
	smp := sample{t: s.minutes(), shims: map[string]procStats{}}
	for _, p := range shimServers(s.d.Address()) {
		st, ok := readProcStats(p.pid)
		if !ok {
			continue
		}
		if st.goroutines = goroutines(p.metrics); st.goroutines < 0 {
			s.scrapeErrors.Add(1)
			st.goroutines = 0
		}
		smp.shims[fmt.Sprintf("%s (pid %d)", p.id, p.pid)] = st
		smp.node.fds += st.fds
		smp.node.inotify += st.inotify
		smp.node.threads += st.threads
		smp.node.pssKiB += st.pssKiB
		smp.node.goroutines += st.goroutines
		smp.nshims++
	}
	if pid := s.d.Pid(); pid != 0 {
		smp.ctrd, _ = readProcStats(pid)
	}
	mounts, _ := harness.MountsUnder(s.d.StateDir())
	smp.mounts = len(mounts)
	smp.cgroups = countEntries(cgroupRoots(), 2)
	smp.runsc = s.runscEntries()
	s.mu.Lock()
	smp.restarts = len(s.restarts)
	s.samples = append(s.samples, smp)
	s.mu.Unlock()
	fmt.Printf("soak: %5.1f min  shims %d  fds %d  threads %d  goroutines %d  inotify %d  pss %.1f MiB  mounts %d  cgroups %d  runsc %d  started %d exited %d lost %d errors %d\n",
		smp.t, smp.nshims, smp.node.fds, smp.node.threads, smp.node.goroutines, smp.node.inotify, float64(smp.node.pssKiB)/1024,
		smp.mounts, smp.cgroups, smp.runsc, s.started.Load(), s.exited.Load(), s.lost.Load(), s.opErrors.Load())
}

// cgroupRoots are where the soak's task and pod cgroups live: containerd
// puts a task at /<namespace>/<id>, CRI a pod under its CgroupParent.
func cgroupRoots() []string {
	base := "/sys/fs/cgroup/memory"
	if cgroups.Mode() == cgroups.Unified {
		base = "/sys/fs/cgroup"
	}
	// A pod's own parent (made by CRI here, by kubelet on a node) is
	// removed by the soak once the pod is; what counts is below it.
	return []string{filepath.Join(base, taskNS), filepath.Join(base, podParent)}
}

// runscEntries counts the runsc state the soak's tasks and pods hold: its
// own namespace's root, and the per-pod roots of its CRI pods.
func (s *soak) runscEntries() int {
	roots := []string{"/run/containerd/custom/runsc/" + taskNS}
	s.mu.Lock()
	for _, pod := range s.pods {
		roots = append(roots, filepath.Join("/run/containerd/custom/runsc", criNS, pod))
	}
	s.mu.Unlock()
	n := countEntries(roots[:1], 1)
	for _, r := range roots[1:] {
		if _, err := os.Stat(r); err == nil {
			n++ // the pod's root itself
		}
	}
	return n
}

// leftovers lists what is left once every task and pod was removed.
func (s *soak) leftovers() []string {
	var left []string
	deadline := time.Now().Add(time.Minute)
	for {
		left = nil
		if ps := shimServers(s.d.Address()); len(ps) > 0 {
			left = append(left, fmt.Sprintf("%d shims still running: %v", len(ps), ps))
		}
		if m, _ := harness.MountsUnder(s.d.StateDir()); len(m) > 0 {
			left = append(left, fmt.Sprintf("%d mounts: %v", len(m), m))
		}
		if n := countEntries(cgroupRoots(), 8); n > 0 {
			left = append(left, fmt.Sprintf("%d cgroups under %v", n, cgroupRoots()))
		}
		if n := s.runscEntries(); n > 0 {
			left = append(left, fmt.Sprintf("%d runsc state entries", n))
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(time.Second)
	}
}

// judgement is every trend the run is judged on.
func (s *soak) judgement() []trend {
	from := s.duration.Minutes() / 3
	var out []trend
	node := func(name string, get func(sample) float64, tol tolerance) {
		var pts []point
		for _, smp := range s.samples {
			pts = append(pts, point{smp.t, get(smp)})
		}
		out = append(out, judge(name, pts, from, tol))
	}
	for _, r := range resources {
		node("node "+r.name+" (all shims)", func(smp sample) float64 { return r.get(smp.node) }, tolerance{abs: r.tol.abs * 3, rel: 0.10})
	}
	node("node mounts", func(smp sample) float64 { return float64(smp.mounts) }, leftoverTol)
	node("node cgroups", func(smp sample) float64 { return float64(smp.cgroups) }, leftoverTol)
	node("node runsc state", func(smp sample) float64 { return float64(smp.runsc) }, leftoverTol)
	// Each shim that lived through the whole window, on its own.
	for _, key := range s.longLived(from) {
		for _, r := range resources {
			var pts []point
			for _, smp := range s.samples {
				if st, ok := smp.shims[key]; ok {
					pts = append(pts, point{smp.t, r.get(st)})
				}
			}
			out = append(out, judge("shim "+key+" "+r.name, pts, from, r.tol))
		}
	}
	return out
}

// longLived are the shims present in every sample from the window's start.
func (s *soak) longLived(from float64) []string {
	var keys []string
	first := true
	for _, smp := range s.samples {
		if smp.t < from {
			continue
		}
		if first {
			for k := range smp.shims {
				keys = append(keys, k)
			}
			first = false
			continue
		}
		var keep []string
		for _, k := range keys {
			if _, ok := smp.shims[k]; ok {
				keep = append(keep, k)
			}
		}
		keys = keep
	}
	sort.Strings(keys)
	return keys
}

// writeReport writes the markdown report and the plot and says whether
// the run passed.
func (s *soak) writeReport(left []string) bool {
	trends := s.judgement()
	var fails []string
	for _, tr := range trends {
		if !tr.ok {
			why := tr.why
			if why == "" {
				why = fmt.Sprintf("rose %.1f over the window, %.1f allowed", tr.rise, tr.allowed)
			}
			fails = append(fails, tr.series+": "+why)
		}
	}
	if n := s.lost.Load(); n > 0 {
		fails = append(fails, fmt.Sprintf("%d exits not delivered within %s: %s", n, exitWait, strings.Join(s.lostIDs, "; ")))
	}
	if st, ex := s.started.Load(), s.exited.Load(); st != ex {
		fails = append(fails, fmt.Sprintf("%d tasks started, %d exits delivered", st, ex))
	}
	fails = append(fails, left...)
	if len(s.restarts) < 2 && s.duration >= 3*s.interval {
		fails = append(fails, fmt.Sprintf("containerd restarted %d times, want 2", len(s.restarts)))
	}

	var b strings.Builder
	verdict := "PASS"
	if len(fails) > 0 {
		verdict = "FAIL"
	}
	fmt.Fprintf(&b, "# Soak test (`make soak`)\n\n")
	if s.duration < 30*time.Minute {
		fmt.Fprintf(&b, "**A short run (%s), not the 30-minute soak:** it shows the report's form and that the soak runs; the full run's figures replace it.\n\n", s.duration)
	}
	fmt.Fprintf(&b, "Run %s on %s: containerd %s, %s at parallelism %d (%d Task API workers, crash-loop pods on %s), runsc %s, sampled every %s; containerd restarted at %s min.\n\n",
		s.start.UTC().Format("2006-01-02 15:04 UTC"), hostname(), s.version, s.duration, s.parallel, max(s.parallel-2, 1),
		strings.Join(s.handlers, " and "), s.runsc, s.interval, joinFloats(s.restarts))
	fmt.Fprintf(&b, "**Verdict: %s.**", verdict)
	for _, f := range fails {
		fmt.Fprintf(&b, "\n- %s", f)
	}
	fmt.Fprintf(&b, "\n\n")
	fmt.Fprintf(&b, "| tasks started | exits delivered | of which while containerd was down | exits lost | OOM kills | operation errors | unanswered metrics scrapes |\n|---|---|---|---|---|---|---|\n| %d | %d | %d | %d | %d | %d | %d |\n\n",
		s.started.Load(), s.exited.Load(), s.exitedWhileDown.Load(), s.lost.Load(), s.oomKills.Load(), s.opErrors.Load(), s.scrapeErrors.Load())
	b.WriteString(`The workload: Task API lifecycles (runc and gVisor) run to their exit code; execs (3 per round), Stats, pause/resume and Update on two resident tasks (one per backend) whose shims live through the run; OOM kills (runc, 16 MiB); and one CRI pod per sandboxed handler (custom-runc-sb, custom-runsc-sb) whose container exits every 2 s and is removed and created again, as kubelet does. An exit counts as delivered when containerd's Wait (or CRI's container status) reports it, which happens only once the shim's TaskExit reached containerd.

**Flat** means: over the samples after the warm-up (the first third of the run), the least-squares line of the resource rises by at most its tolerance across the window (rise = slope × window length; tolerance = the larger of an absolute amount and a fraction of the window's mean), or its slope is not significant (t statistic below 3: a crash-looping container up at one sample and down at the next swings its shim's fds without any growth). Node series sum every shim alive at the sample (short-lived shims come and go, hence 10%); each shim that lived through the whole window is judged on its own. Goroutines are scraped from each shim's metrics socket (the containerd_shim_custom_goroutines gauge); a shim that did not answer a sample (it was exiting) counts 0 there.

`)
	fmt.Fprintf(&b, "![resources over time](%s)\n\n", filepath.Base(svgPath(s.report)))
	b.WriteString("## Trends\n\n| series | samples | slope /min | t | rise | allowed | flat |\n|---|---|---|---|---|---|---|\n")
	for _, tr := range trends {
		flat := "yes"
		if !tr.ok {
			flat = "**no**"
			if tr.why != "" {
				flat += " (" + tr.why + ")"
			}
		}
		fmt.Fprintf(&b, "| %s | %d | %.3f | %.1f | %.1f | %.1f | %s |\n", tr.series, tr.n, tr.slope, tr.t, tr.rise, tr.allowed, flat)
	}
	b.WriteString("\n## Samples (node)\n\n| min | restarts | shims | fds | threads | goroutines | inotify | PSS MiB | mounts | cgroups | runsc state | containerd fds | containerd threads |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, smp := range s.samples {
		fmt.Fprintf(&b, "| %.1f | %d | %d | %d | %d | %d | %d | %.1f | %d | %d | %d | %d | %d |\n", smp.t, smp.restarts, smp.nshims, smp.node.fds, smp.node.threads,
			smp.node.goroutines, smp.node.inotify, float64(smp.node.pssKiB)/1024, smp.mounts, smp.cgroups, smp.runsc, smp.ctrd.fds, smp.ctrd.threads)
	}
	if keys := s.longLived(s.duration.Minutes() / 3); len(keys) > 0 {
		b.WriteString("\n## Samples (shims that lived through the window: fds / threads / goroutines / inotify / PSS MiB)\n\n| min |")
		for _, k := range keys {
			fmt.Fprintf(&b, " %s |", k)
		}
		b.WriteString("\n|---|" + strings.Repeat("---|", len(keys)) + "\n")
		for _, smp := range s.samples {
			fmt.Fprintf(&b, "| %.1f |", smp.t)
			for _, k := range keys {
				if st, ok := smp.shims[k]; ok {
					fmt.Fprintf(&b, " %d / %d / %d / %d / %.1f |", st.fds, st.threads, st.goroutines, st.inotify, float64(st.pssKiB)/1024)
				} else {
					b.WriteString(" - |")
				}
			}
			b.WriteString("\n")
		}
	}
	if len(s.errs) > 0 {
		b.WriteString("\n## Operation errors (first 20)\n\nErrors of single operations (most while containerd restarts) do not fail the run; a lost exit or a leftover does.\n\n")
		for _, e := range s.errs {
			fmt.Fprintf(&b, "- %s\n", strings.ReplaceAll(e, "\n", " "))
		}
	}
	if err := os.WriteFile(s.report, []byte(b.String()), 0o644); err != nil {
		fatal(err)
	}
	if err := os.WriteFile(svgPath(s.report), []byte(s.plot()), 0o644); err != nil {
		fatal(err)
	}
	fmt.Printf("soak: %s (%s, %s)\n", verdict, s.report, svgPath(s.report))
	for _, f := range fails {
		fmt.Println("soak:  ", f)
	}
	return len(fails) == 0
}

func svgPath(report string) string { return strings.TrimSuffix(report, ".md") + ".svg" }

func joinFloats(fs []float64) string {
	if len(fs) == 0 {
		return "(none)"
	}
	var ss []string
	for _, f := range fs {
		ss = append(ss, fmt.Sprintf("%.1f", f))
	}
	return strings.Join(ss, " and ")
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

// plot draws the node series as a percentage of their mean over the run
// (one axis for all), the end of the warm-up and the restarts: an SVG
// written here, no plotting dependency.
func (s *soak) plot() string {
	const w, h, left, right, top, bottom = 800.0, 400.0, 60.0, 200.0, 20.0, 40.0
	type line struct {
		name, color string
		get         func(sample) float64
	}
	lines := []line{
		{"shim fds", "#1f77b4", func(x sample) float64 { return float64(x.node.fds) }},
		{"shim threads", "#ff7f0e", func(x sample) float64 { return float64(x.node.threads) }},
		{"shim inotify", "#2ca02c", func(x sample) float64 { return float64(x.node.inotify) }},
		{"shim goroutines", "#17becf", func(x sample) float64 { return float64(x.node.goroutines) }},
		{"shim PSS", "#d62728", func(x sample) float64 { return float64(x.node.pssKiB) }},
		{"mounts", "#9467bd", func(x sample) float64 { return float64(x.mounts) }},
		{"cgroups", "#8c564b", func(x sample) float64 { return float64(x.cgroups) }},
		{"containerd fds", "#7f7f7f", func(x sample) float64 { return float64(x.ctrd.fds) }},
	}
	tmax := math.Max(s.duration.Minutes(), 1)
	ymax := 200.0
	x := func(t float64) float64 { return left + (w-left-right)*t/tmax }
	y := func(v float64) float64 { return top + (h-top-bottom)*(1-math.Min(v, ymax)/ymax) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	for _, pct := range []float64{0, 50, 100, 150, 200} {
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="end">%.0f%%</text>`+"\n",
			left, w-right, y(pct), y(pct), left-5, y(pct)+4, pct)
	}
	for m := 0.0; m <= tmax; m += math.Max(1, math.Round(tmax/10)) {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%.0f</text>`+"\n", x(m), h-bottom+15, m)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">minutes (each series as %% of its mean)</text>`+"\n", left+(w-left-right)/2, h-5)
	warm := s.duration.Minutes() / 3
	fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black" stroke-dasharray="4 3"/><text x="%.1f" y="%.1f">warm-up ends</text>`+"\n",
		x(warm), x(warm), top, h-bottom, x(warm)+3, top+12)
	for _, r := range s.restarts {
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="red" stroke-dasharray="2 2"/><text x="%.1f" y="%.1f" fill="red">restart</text>`+"\n",
			x(r), x(r), top, h-bottom, x(r)+3, top+26)
	}
	for i, l := range lines {
		var sum float64
		for _, smp := range s.samples {
			sum += l.get(smp)
		}
		mean := sum / math.Max(float64(len(s.samples)), 1)
		var pts []string
		for _, smp := range s.samples {
			v := 100.0
			if mean > 0 {
				v = 100 * l.get(smp) / mean
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(smp.t), y(v)))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`+"\n", l.color, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="12" height="3" fill="%s"/><text x="%.1f" y="%.1f">%s (mean %.0f)</text>`+"\n",
			w-right+10, top+float64(i)*18+5, l.color, w-right+27, top+float64(i)*18+10, l.name, mean)
	}
	b.WriteString("</svg>\n")
	return b.String()
}
