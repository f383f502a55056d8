package aggregator

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestFinalSnapshotFormat folds a final snapshot written by a shim before
// the aggregator moved to this package (testdata/final-snapshot.prom) and
// one written by today's shim: a node upgraded while shims run holds both,
// and the two must read the same.
func TestFinalSnapshotFormat(t *testing.T) {
	old, err := os.ReadFile(filepath.Join("testdata", "final-snapshot.prom"))
	if err != nil {
		t.Fatal(err)
	}
	a := newTestAggregator(t, nil)
	writeFinalFile(t, a.state, "old", "0", string(old))
	if err := populated().WriteFinal(a.state, "new"); err != nil {
		t.Fatal(err)
	}
	v := a.scrape(t)
	if left, _ := filepath.Glob(filepath.Join(a.state, "*.prom")); len(left) != 0 {
		t.Fatalf("finals not folded: %v", left)
	}
	self := gatherFlat(t, a.reg)
	if got := self[`containerd_shim_custom_aggregator_final_snapshots_folded_total{}`]; got != 2 {
		t.Fatalf("folded %v finals, want 2", got)
	}
	if got := self[`containerd_shim_custom_aggregator_dropped_series_total{}`]; got != 0 {
		t.Fatalf("dropped %v series", got)
	}
	// Every series is the sum of two equal snapshots: even.
	var keys []string
	for k, x := range v {
		keys = append(keys, k)
		if x != 0 && !strings.Contains(k, "_sum{") && x != 2*float64(int64(x/2)) {
			t.Errorf("%s = %v: the two snapshots differ", k, x)
		}
	}
	sort.Strings(keys)
	for _, want := range []string{
		`containerd_shim_custom_tasks_created_total{backend="runc",runtime_handler="custom-runc"}`,
		`containerd_shim_custom_task_rpc_requests_total{method="Create",result="ok"}`,
		`containerd_shim_custom_backend_command_failures_total{backend="runsc",command="create",runtime_handler="custom-runsc"}`,
	} {
		if v[want] == 0 {
			t.Errorf("%s missing from the folded totals (have %d series)", want, len(keys))
		}
	}
	if got := v[`containerd_shim_custom_tasks_created_total{backend="runc",runtime_handler="custom-runc"}`]; got != 6 {
		t.Errorf("created = %v, want 3 per snapshot", got)
	}
}
