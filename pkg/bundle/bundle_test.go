package bundle

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestExitRoundTripAndOldFormat(t *testing.T) {
	b := Bundle(t.TempDir())
	if _, err := b.ReadExit(); !os.IsNotExist(err) {
		t.Fatalf("no file: %v", err)
	}
	at := time.Unix(1700000000, 5).UTC()
	if err := b.WriteExit(Exit{Pid: 9, Status: 137, Timestamp: at}); err != nil {
		t.Fatal(err)
	}
	e, err := b.ReadExit()
	if err != nil || e.Pid != 9 || e.Status != 137 || !e.Timestamp.Equal(at) {
		t.Fatalf("%+v %v", e, err)
	}
	// Shims before the restructure wrote go-runc's Exit; "delete" of a task
	// they left must still read it.
	check(t, os.WriteFile(b.ExitFile(), []byte(`{"Timestamp":"2026-11-25T01:02:03Z","Pid":4,"Status":3}`), 0o600))
	if e, err := b.ReadExit(); err != nil || e.Pid != 4 || e.Status != 3 {
		t.Fatalf("old format: %+v %v", e, err)
	}
	entries, _ := os.ReadDir(b.Path())
	for _, en := range entries {
		if strings.HasSuffix(en.Name(), ".tmp") {
			t.Fatalf("temporary file left: %s", en.Name())
		}
	}
}

func TestPidFilesAndExecs(t *testing.T) {
	b := Bundle(t.TempDir())
	check(t, os.WriteFile(b.InitPidFile(), []byte("123\n"), 0o600))
	if pid, err := ReadPidFile(b.InitPidFile()); err != nil || pid != 123 {
		t.Fatalf("%d %v", pid, err)
	}
	check(t, os.WriteFile(b.ExecPidFile("x"), []byte("junk"), 0o600))
	if _, err := ReadPidFile(b.ExecPidFile("x")); err == nil || !strings.Contains(err.Error(), "exec-x.pid") {
		t.Fatalf("junk pid file: %v", err)
	}
	for _, id := range []string{"e1", "e-2"} {
		check(t, os.WriteFile(b.ExecInternalPidFile(id), []byte("1"), 0o600))
	}
	ids := b.ExecInternalPidFiles()
	sort.Strings(ids)
	if strings.Join(ids, ",") != "e-2,e1" {
		t.Fatalf("%v", ids)
	}
	if filepath.Dir(b.Spec()) != b.Path() || filepath.Base(b.Rootfs()) != "rootfs" {
		t.Fatal("layout")
	}
}

// check fails the test on a setup step's error.
func check(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
