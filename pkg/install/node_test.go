package install

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestNodeLabelPatches(t *testing.T) {
	var got []map[string]any
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPatch || r.URL.Path != "/api/v1/nodes/node-1" ||
			r.Header.Get("Content-Type") != "application/merge-patch+json" || r.Header.Get("Authorization") != "Bearer tok" {
			t.Errorf("request %s %s %v", r.Method, r.URL.Path, r.Header)
		}
		data, _ := io.ReadAll(r.Body)
		var patch map[string]any
		if err := json.Unmarshal(data, &patch); err != nil {
			t.Errorf("body %q: %v", data, err)
		}
		got = append(got, patch)
		_, _ = w.Write([]byte(`{"kind":"Node"}`))
	}))
	defer srv.Close()
	n := &Node{Name: "node-1", API: &API{URL: srv.URL, Token: func() (string, error) { return "tok", nil }, HTTP: srv.Client()}}
	v := "v1.2.3"
	if err := n.SetLabels(context.Background(), map[string]*string{LabelKey: &v}); err != nil {
		t.Fatal(err)
	}
	if err := n.SetLabels(context.Background(), map[string]*string{LabelKey: nil}); err != nil {
		t.Fatal(err)
	}
	labels := func(i int) map[string]any { return got[i]["metadata"].(map[string]any)["labels"].(map[string]any) }
	if len(got) != 2 || labels(0)[LabelKey] != "v1.2.3" {
		t.Fatalf("patches %v", got)
	}
	if v, ok := labels(1)[LabelKey]; !ok || v != nil {
		t.Fatalf("remove: %v, want the key with null", labels(1))
	}
}

func TestNodeLabelSaysWhyRefused(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"kind":"Status","status":"Failure","message":"nodes \"node-2\" is forbidden: only its own node","reason":"Forbidden","code":403}`))
	}))
	defer srv.Close()
	n := &Node{Name: "node-2", API: &API{URL: srv.URL, Token: func() (string, error) { return "tok", nil }, HTTP: srv.Client()}}
	v := "v1"
	err := n.SetLabels(context.Background(), map[string]*string{LabelKey: &v})
	if err == nil || !strings.Contains(err.Error(), "only its own node") || !strings.Contains(err.Error(), "403") {
		t.Fatalf("refused patch: %v", err)
	}
}
