package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// memory measures the shims: N containers of one shim each, then N
// containers grouped into one shim (a pod's).
func (b *bench) memory() {
	for _, r := range b.rts {
		prefix := "mem-" + r.name
		cs, ts := b.start(r, *flagMem, prefix, "")
		time.Sleep(2 * time.Second) // let the shims settle
		rss, pss := shimMemory(r.shim, prefix)
		b.record(fmt.Sprintf("shim RSS per container, %d containers (MiB)", *flagMem), r.name, mib(rss/float64(*flagMem)))
		b.record(fmt.Sprintf("shim PSS per container, %d containers (MiB)", *flagMem), r.name, mib(pss/float64(*flagMem)))
		b.stopAll(cs, ts)
		// A shim process still exiting would share the binary's pages with
		// the pod's shim and make its PSS look smaller than it is alone.
		waitGone(r.shim, prefix, 10*time.Second)

		group := fmt.Sprintf("pod-%s-%d", r.name, os.Getpid())
		cs, ts = b.start(r, *flagMem, "pod-"+r.name, group)
		time.Sleep(2 * time.Second)
		m := shimMemoryDetail(r.shim, "pod-"+r.name)
		b.record(fmt.Sprintf("shim PSS per pod of %d containers (MiB)", *flagMem), r.name, mib(m["Pss:"]))
		b.record("  of which anonymous / file-backed (MiB)", r.name, mib(m["Pss_Anon:"])+" / "+mib(m["Pss_File:"]))
		b.stopAll(cs, ts)
	}
}

// waitGone waits until no shim process names a task id with the prefix.
func waitGone(shim, prefix string, timeout time.Duration) {
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if ps, _ := harness.ProcessesMatching(shim + " -namespace " + ns + " -id " + prefix); len(ps) == 0 {
			return
		}
	}
}

// shimMemory sums RSS and PSS (bytes) of the shim processes whose command
// line names a task id with the prefix.
func shimMemory(shim, prefix string) (rss, pss float64) {
	m := shimMemoryDetail(shim, prefix)
	return m["Rss:"], m["Pss:"]
}

// shimMemoryDetail sums each smaps_rollup field (bytes) over those shims.
func shimMemoryDetail(shim, prefix string) map[string]float64 {
	sum := map[string]float64{}
	ps, _ := harness.ProcessesMatching(shim + " -namespace " + ns + " -id " + prefix)
	for _, p := range ps {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", p.Pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) < 3 || f[2] != "kB" {
				continue
			}
			v, _ := strconv.ParseFloat(f[1], 64)
			sum[f[0]] += v * 1024
		}
	}
	return sum
}
