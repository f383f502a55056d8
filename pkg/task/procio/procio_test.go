package procio

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"

	"github.com/containerd/containerd/v2/pkg/stdio"
	"golang.org/x/sys/unix"
)

// TestNewFileReportsPipeError is the regression test for the file://
// branch of New dropping NewPipeIO's error (its `f, err :=` shadowed the
// err checked after the switch): New returned an IO without pipes and no
// error, and Start then dereferenced the nil pipes. The pipes are made to
// fail by leaving one free descriptor: enough to create the log file, not
// for a pipe.
func TestNewFileReportsPipeError(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "logs", "out.log")
	s := stdio.Stdio{Stdout: "file://" + logFile, Stderr: "file://" + logFile}

	// Open (and close) a regular file first, so that whatever the runtime
	// sets up lazily for files (the poller) holds its descriptors already.
	f, err := os.CreateTemp(t.TempDir(), "warmup")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	var orig unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	limit := orig
	limit.Cur = secondFreeFD(t)
	if limit.Cur > orig.Cur {
		t.Skipf("this process's descriptor limit (%d) is below the %d the test needs", orig.Cur, limit.Cur)
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &limit); err != nil {
		t.Fatal(err)
	}
	p, err := New(context.Background(), "test", 0, 0, s)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}

	if err == nil {
		_ = p.Close()
		t.Fatalf("New with no descriptor left for pipes: got an IO (pipes %v) and no error", p.rio)
	}
	if _, serr := os.Stat(logFile); serr != nil {
		t.Errorf("the log file was not created before the pipes failed: %v", serr)
	}
	t.Logf("New: %v", err)
}

// secondFreeFD returns the second lowest descriptor number not in use: as
// RLIMIT_NOFILE, it leaves exactly one descriptor free.
func secondFreeFD(t *testing.T) uint64 {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	// The directory's own descriptor is listed but closed by now: its
	// number counts as free, as it is.
	used := make([]int, 0, len(entries))
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
			used = append(used, fd)
		}
	}
	sort.Ints(used)
	free := 0
	for fd, i := 0, 0; ; fd++ {
		if i < len(used) && used[i] == fd {
			i++
			continue
		}
		free++
		if free == 2 {
			return uint64(fd)
		}
	}
}
