package main

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
)

// procStats is what one process holds (goroutines: shims only, from
// their metrics endpoint; -1 when it did not answer).
type procStats struct {
	fds, inotify, threads int
	pssKiB                int
	goroutines            int
}

// readProcStats reads a live process's open fds, inotify instances (fds
// linked to anon_inode:inotify), threads and PSS (smaps_rollup). ok is
// false when the process went away while being read.
func readProcStats(pid int) (procStats, bool) {
	var s procStats
	dir := "/proc/" + strconv.Itoa(pid)
	fds, err := os.ReadDir(dir + "/fd")
	if err != nil {
		return s, false
	}
	s.fds = len(fds)
	for _, fd := range fds {
		if l, _ := os.Readlink(dir + "/fd/" + fd.Name()); l == "anon_inode:inotify" {
			s.inotify++
		}
	}
	s.threads = fieldKiB(dir+"/status", "Threads:")
	s.pssKiB = fieldKiB(dir+"/smaps_rollup", "Pss:")
	return s, s.threads > 0
}

// fieldKiB is the first number after key in a /proc key-value file.
func fieldKiB(path, key string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == key {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// shimProc is a shim server process.
type shimProc struct {
	pid     int
	id      string // its -id: the first container of its group
	metrics string // its metrics socket
}

// shimServers lists the shim server processes: not "start" (short-lived,
// it answers containerd and exits), not a pod's sandbox holder
// (ProcessesMatching already leaves out a shim's fork that has not exec'd).
func shimServers(address string) []shimProc {
	ps, _ := harness.ProcessesMatching("containerd-shim-custom-v2 -namespace ")
	var out []shimProc
	for _, p := range ps {
		// Only the soak's daemon's shims: another containerd on the host
		// (a test run) has shims of its own.
		if !strings.Contains(p.Cmdline, " -address "+address+" ") {
			continue
		}
		if strings.HasSuffix(p.Cmdline, " start") || strings.Contains(p.Cmdline, "sandbox-holder") {
			continue
		}
		f := strings.Fields(p.Cmdline)
		flags := map[string]string{}
		for i := range f[:len(f)-1] {
			if strings.HasPrefix(f[i], "-") {
				flags[f[i]] = f[i+1]
			}
		}
		if flags["-id"] == "" {
			continue
		}
		// Where pkg/shim serves the shim's metrics: named by its namespace
		// and ttrpc socket, in the directories of the soak's environment,
		// which its containerd and so the shim inherit.
		dir, _ := metrics.Dirs()
		sock := metrics.SocketPath(dir, metrics.Name(flags["-namespace"], filepath.Base(flags["-socket"])))
		out = append(out, shimProc{pid: p.Pid, id: flags["-id"], metrics: sock})
	}
	return out
}

// goroutines scrapes a shim's goroutine gauge; -1 when it does not answer.
func goroutines(socket string) int {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://shim/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "containerd_shim_custom_goroutines "); ok {
			if n, err := strconv.ParseFloat(v, 64); err == nil {
				return int(n)
			}
		}
	}
	return -1
}

// countEntries counts the directories below each root, down to depth
// levels (a missing root counts nothing).
func countEntries(roots []string, depth int) int {
	n := 0
	for _, root := range roots {
		base := strings.Count(filepath.Clean(root), "/")
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return nil //nolint:nilerr // a directory gone while walking is not counted
			}
			if !d.IsDir() {
				return nil
			}
			lvl := strings.Count(p, "/") - base
			if lvl == 0 {
				return nil
			}
			n++
			if lvl >= depth {
				return filepath.SkipDir
			}
			return nil
		})
	}
	return n
}
