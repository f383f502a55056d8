package runsc

import (
	"encoding/json"
	"testing"

	cgroup2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	gorunc "github.com/containerd/go-runc"
)

func wantFigure(t *testing.T, what string, got, want uint64) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %d, want %d", what, got, want)
	}
}

// TestV2Metrics: what `runsc events --stats` reports becomes the cgroup v2
// metrics containerd's runc shim returns on a v2 host: CPU times in
// microseconds (runsc's are nanoseconds), memory and swap usage, limit and
// peak, pids, and the host cgroup's OOM kill count.
func TestV2Metrics(t *testing.T) {
	for _, tc := range []struct {
		name  string
		event string // runsc events --stats output
		kills uint64
		check func(t *testing.T, m *cgroup2stats.Metrics)
	}{
		{
			name: "running sandbox",
			event: `{"type":"stats","id":"c1","data":{"cpu":{"usage":{"total":912005999,"percpu":[912005999],"kernel":604752001,"user":307253998}},
				"memory":{"cache":4096,"usage":{"limit":67108864,"usage":286720,"max":5472256,"failcnt":0},"swap":{"limit":134217728,"usage":8192,"failcnt":0}},
				"pids":{"current":3,"limit":64}}}`,
			check: func(t *testing.T, m *cgroup2stats.Metrics) {
				wantFigure(t, "cpu usage_usec", m.GetCPU().GetUsageUsec(), 912005)
				wantFigure(t, "cpu user_usec", m.GetCPU().GetUserUsec(), 307253)
				wantFigure(t, "cpu system_usec", m.GetCPU().GetSystemUsec(), 604752)
				wantFigure(t, "memory.current", m.GetMemory().GetUsage(), 286720)
				wantFigure(t, "memory.max", m.GetMemory().GetUsageLimit(), 64<<20)
				wantFigure(t, "memory.peak", m.GetMemory().GetMaxUsage(), 5472256)
				wantFigure(t, "memory.swap.current", m.GetMemory().GetSwapUsage(), 8192)
				wantFigure(t, "memory.swap.max", m.GetMemory().GetSwapLimit(), 128<<20)
				wantFigure(t, "pids.current", m.GetPids().GetCurrent(), 3)
				wantFigure(t, "pids.max", m.GetPids().GetLimit(), 64)
				wantFigure(t, "memory.events oom_kill", m.GetMemoryEvents().GetOomKill(), 0)
			},
		},
		{
			name:  "OOM-killed sandbox: the kill count comes from the host cgroup",
			event: `{"type":"stats","id":"c1","data":{"cpu":{"usage":{"total":999,"kernel":0,"user":999}},"memory":{"usage":{"limit":16777216,"usage":16777216,"failcnt":0},"swap":{"limit":0,"failcnt":0}},"pids":{}}}`,
			kills: 2,
			check: func(t *testing.T, m *cgroup2stats.Metrics) {
				wantFigure(t, "cpu usage_usec (under a microsecond)", m.GetCPU().GetUsageUsec(), 0)
				wantFigure(t, "memory.current", m.GetMemory().GetUsage(), 16<<20)
				wantFigure(t, "memory.events oom_kill", m.GetMemoryEvents().GetOomKill(), 2)
			},
		},
		{
			name:  "empty stats: every section is there, zero",
			event: `{"type":"stats","id":"c1","data":{"cpu":{"usage":{"kernel":0,"user":0}},"memory":{"usage":{"limit":0,"failcnt":0},"swap":{"limit":0,"failcnt":0}},"pids":{}}}`,
			check: func(t *testing.T, m *cgroup2stats.Metrics) {
				wantFigure(t, "cpu usage_usec", m.GetCPU().GetUsageUsec(), 0)
				wantFigure(t, "memory.max", m.GetMemory().GetUsageLimit(), 0)
				wantFigure(t, "pids.current", m.GetPids().GetCurrent(), 0)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ev gorunc.Event
			if err := json.Unmarshal([]byte(tc.event), &ev); err != nil {
				t.Fatal(err)
			}
			if ev.Stats == nil {
				t.Fatalf("no stats in %s", tc.event)
			}
			m := v2Metrics(ev.Stats, tc.kills)
			if m.CPU == nil || m.Memory == nil || m.Pids == nil || m.MemoryEvents == nil {
				t.Fatalf("v2 metrics with a section missing (CRI and ctr read each): %v", m)
			}
			tc.check(t, m)
		})
	}
}
