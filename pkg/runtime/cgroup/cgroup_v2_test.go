package cgroup

import (
	"errors"
	"math"
	"path/filepath"
	"testing"

	cgroup2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"
)

// testdata/cgroup2 is a cgroup v2 mountpoint: control files of runc
// containers under Debian's 6.1 kernel, copied from the cgroup v2 guest by
// scripts/cgroup2/capture-fixtures.sh.
//
//	testing/limited    running sleep, memory.max 64 MiB, pids.max 64, cpu.max 50000 100000
//	testing/unlimited  running sleep, no limits ("max")
//	testing/oomkilled  a shell OOM-killed under memory.max 16 MiB, not yet deleted
func loadV2(t *testing.T, group string) Cgroup {
	t.Helper()
	mnt, err := filepath.Abs(filepath.Join("testdata", "cgroup2"))
	if err != nil {
		t.Fatal(err)
	}
	cg, err := LoadV2(mnt, group)
	if err != nil {
		t.Fatalf("load %s under %s: %v", group, mnt, err)
	}
	return cg
}

func TestStatsV2(t *testing.T) {
	for _, tc := range []struct {
		name  string
		group string
		want  *cgroup2stats.Metrics
	}{
		{
			name:  "limited",
			group: "/testing/limited",
			want: &cgroup2stats.Metrics{
				Pids: &cgroup2stats.PidsStat{Current: 1, Limit: 64},
				CPU: &cgroup2stats.CPUStat{UsageUsec: 912005, UserUsec: 307253, SystemUsec: 604752,
					NrPeriods: 7, NrThrottled: 2, ThrottledUsec: 73430},
				Memory:       &cgroup2stats.MemoryStat{Usage: 286720, UsageLimit: 64 << 20, MaxUsage: 5472256, Anon: 49152, KernelStack: 16384, Slab: 179888},
				MemoryEvents: &cgroup2stats.MemoryEvents{},
			},
		},
		{
			name:  "unlimited: max is the largest uint64, as containerd's runc shim reports it",
			group: "/testing/unlimited",
			want: &cgroup2stats.Metrics{
				Pids:         &cgroup2stats.PidsStat{Current: 1, Limit: math.MaxUint64},
				CPU:          &cgroup2stats.CPUStat{UsageUsec: 453806, UserUsec: 199890, SystemUsec: 253915},
				Memory:       &cgroup2stats.MemoryStat{Usage: 282624, UsageLimit: math.MaxUint64, MaxUsage: 3321856, SwapLimit: math.MaxUint64},
				MemoryEvents: &cgroup2stats.MemoryEvents{},
			},
		},
		{
			name:  "oom-killed",
			group: "/testing/oomkilled",
			want: &cgroup2stats.Metrics{
				Pids:         &cgroup2stats.PidsStat{Current: 0, Limit: math.MaxUint64},
				CPU:          &cgroup2stats.CPUStat{UsageUsec: 1359059, UserUsec: 476166, SystemUsec: 882892},
				Memory:       &cgroup2stats.MemoryStat{Usage: 0, UsageLimit: 16 << 20, MaxUsage: 16 << 20},
				MemoryEvents: &cgroup2stats.MemoryEvents{Max: 35, Oom: 1, OomKill: 1},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := loadV2(t, tc.group).Stats()
			if err != nil {
				t.Fatal(err)
			}
			got := v.V2
			if got == nil || v.V1 != nil {
				t.Fatalf("Stats returned %+v, want cgroup2 metrics only", v)
			}
			if g, w := got.GetPids(), tc.want.Pids; g.GetCurrent() != w.Current || g.GetLimit() != w.Limit {
				t.Errorf("pids %v, want %v", g, w)
			}
			if g, w := got.GetCPU(), tc.want.CPU; g.GetUsageUsec() != w.UsageUsec || g.GetUserUsec() != w.UserUsec ||
				g.GetSystemUsec() != w.SystemUsec || g.GetNrPeriods() != w.NrPeriods ||
				g.GetNrThrottled() != w.NrThrottled || g.GetThrottledUsec() != w.ThrottledUsec {
				t.Errorf("cpu %v, want %v", g, w)
			}
			if g, w := got.GetMemory(), tc.want.Memory; g.GetUsage() != w.Usage || g.GetUsageLimit() != w.UsageLimit ||
				g.GetMaxUsage() != w.MaxUsage || g.GetSwapLimit() != w.SwapLimit ||
				w.Anon != 0 && (g.GetAnon() != w.Anon || g.GetKernelStack() != w.KernelStack || g.GetSlab() != w.Slab) {
				t.Errorf("memory %v, want %v", g, w)
			}
			if g, w := got.GetMemoryEvents(), tc.want.MemoryEvents; g.GetMax() != w.Max || g.GetOom() != w.Oom || g.GetOomKill() != w.OomKill {
				t.Errorf("memory events %v, want %v", g, w)
			}
			if got.GetCPU().GetPSI() == nil || got.GetMemory().GetPSI() == nil {
				t.Errorf("no pressure figures (cpu.pressure, memory.pressure): %v", got)
			}
		})
	}
}

func TestOOMKillsAndMemoryLimitV2(t *testing.T) {
	for _, tc := range []struct {
		name      string
		group     string
		wantKills uint64
		wantLimit uint64
	}{
		{"limited", "/testing/limited", 0, 64 << 20},
		{"unlimited", "/testing/unlimited", 0, math.MaxUint64},
		{"oom-killed", "/testing/oomkilled", 1, 16 << 20},
		// A cgroup removed under the shim (the container was deleted):
		// nothing to read, no kills, no limit; not an error.
		{"removed", "/testing/gone", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cg := loadV2(t, tc.group)
			kills, err := cg.OOMKills()
			if err != nil || kills != tc.wantKills {
				t.Errorf("OOMKills = %d, %v; want %d", kills, err, tc.wantKills)
			}
			if l := cg.MemoryLimit(); l != tc.wantLimit {
				t.Errorf("MemoryLimit = %d, want %d", l, tc.wantLimit)
			}
		})
	}
}

func TestLoadWithoutProcess(t *testing.T) {
	for _, pid := range []int{0, -1} {
		if _, err := Load(pid); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("Load(%d): %v, want NotFound", pid, err)
		}
	}
}
