package reaper

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"testing"
	"time"

	gorunc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// patience bounds waits for things that happen at once when the code is
// right; it is no speed assertion.
const patience = 10 * time.Second

func TestMain(m *testing.M) {
	// As the shim: orphans of our children come to us.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "become subreaper:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// start starts a child the test never waits for itself: the reaper must.
func start(t *testing.T, args ...string) int {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// startHeld starts, like start, a child that cannot exit before exit is
// called: its stdin is a pipe whose write end exit closes, and the command
// must read stdin to EOF before it exits.
func startHeld(t *testing.T, args ...string) (pid int, exit func()) {
	t.Helper()
	rd, wr, err := os.Pipe() // close-on-exec: no other child holds it open
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin = rd
	err = cmd.Start()
	rd.Close()
	if err != nil {
		wr.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { wr.Close() })
	return cmd.Process.Pid, func() { wr.Close() }
}

// waitZombie waits until pid is an exited, unreaped child of this process
// (waitid with WNOWAIT leaves it so). An orphan becomes our child when its
// parent exits, so ECHILD is retried until then.
func waitZombie(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err == nil {
			return
		}
		if !errors.Is(err, unix.ECHILD) && !errors.Is(err, unix.EINTR) {
			t.Fatalf("waitid %d: %v", pid, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d never became our exited child: %v", pid, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// unreaped reports whether pid is still an exited child nobody reaped.
func unreaped(pid int) bool {
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT|unix.WNOHANG, nil)
	return err == nil && info.Signo != 0
}

// collect reads exits from ec until it has one for each of pids or the
// patience runs out; it returns them by pid.
func collect(ec chan gorunc.Exit, pids ...int) map[int]gorunc.Exit {
	want := make(map[int]bool)
	for _, p := range pids {
		want[p] = true
	}
	got := make(map[int]gorunc.Exit)
	timeout := time.After(patience)
	for len(want) > 0 {
		select {
		case e := <-ec:
			got[e.Pid] = e
			delete(want, e.Pid)
		case <-timeout:
			return got
		}
	}
	return got
}

// Issue 19, finding 3: while a backend holds the gate (libcontainer waits
// for a child of its own by pid), the exit of a tracked child (a
// container's init or exec) is delivered, a Pause made meanwhile does not
// wait, the untracked child's status is left for its owner, and the
// release does the owed full reap: the untracked child and an orphan
// reparented to us are reaped then, each exit reported once.
func TestGateHeldTrackedExitsFlow(t *testing.T) {
	r := New()
	ec := r.Subscribe()
	defer r.Unsubscribe(ec)

	resume := r.Pause()
	held := true
	defer func() {
		if held {
			resume()
		}
	}()
	libcontainers := start(t, "/bin/true") // what libcontainer waits for itself
	// The tracked child exits only once tracked: Track collects a child
	// that has exited already (TestTrackAfterTheChildsSIGCHLD), and then
	// it is no zombie for waitZombie to wait for; here its exit must come
	// through the Reap done while the gate is held.
	tracked, exitTracked := startHeld(t, "sh", "-c", "read x; exit 7")
	r.Track(tracked)
	select {
	case e := <-ec:
		t.Fatalf("Track delivered an exit before the tracked child exited: %+v", e)
	default:
	}
	exitTracked()
	// An orphan: sh prints its background child's pid and exits first.
	out, err := exec.Command("sh", "-c", "sleep 0.05 & echo $!").Output()
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range []int{libcontainers, tracked, orphan} {
		waitZombie(t, pid)
	}

	reaped := make(chan error, 1)
	go func() { reaped <- r.Reap() }() // the signal loop, on SIGCHLD
	got := collect(ec, tracked)
	if e, ok := got[tracked]; !ok {
		t.Errorf("the tracked child's exit was not delivered while the gate was held")
	} else if e.Status != 7 {
		t.Errorf("tracked child's status %d, want 7", e.Status)
	}
	select {
	case err := <-reaped:
		if err != nil {
			t.Errorf("reap: %v", err)
		}
	case <-time.After(patience):
		t.Errorf("Reap waits for the holder")
	}

	paused := make(chan func(), 1)
	go func() { paused <- r.Pause() }() // a new create or exec
	select {
	case again := <-paused:
		again()
	case <-time.After(patience):
		t.Errorf("Pause waits while another holder keeps the gate")
	}
	if !unreaped(libcontainers) {
		t.Errorf("the untracked child's status was taken while the gate was held")
	}
	if !unreaped(orphan) {
		t.Errorf("the orphan was reaped while the gate was held")
	}
	if t.Failed() {
		return
	}

	held = false
	resume() // the owed full reap
	got = collect(ec, libcontainers, orphan)
	for _, pid := range []int{libcontainers, orphan} {
		if _, ok := got[pid]; !ok {
			t.Errorf("exit of %d not delivered after the gate was released (got %v)", pid, got)
		}
		if unreaped(pid) {
			t.Errorf("%d still unreaped after the gate was released", pid)
		}
	}
	if err := r.Reap(); err != nil { // a late SIGCHLD finds nothing more
		t.Errorf("reap: %v", err)
	}
	select {
	case e := <-ec:
		t.Errorf("exit delivered twice or unexpected: %+v", e)
	default:
	}
}

// Issue 19, finding 3: go-runc's commands (the CLI backends, runsc) go
// through the reaper's monitor; one that ends while a backend holds the
// gate is waited for without waiting for the holder.
func TestMonitorWaitsWhileGateHeld(t *testing.T) {
	r := New()
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD)
	defer signal.Stop(sigs)
	stop := make(chan struct{})
	loop := make(chan struct{})
	go func() { // the shim's signal loop
		defer close(loop)
		for {
			select {
			case <-sigs:
				_ = r.Reap()
			case <-stop:
				return
			}
		}
	}()
	defer func() { close(stop); <-loop }()

	resume := r.Pause()
	defer resume()
	cmd := exec.Command("sh", "-c", "exit 3")
	ec, err := r.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		status int
		err    error
	}
	done := make(chan result, 1)
	go func() {
		st, err := r.Wait(cmd, ec)
		done <- result{st, err}
	}()
	select {
	case res := <-done:
		if res.err != nil || res.status != 3 {
			t.Fatalf("wait: status %d, %v; want 3", res.status, res.err)
		}
	case <-time.After(patience):
		t.Fatal("a monitored command's exit waits for the gate's holder")
	}
}

// A subscriber that does not read holds no reap up, and gets its exits
// in order once it reads.
func TestSlowSubscriberQueuesInOrder(t *testing.T) {
	r := New()
	ec := r.Subscribe()
	defer r.Unsubscribe(ec)
	var pids []int
	for range cap(ec) + 8 {
		pid := start(t, "/bin/true")
		waitZombie(t, pid)
		pids = append(pids, pid)
		reaped := make(chan error, 1)
		go func() { reaped <- r.Reap() }()
		select {
		case err := <-reaped:
			if err != nil {
				t.Fatalf("reap: %v", err)
			}
		case <-time.After(patience):
			t.Fatal("Reap waits for a subscriber that does not read")
		}
	}
	for i, pid := range pids {
		select {
		case e := <-ec:
			if e.Pid != pid {
				t.Fatalf("exit %d is of pid %d, want %d (reap order)", i, e.Pid, pid)
			}
		case <-time.After(patience):
			t.Fatalf("exit %d (pid %d) never delivered", i, pid)
		}
	}
}

// A child that exits between its start and Track, while the gate is held:
// the reap its SIGCHLD caused skipped it (untracked then), and no other
// SIGCHLD comes. Track collects it; before, its exit waited for the
// holder's resume (CI hit it in TestMonitorWaitsWhileGateHeld: go-runc's
// command exited before Start tracked it).
func TestTrackAfterTheChildsSIGCHLD(t *testing.T) {
	r := New()
	ec := r.Subscribe()
	defer r.Unsubscribe(ec)
	resume := r.Pause()
	defer resume()
	pid := start(t, "/bin/true")
	waitZombie(t, pid)
	_ = r.Reap() // its SIGCHLD, while untracked
	r.Track(pid)
	select {
	case e := <-ec:
		if e.Pid != pid {
			t.Fatalf("exit of pid %d, want %d", e.Pid, pid)
		}
	case <-time.After(time.Second):
		t.Fatal("the exit of a child tracked after its SIGCHLD waits for the gate's holder")
	}
}
