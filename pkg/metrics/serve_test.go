package metrics

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custom-runtime/containerd-shim-custom-v2/internal/testdeps"
)

func TestServeSocketAndPermissions(t *testing.T) {
	dir := filepath.Join(shortDir(t), "metrics")
	r := New(Options{})
	r.TaskCreated(runc, taskA)
	sock := SocketPath(dir, Name("k8s.io", "sandbox1"))
	stop, err := Serve(context.Background(), sock, r)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("dir: %v %v, want 0700", st.Mode().Perm(), err)
	}
	if st, err := os.Lstat(sock); err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Errorf("socket: %v %v, want socket 0600", st.Mode(), err)
	}
	resp, body, err := unixGet(sock, "/metrics") //nolint:bodyclose // unixGet read and closed the body
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get(InstanceHeader) != r.Instance() {
		t.Errorf("status %d, instance %q", resp.StatusCode, resp.Header.Get(InstanceHeader))
	}
	if !strings.Contains(body, `containerd_shim_custom_tasks_created_total{backend="runc",runtime_handler="custom-runc"} 1`) {
		t.Errorf("body lacks the counter:\n%s", body)
	}
	if resp, _, err := unixGet(sock, "/other"); err != nil || resp.StatusCode != 404 { //nolint:bodyclose // unixGet read and closed the body
		t.Errorf("/other: %v %v", resp, err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after stop: %v", err)
	}
}

func TestServeStopsWithContext(t *testing.T) {
	sock := SocketPath(shortDir(t), "x")
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := Serve(ctx, sock, New(Options{})); err != nil {
		t.Fatal(err)
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Lstat(sock); errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("socket still there after ctx cancel")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestServeStaleAndForeignPaths(t *testing.T) {
	dir := shortDir(t)
	// A socket left by a dead shim is replaced.
	stale := SocketPath(dir, "stale")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	stop, err := Serve(context.Background(), stale, New(Options{}))
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	check(t, stop())
	// Anything else is not ours to delete.
	file := SocketPath(dir, "file")
	check(t, os.WriteFile(file, []byte("keep"), 0o600))
	if _, err := Serve(context.Background(), file, New(Options{})); err == nil {
		t.Fatal("Serve replaced a regular file")
	}
	// Shared directories are refused, not taken private.
	shared := filepath.Join(dir, "shared")
	check(t, os.Mkdir(shared, 0o777))
	check(t, os.Chmod(shared, 0o777|os.ModeSticky))
	if _, err := Serve(context.Background(), SocketPath(shared, "x"), New(Options{})); err == nil {
		t.Error("Serve took a sticky directory")
	}
	other := filepath.Join(dir, "other")
	check(t, os.Mkdir(other, 0o755))
	check(t, os.Chmod(other, 0o755))
	check(t, os.WriteFile(filepath.Join(other, "unrelated.conf"), nil, 0o644))
	if _, err := Serve(context.Background(), SocketPath(other, "x"), New(Options{})); err == nil {
		t.Error("Serve took a directory holding other files")
	}
	if st, _ := os.Stat(shared); st.Mode().Perm() != 0o777 || st.Mode()&os.ModeSticky == 0 {
		t.Errorf("shared dir mode changed to %v", st.Mode())
	}
	if st, _ := os.Stat(other); st.Mode().Perm() != 0o755 {
		t.Errorf("other dir mode changed to %v", st.Mode())
	}
	// A group-writable directory of ours is tightened.
	loose := filepath.Join(dir, "loose")
	check(t, os.Mkdir(loose, 0o750))
	check(t, os.Chmod(loose, 0o750))
	check(t, os.WriteFile(filepath.Join(loose, "old.sock"), nil, 0o600))
	stop, err = Serve(context.Background(), SocketPath(loose, "x"), New(Options{}))
	if err != nil {
		t.Fatal(err)
	}
	check(t, stop())
	if st, _ := os.Stat(loose); st.Mode().Perm() != 0o700 {
		t.Errorf("loose dir mode %v", st.Mode().Perm())
	}
}

func TestUIDAllowed(t *testing.T) {
	for _, c := range []struct {
		peer, self uint32
		want       bool
	}{
		{0, 0, true}, {0, 1000, true}, {1000, 1000, true}, {65534, 0, false}, {1001, 1000, false},
	} {
		if got := uidAllowed(c.peer, c.self); got != c.want {
			t.Errorf("uidAllowed(%d, %d) = %v", c.peer, c.self, got)
		}
	}
}

func TestCheckPeerSameUID(t *testing.T) {
	a, b, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	if err := checkPeer(a); err != nil {
		t.Fatalf("own uid rejected: %v", err)
	}
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if err := checkPeer(p1); err == nil {
		t.Fatal("a pipe passed the peer check")
	}
}

func socketPair() (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		return nil, nil, err
	}
	conn := func(fd int) (net.Conn, error) {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		return net.FileConn(f)
	}
	a, err := conn(fds[0])
	if err != nil {
		return nil, nil, err
	}
	b, err := conn(fds[1])
	return a, b, err
}

// helperEnv makes the test binary a scrape client: see TestHelperScrape.
const helperEnv = "METRICS_TEST_HELPER_SOCKET"

// TestHelperScrape is not a test: run as another user by
// TestPeerCheckOtherUser, it requests /metrics and reports what happened
// on stdout.
func TestHelperScrape(t *testing.T) {
	sock := os.Getenv(helperEnv)
	if sock == "" {
		t.Skip("helper process only")
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		fmt.Printf("RESULT dial-error %v\n", err)
		os.Exit(0)
	}
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	switch {
	case err == nil:
		fmt.Printf("RESULT response %s\n", strings.TrimSpace(line))
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
		fmt.Printf("RESULT closed\n")
	default:
		fmt.Printf("RESULT read-error %v\n", err)
	}
	os.Exit(0)
}

// TestPeerCheckOtherUser runs a scrape client as uid 65534 against a
// shim socket whose directory and socket modes were opened up, so that
// only the SO_PEERCRED check stands between them; and then with the
// modes Serve sets, which stop it at the directory.
func TestPeerCheckOtherUser(t *testing.T) {
	testdeps.RequireRoot(t, "runs a process as another user")
	// The helper must be able to execute the test binary: copy it out of
	// go test's private build directory.
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := os.MkdirTemp("", "mpeer")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(pub)
	check(t, os.Chmod(pub, 0o755))
	helper := filepath.Join(pub, "metrics.test")
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(helper, data, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(sock string, uid uint32) string {
		t.Helper()
		cmd := exec.Command(helper, "-test.run=^TestHelperScrape$")
		cmd.Dir = "/"
		cmd.Env = []string{helperEnv + "=" + sock}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper as uid %d: %v\n%s", uid, err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if r, ok := strings.CutPrefix(l, "RESULT "); ok {
				return r
			}
		}
		t.Fatalf("helper output: %s", out)
		return ""
	}

	dir := filepath.Join(pub, "sockets")
	sock := SocketPath(dir, "shim")
	stop, err := Serve(context.Background(), sock, New(Options{}))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { check(t, stop()) }()

	if got := run(sock, 0); !strings.HasPrefix(got, "response HTTP/1.0 200") {
		t.Errorf("root: %s", got)
	}
	if got := run(sock, 65534); !strings.HasPrefix(got, "dial-error") || !strings.Contains(got, "permission denied") {
		t.Errorf("uid 65534 through a 0700 directory: %s", got)
	}
	check(t, os.Chmod(dir, 0o755))
	check(t, os.Chmod(sock, 0o666))
	if got := run(sock, 65534); got != "closed" {
		t.Errorf("uid 65534 past open modes: %s, want the connection closed", got)
	}
	if got := run(sock, 0); !strings.HasPrefix(got, "response HTTP/1.0 200") {
		t.Errorf("root after rejecting another peer: %s", got)
	}
}

// A shim's stop removes its own socket only: a successor of the same
// name may have replaced it (containerd never runs two shims of one id at
// once, but a leftover process must not hide the live one).
func TestServeStopKeepsSuccessorSocket(t *testing.T) {
	sock := SocketPath(shortDir(t), "same")
	stop1, err := Serve(context.Background(), sock, New(Options{}))
	if err != nil {
		t.Fatal(err)
	}
	r2 := New(Options{})
	stop2, err := Serve(context.Background(), sock, r2)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { check(t, stop2()) }()
	if err := stop1(); err != nil {
		t.Fatal(err)
	}
	resp, _, err := unixGet(sock, "/metrics") //nolint:bodyclose // unixGet read and closed the body
	if err != nil || resp.Header.Get(InstanceHeader) != r2.Instance() {
		t.Fatalf("successor's socket gone after the predecessor stopped: %v", err)
	}
}

func TestCleanupSocket(t *testing.T) {
	dir := shortDir(t)
	live := SocketPath(dir, "live")
	stop, err := Serve(context.Background(), live, New(Options{}))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { check(t, stop()) }()
	dead := SocketPath(dir, "dead")
	l, err := net.Listen("unix", dead)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	for _, p := range []string{live, dead, SocketPath(dir, "absent")} {
		if err := CleanupSocket(p); err != nil {
			t.Errorf("CleanupSocket(%s): %v", filepath.Base(p), err)
		}
	}
	if _, err := os.Lstat(live); err != nil {
		t.Errorf("live socket removed: %v", err)
	}
	if _, err := os.Lstat(dead); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dead socket kept: %v", err)
	}
}

func TestNilRecorder(t *testing.T) {
	var r *Recorder
	r.TaskCreated(runc, taskA)
	r.TaskStarted(runc, taskA, 0)
	r.TaskState(runc, taskA, StatePaused)
	r.TaskExited(runc, taskA, ExitCompleted, 0)
	r.TaskDeleted(runc, taskA)
	r.OOM(runc)
	r.ExecStarted(runc)
	r.ExecExited(runc, ExitError)
	r.RPC("Create", "ok", 0)
	r.BackendCommand(runc, "create", nil, 0)
}
