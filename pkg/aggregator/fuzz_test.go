package aggregator

import (
	"bytes"
	"testing"
)

// FuzzParseSnapshot feeds the aggregator's parser what a hostile or broken
// shim (or a corrupt final snapshot) could send: it must never panic, stay
// within its bounds, and merging the result must not panic either.
func FuzzParseSnapshot(f *testing.F) {
	f.Add([]byte("# TYPE containerd_shim_custom_tasks_created_total counter\ncontainerd_shim_custom_tasks_created_total{backend=\"runc\",runtime_handler=\"\"} 3\n"), false)
	f.Add([]byte("# TYPE containerd_shim_custom_task_rpc_duration_seconds histogram\ncontainerd_shim_custom_task_rpc_duration_seconds_bucket{method=\"Create\",le=\"0.1\"} 1\ncontainerd_shim_custom_task_rpc_duration_seconds_bucket{method=\"Create\",le=\"+Inf\"} 2\ncontainerd_shim_custom_task_rpc_duration_seconds_sum{method=\"Create\"} 0.3\ncontainerd_shim_custom_task_rpc_duration_seconds_count{method=\"Create\"} 2\n"), false)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f, 0x0a}, true)
	f.Add([]byte("containerd_shim_custom_tasks{state=\"running\"} NaN\n"), false)
	f.Fuzz(func(t *testing.T, data []byte, proto bool) {
		format := formatText
		if proto {
			format = formatProto
		}
		s, _, err := parseSnapshot(bytes.NewReader(data), format, 1<<16, 1000, true)
		if err != nil {
			return
		}
		total := newSnapshot()
		total.add(s, true, 1000)
		total.add(s, true, 1000)
		total.toDTO(nil)
	})
}
