package harness

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Proc is one process as seen in /proc.
type Proc struct {
	Pid     int
	PPid    int
	State   string // "R", "S", "Z", ... (third field of /proc/<pid>/stat)
	Comm    string
	Cmdline string // arguments joined with spaces
}

// Processes lists all processes. Processes that exit while being read are skipped.
func Processes() ([]Proc, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	var procs []Proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, err := readProc(pid); err == nil {
			procs = append(procs, p)
		}
	}
	return procs, nil
}

func readProc(pid int) (Proc, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Proc{}, err
	}
	// "pid (comm) state ppid ...": comm may hold spaces and parentheses, so
	// split at the last ')'.
	s := string(stat)
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return Proc{}, fmt.Errorf("parse /proc/%d/stat: %q", pid, s)
	}
	rest := strings.Fields(s[closing+1:])
	if len(rest) < 2 {
		return Proc{}, fmt.Errorf("parse /proc/%d/stat: %q", pid, s)
	}
	ppid, _ := strconv.Atoi(rest[1])
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)) // empty for zombies and kernel threads
	return Proc{
		Pid:     pid,
		PPid:    ppid,
		State:   rest[0],
		Comm:    s[open+1 : closing],
		Cmdline: strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " ")),
	}, nil
}

// ProcessesMatching lists the live processes whose command line contains substr,
// e.g. "containerd-shim-custom-v2" or a daemon's Address(). The caller is excluded.
func ProcessesMatching(substr string) ([]Proc, error) {
	all, err := Processes()
	if err != nil {
		return nil, err
	}
	var out []Proc
	for _, p := range all {
		if p.Pid != os.Getpid() && p.State != "Z" && strings.Contains(p.Cmdline, substr) {
			out = append(out, p)
		}
	}
	return out, nil
}

// ZombieCount counts zombie processes whose parent is ppid, or all zombies
// when ppid <= 0. Shims are subreapers, so a zombie under a shim's pid means the
// shim failed to reap. Prefer a specific ppid: on these VMs pid 1 reaps
// orphans lazily, so exited shims linger as zombies of pid 1 for a while.
func ZombieCount(ppid int) (int, error) {
	all, err := Processes()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, p := range all {
		if p.State == "Z" && (ppid <= 0 || p.PPid == ppid) {
			n++
		}
	}
	return n, nil
}

// MountsUnder lists the mount points at or below dir, in /proc/self/mountinfo
// order (parents before the mounts stacked on them).
func MountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024) // overlay options can be long
	for sc.Scan() {
		// id parent major:minor root mountpoint options ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		if mp := unescapeMountinfo(fields[4]); isUnder(mp, dir) {
			out = append(out, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}

// unescapeMountinfo decodes the octal escapes (\040 for space, ...) the kernel
// uses in mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// isUnder reports whether path is dir or below it ("/tmp/a1" is not under "/tmp/a").
func isUnder(path, dir string) bool {
	dir = strings.TrimSuffix(dir, "/")
	return path == dir || strings.HasPrefix(path, dir+"/")
}

// killProcessesUnder SIGKILLs every process whose command line mentions dir or
// whose cwd is below it (shims: "-address <dir>/c.sock", cwd = bundle), plus all
// their descendants (container processes, which a pivot_root hides from path
// checks), and waits up to 5s for them to go.
func killProcessesUnder(dir string) error {
	all, err := Processes()
	if err != nil {
		return err
	}
	children := map[int][]int{}
	var victims []int
	for _, p := range all {
		children[p.PPid] = append(children[p.PPid], p.Pid)
		if p.Pid == os.Getpid() || p.State == "Z" {
			continue
		}
		cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", p.Pid))
		if strings.Contains(p.Cmdline, strings.TrimSuffix(dir, "/")+"/") || isUnder(cwd, dir) {
			victims = append(victims, p.Pid)
		}
	}
	// Add descendants (breadth first; a pid is visited once).
	seen := map[int]bool{}
	for _, pid := range victims {
		seen[pid] = true
	}
	for i := 0; i < len(victims); i++ {
		for _, c := range children[victims[i]] {
			if !seen[c] {
				victims = append(victims, c)
				seen[c] = true
			}
		}
	}
	var shimCmdlines []string
	for _, pid := range victims {
		if p, err := readProc(pid); err == nil && strings.Contains(p.Cmdline, " -address ") {
			shimCmdlines = append(shimCmdlines, p.Cmdline)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var alive []int
		for _, pid := range victims {
			if p, err := readProc(pid); err == nil && p.State != "Z" {
				alive = append(alive, pid)
			}
		}
		if len(alive) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes under %s survived SIGKILL: %v", dir, alive)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range shimCmdlines {
		cleanShimResidue(c)
	}
	return nil
}

// cleanShimResidue removes, best effort, what a SIGKILLed shim built on
// containerd's pkg/shim with a runc backend leaves outside the daemon's
// directories: its sockets /run/containerd/s/<sha256(address/ns/id[/debug])>
// and runc's state /run/containerd/runc/<ns>/<id> (which would make a later
// container with the same id fail with "container ... already exists").
func cleanShimResidue(cmdline string) {
	args := strings.Fields(cmdline)
	flag := func(name string) string {
		for i := 0; i+1 < len(args); i++ {
			if args[i] == name {
				return args[i+1]
			}
		}
		return ""
	}
	ns, id, address := flag("-namespace"), flag("-id"), flag("-address")
	if ns == "" || id == "" || address == "" {
		return
	}
	for _, suffix := range []string{"", "debug"} {
		sum := sha256.Sum256([]byte(filepath.Join(address, ns, id, suffix)))
		_ = os.Remove(fmt.Sprintf("/run/containerd/s/%x", sum))
	}
	runcRoot := filepath.Join("/run/containerd/runc", ns)
	if _, err := os.Stat(filepath.Join(runcRoot, id)); err == nil {
		_ = exec.Command("runc", "--root", runcRoot, "delete", "--force", id).Run()
	}
}

// unmountUnder lazily unmounts everything mounted at or below dir, newest first.
func unmountUnder(dir string) error {
	mounts, err := MountsUnder(dir)
	if err != nil {
		return err
	}
	var errs []error
	for i := len(mounts) - 1; i >= 0; i-- {
		err := syscall.Unmount(mounts[i], syscall.MNT_DETACH)
		// EINVAL: already gone with a parent that was detached before it.
		if err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mounts[i], err))
		}
	}
	return errors.Join(errs...)
}
