package runsc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	cgroup1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	cgroup2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	gorunc "github.com/containerd/go-runc"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
)

// Pids implements runtime.Backend.
func (b *Backend) Pids(ctx context.Context, id string) ([]int, error) {
	var out bytes.Buffer
	if err := b.run(ctx, "ps", nil, &out, "ps", "--format", "json", id); err != nil {
		return nil, err
	}
	var pids []int
	if err := json.Unmarshal(out.Bytes(), &pids); err != nil {
		return nil, fmt.Errorf("decode runsc ps output: %w", err)
	}
	return b.hostPids(pids), nil
}

// hostPids maps the pids runsc reports (inside the sandbox) to the host
// pids containerd knows where there are any: the container's first process
// to the task's pid, each exec to its host "runsc exec" process. Other
// sandboxed processes have no host process and keep their sandbox pid.
func (b *Backend) hostPids(pids []int) []int {
	if len(pids) == 0 {
		return pids
	}
	host := map[int]int{}
	if hp, err := bundle.ReadPidFile(b.bundle.InitPidFile()); err == nil {
		host[slices.Min(pids)] = hp
	}
	for _, execID := range b.bundle.ExecInternalPidFiles() {
		ip, err1 := bundle.ReadPidFile(b.bundle.ExecInternalPidFile(execID))
		hp, err2 := bundle.ReadPidFile(b.bundle.ExecPidFile(execID))
		if err1 == nil && err2 == nil {
			host[ip] = hp
		}
	}
	out := make([]int, len(pids))
	for i, p := range pids {
		if hp, ok := host[p]; ok {
			p = hp
		}
		out[i] = p
	}
	return out
}

// Cgroup implements runtime.Backend: the sandbox's host cgroup (pid is the
// sandbox process), where the host's OOM killer acts.
func (b *Backend) Cgroup(ctx context.Context, id string, pid int) (cgroup.Cgroup, error) {
	return cgroup.Load(pid)
}

// Stats implements runtime.Backend: the sandbox's own accounting ("runsc
// events --stats") in the cgroup metric types of the host's mode, with the
// OOM kill count of the host cgroup, which gVisor's own shim leaves out.
func (b *Backend) Stats(ctx context.Context, id string, cg cgroup.Cgroup) (*cgroup.Metrics, error) {
	var out bytes.Buffer
	if err := b.run(ctx, "events", nil, &out, "events", "--stats", id); err != nil {
		// Once the sandbox is gone (an exited task before its delete, an
		// OOM kill) runsc fails without a word; its host cgroup still has
		// the last figures.
		if cg != nil {
			if st, cerr := cg.Stats(); cerr == nil {
				return st, nil
			}
		}
		return nil, err
	}
	var ev gorunc.Event
	if err := json.Unmarshal(out.Bytes(), &ev); err != nil {
		return nil, fmt.Errorf("decode runsc events output: %w", err)
	}
	if ev.Type != "stats" || ev.Stats == nil {
		return nil, fmt.Errorf("runsc events --stats returned %q without stats", ev.Type)
	}
	// The sandbox does not know the host's memory limit or OOM kills; its
	// host cgroup does.
	var kills uint64
	if cg != nil {
		kills, _ = cg.OOMKills()
		if ev.Stats.Memory.Usage.Limit == 0 {
			ev.Stats.Memory.Usage.Limit = cg.MemoryLimit()
		}
	}
	if cgroup.Unified() {
		return &cgroup.Metrics{V2: v2Metrics(ev.Stats, kills)}, nil
	}
	return &cgroup.Metrics{V1: v1Metrics(ev.Stats, kills)}, nil
}

func v1Metrics(s *gorunc.Stats, oomKills uint64) *cgroup1stats.Metrics {
	entry := func(m gorunc.MemoryEntry) *cgroup1stats.MemoryEntry {
		return &cgroup1stats.MemoryEntry{Limit: m.Limit, Usage: m.Usage, Max: m.Max, Failcnt: m.Failcnt}
	}
	return &cgroup1stats.Metrics{
		CPU: &cgroup1stats.CPUStat{
			Usage: &cgroup1stats.CPUUsage{
				Total: s.Cpu.Usage.Total, Kernel: s.Cpu.Usage.Kernel, User: s.Cpu.Usage.User, PerCPU: s.Cpu.Usage.Percpu,
			},
			Throttling: &cgroup1stats.Throttle{
				Periods: s.Cpu.Throttling.Periods, ThrottledPeriods: s.Cpu.Throttling.ThrottledPeriods, ThrottledTime: s.Cpu.Throttling.ThrottledTime,
			},
		},
		Memory: &cgroup1stats.MemoryStat{
			Cache:     s.Memory.Cache,
			Usage:     entry(s.Memory.Usage),
			Swap:      entry(s.Memory.Swap),
			Kernel:    entry(s.Memory.Kernel),
			KernelTCP: entry(s.Memory.KernelTCP),
		},
		Pids:             &cgroup1stats.PidsStat{Current: s.Pids.Current, Limit: s.Pids.Limit},
		MemoryOomControl: &cgroup1stats.MemoryOomControl{OomKill: oomKills},
	}
}

func v2Metrics(s *gorunc.Stats, oomKills uint64) *cgroup2stats.Metrics {
	return &cgroup2stats.Metrics{
		CPU: &cgroup2stats.CPUStat{
			UsageUsec:  s.Cpu.Usage.Total / 1000,
			UserUsec:   s.Cpu.Usage.User / 1000,
			SystemUsec: s.Cpu.Usage.Kernel / 1000,
		},
		Memory: &cgroup2stats.MemoryStat{
			Usage:      s.Memory.Usage.Usage,
			UsageLimit: s.Memory.Usage.Limit,
			MaxUsage:   s.Memory.Usage.Max,
			SwapUsage:  s.Memory.Swap.Usage,
			SwapLimit:  s.Memory.Swap.Limit,
		},
		Pids:         &cgroup2stats.PidsStat{Current: s.Pids.Current, Limit: s.Pids.Limit},
		MemoryEvents: &cgroup2stats.MemoryEvents{OomKill: oomKills},
	}
}
