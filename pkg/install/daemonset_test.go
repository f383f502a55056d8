package install

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAPI keeps one DaemonSet and its Pods as the apiserver does for these
// calls: a foreground delete marks the DaemonSet (deletionTimestamp), its
// Pods go one by one, then the DaemonSet.
type fakeAPI struct {
	mu       sync.Mutex
	exists   bool
	deleting bool
	pods     int
	deletes  []string
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case strings.HasSuffix(r.URL.Path, "/daemonsets/installer") && r.Method == http.MethodGet:
		if !f.exists {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"kind":"Status","message":"daemonsets.apps \"installer\" not found","reason":"NotFound","code":404}`))
			return
		}
		meta := map[string]any{"name": "installer"}
		if f.deleting {
			meta["deletionTimestamp"] = "2026-12-07T00:00:00Z"
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"metadata": meta})
	case strings.HasSuffix(r.URL.Path, "/daemonsets/installer") && r.Method == http.MethodDelete:
		body, _ := io.ReadAll(r.Body)
		f.deletes = append(f.deletes, string(body))
		f.deleting = true
	case strings.HasSuffix(r.URL.Path, "/pods") && r.URL.Query().Get("labelSelector") == "app=installer":
		if f.deleting && f.pods > 0 {
			f.pods-- // one Pod finished its uninstall
		}
		if f.deleting && f.pods == 0 {
			f.exists = false
		}
		items := make([]map[string]any, f.pods)
		_ = json.NewEncoder(w).Encode(map[string]any{"items": items})
	default:
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"kind":"Status","message":"forbidden","reason":"Forbidden","code":403}`))
	}
}

func TestDaemonSetGoingAndDrain(t *testing.T) {
	f := &fakeAPI{exists: true, pods: 2}
	srv := httptest.NewTLSServer(f)
	defer srv.Close()
	d := DaemonSet{API: &API{URL: srv.URL, Token: func() (string, error) { return "t", nil }, HTTP: srv.Client()}, Namespace: "kube-system", Name: "installer"}
	ctx := context.Background()
	if going, err := d.Going(ctx); err != nil || going {
		t.Fatalf("a DaemonSet in place (a rolling upgrade): going %v, %v", going, err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Drain(ctx, "app=installer", 30*time.Second) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Drain did not return once the Pods were gone")
	}
	if len(f.deletes) != 1 || !strings.Contains(f.deletes[0], `"propagationPolicy":"Foreground"`) {
		t.Fatalf("delete requests %q, want one foreground delete", f.deletes)
	}
	if going, err := d.Going(ctx); err != nil || !going {
		t.Fatalf("after the drain: going %v, %v", going, err)
	}
	// Deleting: marked, not gone yet.
	f.exists, f.deleting = true, true
	if going, err := d.Going(ctx); err != nil || !going {
		t.Fatalf("a DaemonSet being deleted: going %v, %v", going, err)
	}
}

func TestDaemonSetDrainTimesOut(t *testing.T) {
	f := &fakeAPI{exists: true, pods: 1000}
	srv := httptest.NewTLSServer(f)
	defer srv.Close()
	d := DaemonSet{API: &API{URL: srv.URL, Token: func() (string, error) { return "t", nil }, HTTP: srv.Client()}, Namespace: "kube-system", Name: "installer"}
	err := d.Drain(context.Background(), "app=installer", 3*time.Second)
	if err == nil || !strings.Contains(err.Error(), "still there") {
		t.Fatalf("pods that stay: %v", err)
	}
}
