package main

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// write renders the report: every metric per runtime and the ratios of
// ours to containerd's runc shim, with the machine it ran on.
func (b *bench) write(path string) error {
	var w strings.Builder
	host, _ := os.Hostname()
	kernel, err := harness.KernelRelease()
	if err != nil {
		return fmt.Errorf("uname: %w", err)
	}
	cpu := firstMatch("/proc/cpuinfo", "model name")
	mode := map[cgroups.CGMode]string{cgroups.Legacy: "v1", cgroups.Hybrid: "v1 (hybrid)", cgroups.Unified: "v2"}[cgroups.Mode()]
	runcV, _ := exec.Command("runc", "--version").Output()
	runscV, _ := exec.Command(filepath.Join(b.root, ".tools", "runsc", "runsc"), "--version").Output()
	rev, _ := exec.Command("git", "-C", b.root, "describe", "--always", "--dirty").Output()
	fmt.Fprintf(&w, "# Benchmarks\n\nWritten by `make bench` (integration/bench) on %s; rerunning replaces this file.\n\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&w, "| | |\n|---|---|\n")
	fmt.Fprintf(&w, "| machine | %s, %d CPUs (%s), %s RAM |\n", host, goruntime.NumCPU(), cpu, memTotal())
	fmt.Fprintf(&w, "| kernel | %s |\n| cgroups | %s |\n", kernel, mode)
	fmt.Fprintf(&w, "| containerd | %s (one daemon for all runtimes, log level info) |\n", *flagVersion)
	fmt.Fprintf(&w, "| runc | %s |\n| runsc | %s |\n", firstLine(string(runcV)), firstLine(string(runscV)))
	fmt.Fprintf(&w, "| shim | %s, %s |\n", strings.TrimSpace(string(rev)), goruntime.Version())
	if *flagNote != "" {
		fmt.Fprintf(&w, "| note | %s |\n", *flagNote)
	}
	fmt.Fprintf(&w, "\nRuntimes: **custom-runc** = this shim, runc backend in-process (libcontainer %s); **custom-runc-cli** = this shim, runc backend through the runc CLI (Debian's); **runc-shim** = containerd's containerd-shim-runc-v2 %s with Debian's runc; **runc-shim-1.5** = the same with a runc %s CLI built from the module proxy; **custom-runsc** = this shim, gVisor backend. Ratio = custom-runc / the better of the two runc-shim rows (lower is better for times and memory, higher for throughput).\n\n", runcLibVersion, *flagVersion, runcLibVersion)
	var names []string
	for _, r := range b.rts {
		names = append(names, r.name)
	}
	fmt.Fprintf(&w, "| metric | %s | ratio |\n|---|%s---|\n", strings.Join(names, " | "), strings.Repeat("---|", len(names)))
	for _, m := range b.order {
		var cells []string
		for _, n := range names {
			v := b.results[m][n]
			if v == "" {
				v = "–"
			}
			cells = append(cells, v)
		}
		ratio := "–"
		if a, ok := b.results[m]["custom-runc"]; ok {
			if best, ok := b.bestRuncShim(m); ok && best > 0 {
				ratio = fmt.Sprintf("%.2f", num(a)/best)
			}
		}
		fmt.Fprintf(&w, "| %s | %s | %s |\n", m, strings.Join(cells, " | "), ratio)
	}
	// Shim overhead over the raw runtimes.
	if v, ok := b.results["lifecycle p50 (ms)"]; ok {
		if f, ok := b.results["raw `runc run` of the bundle, p50 (ms)"]; ok {
			fmt.Fprintf(&w, "\nShim overhead over raw runc (lifecycle p50 − `runc run` p50 of the same runc): custom-runc %.1f ms (over runc %s), custom-runc-cli %.1f ms, runc-shim %.1f ms, runc-shim-1.5 %.1f ms.\n",
				num(v["custom-runc"])-num(f["runc-shim-1.5"]), runcLibVersion, num(v["custom-runc-cli"])-num(f["runc-shim"]),
				num(v["runc-shim"])-num(f["runc-shim"]), num(v["runc-shim-1.5"])-num(f["runc-shim-1.5"]))
		}
		if f, ok := b.results["raw `runsc run` of the bundle, p50 (ms)"]; ok && v["custom-runsc"] != "" {
			fmt.Fprintf(&w, "gVisor backend over raw `runsc run`: %.1f ms.\n", num(v["custom-runsc"])-num(f["custom-runsc"]))
		}
	}
	fmt.Fprintf(&w, "\nTargets (issue 13): lifecycle p50 ≤ 0.80; throughput ≥ 1.25; exec p50 ≤ 0.80; PSS per shim and per pod ≤ 0.80; the gVisor backend's overhead over raw `runsc run` ≤ the runc shim's over raw runc. (Issue 14): pod start p50 ≤ 0.70 and pod churn ≥ 1.4 against the runc shim with pause. The pod rows run on a second containerd with CRI: custom-runc and custom-runsc there are this shim on handlers with sandboxer = \"shim\" (no pause container), runc-shim is containerd's runc shim on the pause path.\n")
	b.writeDensity(&w)
	old, _ := os.ReadFile(path)
	if i := bytes.Index(old, []byte("\n## Notes")); i >= 0 {
		w.Write(old[i:]) // keep the hand-written notes
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(w.String()), 0o644)
}

func firstLine(s string) string { l, _, _ := strings.Cut(strings.TrimSpace(s), "\n"); return l }

func firstMatch(path, key string) string {
	data, _ := os.ReadFile(path)
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, key) {
			_, v, _ := strings.Cut(l, ":")
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

func memTotal() string {
	f := strings.Fields(firstMatch("/proc/meminfo", "MemTotal"))
	if len(f) == 0 {
		return "?"
	}
	kb, _ := strconv.ParseFloat(f[0], 64)
	return fmt.Sprintf("%.0f GiB", kb/(1<<20))
}

// bestRuncShim is the better of containerd's runc shim's two rows (Debian's
// runc, and runc of the linked version) for a metric: the higher for
// throughput, the lower for everything else.
func (b *bench) bestRuncShim(metric string) (float64, bool) {
	var vals []float64
	for _, n := range []string{"runc-shim", "runc-shim-1.5"} {
		if v, ok := b.results[metric][n]; ok && !math.IsNaN(num(v)) {
			vals = append(vals, num(v))
		}
	}
	if len(vals) == 0 {
		return 0, false
	}
	if strings.Contains(metric, "throughput") || strings.Contains(metric, "per s") {
		return slices.Max(vals), true
	}
	return slices.Min(vals), true
}
