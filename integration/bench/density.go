package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// densityRuntimes are the rows of "memory per running Pod at node scale":
// this shim sandboxed (no pause) and on the pause path, containerd's runc
// shim with pause, gVisor through this shim and through gVisor's own shim
// with its pause container.
var densityRuntimes = []podRuntime{
	{name: "custom-runc-sb", handler: "custom-runc-sb", shim: "containerd-shim-custom-v2", sandboxed: true},
	{name: "custom-runc", handler: "custom-runc", shim: "containerd-shim-custom-v2"},
	{name: "runc-shim", handler: "runc", shim: "containerd-shim-runc-v2"},
	poolRuntime,
	{name: "custom-runsc-sb", handler: "custom-runsc-sb", shim: "containerd-shim-custom-v2", sandboxed: true},
	{name: "runsc-shim", handler: "runsc-shim", shim: "containerd-shim-runsc-v1", foreign: true},
}

// memSplit is PSS summed over processes, in bytes.
type memSplit struct {
	anon, file float64 // file: file-backed and shared memory (Pss - Pss_Anon)
	shim       float64 // of which the shims' own PSS
	procs      int
}

func (m memSplit) total() float64 { return m.anon + m.file }

func (m *memSplit) add(o memSplit) {
	m.anon += o.anon
	m.file += o.file
	m.shim += o.shim
	m.procs += o.procs
}

// densityResult is one runtime's row: memory summed over all its pods at
// each N.
type densityResult struct {
	name string
	at   map[int]memSplit
}

// density runs N pods of one sleeping container each per runtime (N from
// -density, ascending) and sums the PSS of every process the runtime adds
// per Pod: shims, holders, pause containers, gVisor's sandbox and gofer.
// The app's own process (runc) is not counted.
func (b *bench) density() {
	d, rc := b.podDaemon()
	defer func() {
		if err := d.Cleanup(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: CRI containerd cleanup:", err)
		}
	}()
	var ns []int
	for _, f := range strings.Split(*flagDensity, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			fatal(fmt.Errorf("-density %q: want ascending pod counts", *flagDensity))
		}
		ns = append(ns, n)
	}
	slices.Sort(ns)
	for _, r := range densityRuntimes {
		if !slices.Contains(strings.Split(*flagDensityRts, ","), r.name) {
			continue
		}
		res := densityResult{name: r.name, at: map[int]memSplit{}}
		var ids []string
		for _, n := range ns {
			for len(ids) < n {
				id, _, err := b.pod(rc, r, fmt.Sprintf("mem-%s-%d", r.name, len(ids)))
				if err != nil && r.foreign && len(ids) == 0 {
					// Another project's shim that cannot run on this host
					// (gVisor's sets its oom_score_adj to -999, which some
					// hosts deny even to root): a row saying why.
					fmt.Printf("   density %-16s not measured: %v\n", r.name, err)
					b.densitySkipped = append(b.densitySkipped, fmt.Sprintf("%s: not measured on this host: %v", r.name, err))
					if id != "" {
						_ = removePod(rc, id)
					}
					break
				}
				if err != nil {
					fatal(err)
				}
				ids = append(ids, id)
			}
			if len(ids) < n {
				break // not measured (above)
			}
			// Let start-up garbage be collected and returned (the shims
			// trim after a second idle) before sampling.
			time.Sleep(3 * time.Second)
			var sum memSplit
			if r.pooled {
				var err error
				sum, err = poolMemory(r)
				if err != nil {
					fatal(fmt.Errorf("%s: %w", r.name, err))
				}
			}
			for _, id := range ids {
				if r.pooled {
					break
				}
				m, err := podMemory(r, id)
				if err != nil {
					fatal(fmt.Errorf("%s: %w", r.name, err))
				}
				sum.add(m)
			}
			res.at[n] = sum
			fmt.Printf("   density %-16s N=%-3d per pod %s MiB (anon %s / file %s), shim %s, %.1f processes\n",
				r.name, n, mib(sum.total()/float64(n)), mib(sum.anon/float64(n)), mib(sum.file/float64(n)),
				mib(sum.shim/float64(n)), float64(sum.procs)/float64(n))
		}
		for _, id := range ids {
			if err := removePod(rc, id); err != nil {
				fatal(fmt.Errorf("%s remove pod: %w", r.name, err))
			}
		}
		if len(res.at) > 0 {
			b.densityResults = append(b.densityResults, res)
		}
		b.densityNs = ns
	}
}

// podMemory sums what the runtime runs for one pod: its shim (the process
// whose -id is the pod's sandbox id: this shim's sandbox, or the pause
// container's shim, which containerd's and gVisor's shims group the pod
// under) and the shim's descendants, and gVisor's sandbox and gofer of the
// pod wherever they were reparented; the app's own process is left out.
func podMemory(r podRuntime, podID string) (memSplit, error) {
	all, err := harness.Processes()
	if err != nil {
		return memSplit{}, err
	}
	children := map[int][]harness.Proc{}
	var shim *harness.Proc
	for i, p := range all {
		children[p.PPid] = append(children[p.PPid], p)
		args := strings.Fields(p.Cmdline)
		if len(args) > 0 && filepath.Base(args[0]) == r.shim {
			if j := slices.Index(args, "-id"); j >= 0 && j+1 < len(args) && args[j+1] == podID && !slices.Contains(args, "start") && !slices.Contains(args, "delete") {
				if shim != nil {
					return memSplit{}, fmt.Errorf("pod %s: two shims (%d, %d)", podID, shim.Pid, p.Pid)
				}
				shim = &all[i]
			}
		}
	}
	if shim == nil {
		return memSplit{}, fmt.Errorf("pod %s: no %s process", podID, r.shim)
	}
	counted := map[int]bool{}
	var sum memSplit
	count := func(p harness.Proc) {
		if counted[p.Pid] || p.State == "Z" || p.Cmdline == "sleep 100000" {
			return
		}
		counted[p.Pid] = true
		m, err := pssSplit(p.Pid)
		if err != nil {
			return // exited meanwhile
		}
		sum.add(m)
		if p.Pid == shim.Pid {
			sum.shim += m.total()
		}
	}
	var walk func(p harness.Proc)
	walk = func(p harness.Proc) {
		count(p)
		for _, c := range children[p.Pid] {
			walk(c)
		}
	}
	walk(*shim)
	for _, p := range all {
		if (strings.HasPrefix(p.Cmdline, "runsc-sandbox ") || strings.HasPrefix(p.Cmdline, "runsc-gofer ")) && strings.Contains(p.Cmdline, podID) {
			walk(p)
		}
	}
	return sum, nil
}

// poolMemory sums what a shared-shim handler runs for all its Pods: every
// shared shim (started with -pool; the other rows' Pods are gone by then)
// and their descendants but the apps' own processes.
func poolMemory(r podRuntime) (memSplit, error) {
	all, err := harness.Processes()
	if err != nil {
		return memSplit{}, err
	}
	children := map[int][]harness.Proc{}
	var shims []harness.Proc
	for _, p := range all {
		children[p.PPid] = append(children[p.PPid], p)
		args := strings.Fields(p.Cmdline)
		if len(args) > 0 && filepath.Base(args[0]) == r.shim && slices.Contains(args, "-pool") {
			shims = append(shims, p)
		}
	}
	if len(shims) == 0 {
		return memSplit{}, fmt.Errorf("no shared %s process", r.shim)
	}
	var sum memSplit
	var walk func(p harness.Proc, shim bool)
	walk = func(p harness.Proc, shim bool) {
		if p.State == "Z" || p.Cmdline == "sleep 100000" {
			return
		}
		if m, err := pssSplit(p.Pid); err == nil {
			sum.add(m)
			if shim {
				sum.shim += m.total()
			}
		}
		for _, c := range children[p.Pid] {
			walk(c, false)
		}
	}
	for _, s := range shims {
		walk(s, true)
	}
	return sum, nil
}

// pssSplit reads a process's PSS from smaps_rollup, split into anonymous and
// the rest (file-backed and shared memory).
func pssSplit(pid int) (memSplit, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return memSplit{}, err
	}
	var pss, anon float64
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "Pss:":
			pss = kb * 1024
		case "Pss_Anon:":
			anon = kb * 1024
		}
	}
	return memSplit{anon: anon, file: pss - anon, procs: 1}, nil
}

// writeDensity renders the node-scale memory table: per pod at each N,
// the marginal cost per pod between the smallest and largest N, and the
// ratio to containerd's runc shim with pause at the largest N.
func (b *bench) writeDensity(w *strings.Builder) {
	if len(b.densityResults) == 0 {
		return
	}
	ns := b.densityNs
	lo, hi := ns[0], ns[len(ns)-1]
	fmt.Fprintf(w, "\n### Memory per running Pod at node scale\n\n")
	fmt.Fprintf(w, "N CRI Pods with one sleeping container each, all running; PSS from smaps_rollup summed over every process the runtime adds per Pod (shims, holders, pause containers, gVisor's sandbox and gofer; not the app's process), divided by N; MiB. \"anon / file\": anonymous against file-backed and shared. Marginal: (sum at N=%d − sum at N=%d) / %d. Ratio: per Pod at N=%d against runc-shim.\n\n", hi, lo, hi-lo, hi)
	fmt.Fprintf(w, "| runtime |")
	for _, n := range ns {
		fmt.Fprintf(w, " N=%d per Pod (anon / file) | shim PSS at N=%d |", n, n)
	}
	fmt.Fprintf(w, " marginal per Pod | processes per Pod | ratio |\n|---|%s---|---|---|\n", strings.Repeat("---|---|", len(ns)))
	var base memSplit
	for _, r := range b.densityResults {
		if r.name == "runc-shim" {
			base = r.at[hi]
		}
	}
	for _, r := range b.densityResults {
		fmt.Fprintf(w, "| %s |", r.name)
		for _, n := range ns {
			m := r.at[n]
			fmt.Fprintf(w, " %s (%s / %s) | %s |", mib(m.total()/float64(n)), mib(m.anon/float64(n)), mib(m.file/float64(n)), mib(m.shim/float64(n)))
		}
		marginal := "–"
		if hi > lo {
			marginal = mib((r.at[hi].total() - r.at[lo].total()) / float64(hi-lo))
		}
		ratio := "–"
		if base.total() > 0 {
			ratio = fmt.Sprintf("%.2f", r.at[hi].total()/base.total())
		}
		fmt.Fprintf(w, " %s | %.1f | %s |\n", marginal, float64(r.at[hi].procs)/float64(hi), ratio)
	}
	for _, s := range b.densitySkipped {
		fmt.Fprintf(w, "\n%s\n", s)
	}
	if base.shim > 0 {
		for _, r := range b.densityResults {
			if r.name == "custom-runc-sb" {
				fmt.Fprintf(w, "\nPSS per shim at N=%d, custom-runc-sb against runc-shim: %.2f. Targets (issue 20): per Pod ≤ 0.70, PSS per shim ≤ 0.80.\n", hi, r.at[hi].shim/base.shim)
			}
		}
	}
	fmt.Fprintf(w, "\ncustom-runc-pool is custom-runc-sb with `pods_per_shim = 10` (docs/shared-shim.md): its shim column is all its shims' PSS divided by N. Target (issue 20): ≤ 0.25 per Pod at N=50.\n")
	if b.poolStart[0] > 0 {
		fmt.Fprintf(w, "\nPod start p50/p99 on custom-runc-pool with a Pod of the pool running (a start joins its shim): %s / %s ms (the pods table has the one-shim-per-Pod figures).\n", ms(b.poolStart[0]), ms(b.poolStart[1]))
	}
}
