package cgroup

import (
	"math"
	"os"
	"path/filepath"
	"testing"
)

// TestLowestLimit: the Pod's limit on an ancestor bounds a cgroup of its
// own without one; "max" and missing files bound nothing.
func TestLowestLimit(t *testing.T) {
	root := t.TempDir()
	write := func(dir, v string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
		if v != "" {
			if err := os.WriteFile(filepath.Join(root, dir, "memory.max"), []byte(v+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	write("kubepods.slice", "max")
	write("kubepods.slice/pod.slice", "201326592")
	write("kubepods.slice/pod.slice/sandbox.scope", "max")
	write("other.slice/c", "")
	for _, tc := range []struct {
		path string
		want uint64
	}{
		{"kubepods.slice/pod.slice/sandbox.scope", 201326592},
		{"/kubepods.slice/pod.slice", 201326592},
		{"kubepods.slice", math.MaxUint64},
		{"other.slice/c", math.MaxUint64},
	} {
		got, err := lowestLimit(root, tc.path, "memory.max")
		if err != nil || got != tc.want {
			t.Errorf("%s: %d %v, want %d", tc.path, got, err, tc.want)
		}
	}
	write("bad", "lots")
	if _, err := lowestLimit(root, "bad", "memory.max"); err == nil {
		t.Error("a limit that is not a number was taken")
	}
}
