package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// lifecycles is how many quick create/start/exit/delete cycles
// TestEventCompleteness runs ($EVENT_LIFECYCLES overrides).
func lifecycles() int {
	if n, err := strconv.Atoi(os.Getenv("EVENT_LIFECYCLES")); err == nil && n > 0 {
		return n
	}
	return 100
}

// TestEventCompleteness runs quick lifecycles of a task that exits at once,
// each in its own shim that exits right after the delete, and checks that
// containerd received create, start, exit, delete for every one of them, in
// that order. containerd's own runc shim loses or reorders some of these.
func TestEventCompleteness(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		n := lifecycles()
		rec := harness.Record(t, e.client, namespace)
		var ids []string
		for i := 0; i < n; i++ {
			id := containerID(t, strconv.Itoa(i))
			ids = append(ids, id)
			c := newContainer(t, e, id, nil, oci.WithProcessArgs("true"))
			if st, _ := runToExit(t, c); st != 0 {
				t.Fatalf("%s: exit %d", id, st)
			}
		}
		want := strings.Join([]string{harness.TopicTaskCreate, harness.TopicTaskStart, harness.TopicTaskExit, harness.TopicTaskDelete}, " ")
		// Every delete has been answered; give the last events a moment to
		// travel through containerd's event service.
		if _, err := rec.WaitFor(harness.Match(harness.TopicTaskDelete, ids[len(ids)-1]), scaled(30*time.Second)); err != nil {
			t.Logf("last delete event: %v", err) // the check below says what is missing
		}
		complete := 0
		var bad []string
		for _, id := range ids {
			if got := strings.Join(rec.Topics(id), " "); got == want {
				complete++
			} else {
				bad = append(bad, fmt.Sprintf("%s: %s", id, got))
			}
		}
		t.Logf("event completeness on %s: %d of %d lifecycles complete and in order", e.name(), complete, n)
		report(t, fmt.Sprintf("event-completeness %s %d/%d", e.name(), complete, n))
		if complete != n {
			t.Fatalf("%d of %d lifecycles incomplete or out of order:\n%s", n-complete, n, strings.Join(bad, "\n"))
		}
	})
}

// report appends a figure to $TEST_REPORT (if set), for closing notes and CI
// logs.
func report(t *testing.T, line string) {
	p := os.Getenv("TEST_REPORT")
	if p == "" {
		return
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Logf("report: %v", err)
		return
	}
	f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Logf("report: %v", err)
		return
	}
	if _, err := fmt.Fprintln(f, line); err != nil {
		t.Logf("report: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Logf("report: %v", err)
	}
}
