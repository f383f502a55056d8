package pool

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func open(t *testing.T, size int) *Pool {
	t.Helper()
	p, err := Open(t.TempDir(), "k8s.io", []byte("backend = \"runc\"\npods_per_shim = 2\n"), size)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func everyAlive(string) bool { return true }

func admit(t *testing.T, p *Pool, pod string, alive func(string) bool) string {
	t.Helper()
	g, release, err := p.Admit(pod, "/b/"+pod, alive)
	if err != nil {
		t.Fatalf("admit %s: %v", pod, err)
	}
	release()
	return g
}

func TestAdmitFillsSlotsInOrder(t *testing.T) {
	p := open(t, 2)
	var got []string
	for i := range 5 {
		got = append(got, admit(t, p, fmt.Sprintf("pod%d", i), everyAlive))
	}
	want := []string{p.Group(0), p.Group(0), p.Group(1), p.Group(1), p.Group(2)}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("groups %q, want %q", got, want)
		}
	}
	// Admitted again (containerd retrying a start): the same slot.
	if g := admit(t, p, "pod1", everyAlive); g != p.Group(0) {
		t.Errorf("pod1 again: %s, want %s", g, p.Group(0))
	}
	if g, ok, err := p.GroupOf("pod3"); err != nil || !ok || g != p.Group(1) {
		t.Errorf("GroupOf(pod3) = %q %v %v, want %s", g, ok, err, p.Group(1))
	}
}

func TestLeaveMakesRoom(t *testing.T) {
	p := open(t, 2)
	for i := range 4 {
		admit(t, p, fmt.Sprintf("pod%d", i), everyAlive)
	}
	if err := Leave(p.root, p.ns, "pod0"); err != nil {
		t.Fatal(err)
	}
	if err := Leave(p.root, p.ns, "pod0"); err != nil {
		t.Errorf("second leave: %v", err)
	}
	if err := Leave(p.root, p.ns, "never"); err != nil {
		t.Errorf("leave of a pod never admitted: %v", err)
	}
	if g := admit(t, p, "pod4", everyAlive); g != p.Group(0) {
		t.Errorf("after a leave from slot 0: %s, want %s", g, p.Group(0))
	}
	if _, ok, _ := p.GroupOf("pod0"); ok {
		t.Error("pod0 still has a group after leaving")
	}
}

// A slot whose shim is gone (SIGKILL) holds dead Pods: containerd deletes
// them; the slot is emptied and reused, not left full for ever.
func TestDeadSlotIsReused(t *testing.T) {
	p := open(t, 2)
	admit(t, p, "a", everyAlive)
	admit(t, p, "b", everyAlive)
	dead := p.Group(0)
	alive := func(g string) bool { return g != dead }
	if g := admit(t, p, "c", alive); g != dead {
		t.Errorf("c: %s, want the dead slot %s", g, dead)
	}
	if _, ok, _ := p.GroupOf("a"); ok {
		t.Error("a pod of the dead shim still has a group")
	}
	// Its late delete is no error.
	if err := Leave(p.root, p.ns, "a"); err != nil {
		t.Error(err)
	}
}

// A server may exit only when its slot is empty, and the decision and its
// socket's removal are one step under the lock.
func TestExitIfEmpty(t *testing.T) {
	p := open(t, 2)
	admit(t, p, "a", everyAlive)
	called := false
	done := func() error { called = true; return nil }
	if ok, err := p.ExitIfEmpty(p.Group(0), done); err != nil || ok || called {
		t.Fatalf("with a member: exit %v, err %v, done called %v", ok, err, called)
	}
	if err := Leave(p.root, p.ns, "a"); err != nil {
		t.Fatal(err)
	}
	if ok, err := p.ExitIfEmpty(p.Group(0), done); err != nil || !ok || !called {
		t.Fatalf("empty: exit %v, err %v, done called %v", ok, err, called)
	}
	if _, err := p.ExitIfEmpty("pool-other-0", done); err == nil {
		t.Error("a group of another pool was accepted")
	}
}

// Starts run as separate processes at once: the lock is an flock of a
// file, so separate opens of it exclude each other like separate processes.
func TestConcurrentAdmitsNeverOverfill(t *testing.T) {
	p := open(t, 3)
	const n = 40
	groups := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q, err := Open(filepath.Dir(p.dir), "k8s.io", []byte("backend = \"runc\"\npods_per_shim = 2\n"), 3)
			if err != nil {
				t.Error(err)
				return
			}
			g, release, err := q.Admit(fmt.Sprintf("pod%d", i), "/b", everyAlive)
			if err != nil {
				t.Error(err)
				return
			}
			groups[i] = g
			release()
		}()
	}
	wg.Wait()
	count := map[string]int{}
	for _, g := range groups {
		count[g]++
	}
	for g, c := range count {
		if c > 3 {
			t.Errorf("%s has %d pods, pool size 3", g, c)
		}
	}
	if len(count) != (n+2)/3 {
		t.Errorf("%d slots used for %d pods of 3, want %d", len(count), n, (n+2)/3)
	}
}

func TestPoolsApart(t *testing.T) {
	root := t.TempDir()
	a, _ := Open(root, "k8s.io", []byte("backend = \"runc\""), 2)
	b, _ := Open(root, "k8s.io", []byte("backend = \"runsc\""), 2)
	c, _ := Open(root, "default", []byte("backend = \"runc\""), 2)
	if a.Group(0) == b.Group(0) || a.Group(0) == c.Group(0) {
		t.Errorf("handlers or namespaces share a group: %s %s %s", a.Group(0), b.Group(0), c.Group(0))
	}
}

func TestBadInput(t *testing.T) {
	if _, err := Open(t.TempDir(), "k8s.io", nil, 1); err == nil {
		t.Error("a pool of 1 was accepted")
	}
	if _, err := Open(t.TempDir(), "../x", nil, 2); err == nil {
		t.Error("a namespace with a slash was accepted")
	}
	p := open(t, 2)
	for _, pod := range []string{"", "..", "a/b"} {
		if _, _, err := p.Admit(pod, "/b", everyAlive); err == nil {
			t.Errorf("pod id %q was accepted", pod)
		}
	}
	entries, _ := os.ReadDir(p.dir)
	for _, e := range entries {
		if e.Name() != "lock" {
			t.Errorf("a refused admit left %s", e.Name())
		}
	}
}

func TestOpenDirIsTheSamePool(t *testing.T) {
	p := open(t, 2)
	admit(t, p, "a", everyAlive)
	q, err := OpenDir(p.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if q.Group(0) != p.Group(0) || q.ns != p.ns {
		t.Fatalf("OpenDir: group %s ns %s, want %s %s", q.Group(0), q.ns, p.Group(0), p.ns)
	}
	if ok, err := q.ExitIfEmpty(q.Group(0), func() error { return nil }); ok || err != nil {
		t.Errorf("a slot with a member: exit %v %v", ok, err)
	}
	if _, err := OpenDir("/run/x/nokey"); err == nil {
		t.Error("a directory without a key was accepted")
	}
}

func TestBundlesAreTheSlotsPods(t *testing.T) {
	p := open(t, 2)
	for i := range 3 {
		admit(t, p, fmt.Sprintf("pod%d", i), everyAlive)
	}
	if err := Leave(p.root, p.ns, "pod0"); err != nil {
		t.Fatal(err)
	}
	got, err := p.Bundles(p.Group(0))
	if err != nil || len(got) != 1 || got[0] != "/b/pod1" {
		t.Fatalf("slot 0's bundles after pod0 left: %q %v, want [/b/pod1]", got, err)
	}
	if got, err := p.Bundles(p.Group(1)); err != nil || len(got) != 1 || got[0] != "/b/pod2" {
		t.Fatalf("slot 1's bundles: %q %v", got, err)
	}
	if _, err := p.Bundles("pool-other-0"); err == nil {
		t.Fatal("another pool's group: no error")
	}
}
