package shim

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A shim too busy to accept (its backlog full) is alive: its socket must
// not be taken as dead. Only a socket nobody listens on any more, or none
// at all, is gone.
func TestServerGone(t *testing.T) {
	dir := t.TempDir()

	// A live listener whose backlog is full: a new connect gets EAGAIN at
	// once, as on a node where the shim is slow to accept.
	busy := filepath.Join(dir, "busy")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: busy}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	for range 8 { // fill the backlog; later connects fail with EAGAIN
		c, err := net.Dial("unix", busy)
		if err != nil {
			break
		}
		held = append(held, c)
	}
	if _, err := net.Dial("unix", busy); err == nil {
		t.Fatal("the backlog never filled: the test cannot tell a busy shim")
	}
	if serverGone("unix://" + busy) {
		t.Error("a live shim with a full backlog was taken as gone")
	}

	// A live listener that accepts.
	live := filepath.Join(dir, "live")
	l, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if serverGone("unix://" + live) {
		t.Error("a live shim was taken as gone")
	}

	// The socket file of a shim that died: nobody listens.
	dead := filepath.Join(dir, "dead")
	dl, err := net.Listen("unix", dead)
	if err != nil {
		t.Fatal(err)
	}
	dl.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = dl.Close()
	if _, err := os.Stat(dead); err != nil {
		t.Fatalf("the dead shim's socket file: %v", err)
	}
	if !serverGone("unix://" + dead) {
		t.Error("a socket nobody listens on was taken as alive")
	}
	if !serverGone("unix://" + filepath.Join(dir, "none")) {
		t.Error("no socket at all was taken as alive")
	}
}
