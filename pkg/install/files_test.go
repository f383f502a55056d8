package install

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}

func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var tmp []string
	for _, e := range entries {
		if strings.Contains(e.Name(), ".new-") {
			tmp = append(tmp, e.Name())
		}
	}
	return tmp
}

func TestWriteFileOnlyWhenDifferent(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "etc", "conf.d", "custom-shim.toml")
	if changed, err := WriteFile(path, []byte("a"), 0o644); err != nil || !changed {
		t.Fatalf("new file: changed %v, %v", changed, err)
	}
	ino := inode(t, path)
	if changed, err := WriteFile(path, []byte("a"), 0o644); err != nil || changed {
		t.Fatalf("same content: changed %v, %v", changed, err)
	}
	if inode(t, path) != ino {
		t.Fatal("same content: the file was replaced")
	}
	if changed, err := WriteFile(path, []byte("a"), 0o600); err != nil || !changed {
		t.Fatalf("other mode: changed %v, %v", changed, err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	if tmp := leftovers(t, filepath.Dir(path)); len(tmp) > 0 {
		t.Fatalf("temporary files left: %v", tmp)
	}
}

// TestWriteFileReplacesARunningBinary: an upgrade with shims running. A
// write in place would fail (ETXTBSY) or change the running program; the
// rename leaves the running process its inode and gives the next exec the
// new file.
func TestWriteFileReplacesARunningBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "containerd-shim-custom-v2")
	sleep, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Skip("no /bin/sleep")
	}
	if _, err := WriteFile(bin, sleep, 0o755); err != nil {
		t.Fatal(err)
	}
	old := inode(t, bin)
	cmd := exec.Command(bin, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if f, err := os.OpenFile(bin, os.O_WRONLY, 0); err == nil {
		f.Close()
		t.Fatal("a running binary opened for writing: the test cannot tell a rename from a write")
	}
	newer := append([]byte{}, sleep...)
	newer = append(newer, 0) // another file, still a program
	if changed, err := WriteFile(bin, newer, 0o755); err != nil || !changed {
		t.Fatalf("replace a running binary: changed %v, %v", changed, err)
	}
	if inode(t, bin) == old {
		t.Fatal("the path still has the running binary's inode")
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid))
	if err != nil || !strings.HasSuffix(exe, "(deleted)") {
		t.Fatalf("the running process's executable: %q %v, want the old inode, deleted", exe, err)
	}
	if out, err := exec.Command(bin, "0").CombinedOutput(); err != nil {
		t.Fatalf("the new file does not run: %v %s", err, out)
	}
}

func TestWriteFileFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "taken")
	if err := os.MkdirAll(filepath.Join(path, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteFile(path, []byte("x"), 0o644); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("rename over a directory: %v, want an error naming %s", err, path)
	}
	if tmp := leftovers(t, dir); len(tmp) > 0 {
		t.Fatalf("temporary files left: %v", tmp)
	}
}

func TestRemoveFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if removed, err := RemoveFile(path); err != nil || removed {
		t.Fatalf("missing file: %v %v", removed, err)
	}
	if _, err := WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if removed, err := RemoveFile(path); err != nil || !removed {
		t.Fatalf("file: %v %v", removed, err)
	}
}
