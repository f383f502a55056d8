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
// e.g. "containerd-shim-custom-v2" or a daemon's Address(). The caller and
// its ancestors (which may carry substr in their own arguments) are excluded,
// and so is a child that has its parent's command line: a fork that has not
// exec'd yet (a shim starting runsc or runc shows as a second shim until
// the exec; a Pod's shim counted twice on a busy machine was one).
func ProcessesMatching(substr string) ([]Proc, error) {
	all, err := Processes()
	if err != nil {
		return nil, err
	}
	skip := ancestors()
	skip[os.Getpid()] = true
	cmdline := make(map[int]string, len(all))
	for _, p := range all {
		cmdline[p.Pid] = p.Cmdline
	}
	var out []Proc
	for _, p := range all {
		if !skip[p.Pid] && p.State != "Z" && strings.Contains(p.Cmdline, substr) && cmdline[p.PPid] != p.Cmdline {
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

// ancestors returns the pids of this process's parent chain: a caller
// (go run, the script that ran a cleanup command) may name the directory
// being cleaned in its own arguments and must survive the cleanup.
func ancestors() map[int]bool {
	out := map[int]bool{}
	for pid := os.Getppid(); pid > 1 && !out[pid]; {
		out[pid] = true
		p, err := readProc(pid)
		if err != nil {
			break
		}
		pid = p.PPid
	}
	return out
}

// KillProcessesUnder SIGKILLs every process whose command line mentions dir
// or whose cwd is below it (shims: "-address <dir>/c.sock", cwd = bundle;
// runsc's sandbox and gofer: "--log <bundle>/..."), plus all their
// descendants (container processes, which a pivot_root hides from path
// checks), and waits up to 5s for them to go. This process and its
// ancestors are spared. It returns the processes it killed, as they were.
func KillProcessesUnder(dir string) ([]Proc, error) {
	all, err := Processes()
	if err != nil {
		return nil, err
	}
	spared := ancestors()
	spared[os.Getpid()] = true
	byPid := map[int]Proc{}
	children := map[int][]int{}
	var victims []int
	for _, p := range all {
		byPid[p.Pid] = p
		children[p.PPid] = append(children[p.PPid], p.Pid)
		if spared[p.Pid] || p.State == "Z" {
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
			if !seen[c] && !spared[c] {
				victims = append(victims, c)
				seen[c] = true
			}
		}
	}
	var killed []Proc
	var shimCmdlines []string
	for _, pid := range victims {
		if p, err := readProc(pid); err == nil && strings.Contains(p.Cmdline, " -address ") {
			shimCmdlines = append(shimCmdlines, p.Cmdline)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			killed = append(killed, byPid[pid])
		}
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
			return killed, fmt.Errorf("processes under %s survived SIGKILL: %v", dir, alive)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range shimCmdlines {
		cleanShimResidue(c)
	}
	return killed, nil
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

// UnmountUnder lazily unmounts everything mounted at or below dir, newest
// first (a mount stacked on another goes before it), and returns the mount
// points it unmounted.
func UnmountUnder(dir string) ([]string, error) {
	mounts, err := MountsUnder(dir)
	if err != nil {
		return nil, err
	}
	var done []string
	var errs []error
	for i := len(mounts) - 1; i >= 0; i-- {
		err := syscall.Unmount(mounts[i], syscall.MNT_DETACH)
		switch {
		case err == nil:
			done = append(done, mounts[i])
		// EINVAL: already gone with a parent that was detached before it.
		case !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT):
			errs = append(errs, fmt.Errorf("unmount %s: %w", mounts[i], err))
		}
	}
	return done, errors.Join(errs...)
}

// ReapRuntimeState force-deletes the runc and runsc containers whose state
// file names pattern (a bundle path unique to a run,
// e.g. "<daemon state dir>/"): the containers of a shim that was killed, or
// of a task a test leaked. runsc is the runsc binary ("runsc" from PATH when
// empty); when it cannot delete a sandbox (runsc resolves ids by prefix, so
// it can answer "ambiguous"), the state files are removed and the sandbox's
// processes are left to KillProcessesUnder. It returns one line per
// container it removed.
func ReapRuntimeState(pattern, runsc string) ([]string, error) {
	if runsc == "" {
		runsc = "runsc"
	}
	var done []string
	var errs []error
	mentions := func(path string) bool {
		data, err := os.ReadFile(path)
		return err == nil && strings.Contains(string(data), pattern)
	}
	// The state roots, one subdirectory per containerd namespace: this
	// shim's runc backend and containerd's runc shim, then this shim's runsc.
	for _, root := range []string{"/run/containerd/custom/runc", "/run/containerd/runc"} {
		// <root>/<namespace>/<id>/state.json
		states, _ := filepath.Glob(filepath.Join(root, "*", "*", "state.json"))
		for _, st := range states {
			if !mentions(st) {
				continue
			}
			dir, id := filepath.Dir(filepath.Dir(st)), filepath.Base(filepath.Dir(st))
			out, err := exec.Command("runc", "--root", dir, "delete", "--force", id).CombinedOutput()
			if err != nil {
				errs = append(errs, fmt.Errorf("runc --root %s delete --force %s: %w: %s", dir, id, err, strings.TrimSpace(string(out))))
				continue
			}
			done = append(done, fmt.Sprintf("runc container %s in %s: deleted", id, dir))
		}
	}
	for _, root := range []string{"/run/containerd/custom/runsc"} {
		// <root>/<namespace>/<container>_sandbox:<sandbox>.state (+ .lock)
		states, _ := filepath.Glob(filepath.Join(root, "*", "*.state"))
		for _, st := range states {
			if !mentions(st) {
				continue
			}
			dir, base := filepath.Dir(st), strings.TrimSuffix(filepath.Base(st), ".state")
			id, _, _ := strings.Cut(base, "_sandbox:")
			if err := exec.Command(runsc, "--root", dir, "delete", "--force", id).Run(); err == nil {
				done = append(done, fmt.Sprintf("runsc container %s in %s: deleted", id, dir))
				continue
			}
			for _, f := range []string{st, filepath.Join(dir, base+".lock")} {
				if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
					errs = append(errs, err)
				}
			}
			done = append(done, fmt.Sprintf("runsc container %s in %s: runsc delete failed, state files removed", id, dir))
		}
	}
	return done, errors.Join(errs...)
}

// CleanUnder removes what a run below dir left behind, in this order: the
// runc/runsc containers whose state names dir (ReapRuntimeState), the
// processes that mention dir or run in it and their descendants
// (KillProcessesUnder), and the mounts below it (UnmountUnder). dir itself
// is not removed. logf, if not nil, gets one line per thing removed.
func CleanUnder(dir, runsc string, logf func(format string, args ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	var errs []error
	reaped, err := ReapRuntimeState(strings.TrimSuffix(dir, "/")+"/", runsc)
	for _, r := range reaped {
		logf("leftover %s", r)
	}
	errs = append(errs, err)
	killed, err := KillProcessesUnder(dir)
	for _, p := range killed {
		cmd := p.Cmdline
		if len(cmd) > 160 {
			cmd = cmd[:160]
		}
		logf("killed leftover pid %d: %s", p.Pid, cmd)
	}
	errs = append(errs, err)
	unmounted, err := UnmountUnder(dir)
	for _, m := range unmounted {
		logf("unmounted leftover %s", m)
	}
	errs = append(errs, err)
	return errors.Join(errs...)
}
