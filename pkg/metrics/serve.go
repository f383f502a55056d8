package metrics

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Default directories shared by the shims and the aggregator.
const (
	// DefaultSocketDir holds one metrics socket per live shim.
	DefaultSocketDir = "/run/containerd/custom/metrics"
	// DefaultStateDir holds the final snapshots of exited shims until the
	// aggregator folds them in.
	DefaultStateDir = "/run/containerd/custom/metrics-final"
)

// DirEnv is the environment variable that, in the shim's environment
// (inherited from containerd), moves both directories under one base:
// $DirEnv/metrics and $DirEnv/metrics-final. It lets a private containerd (tests, a second
// daemon on a node) keep its shims' metrics apart.
const DirEnv = "CONTAINERD_SHIM_CUSTOM_METRICS_DIR"

// Dirs returns the socket and final-snapshot directories to use.
func Dirs() (socketDir, stateDir string) {
	if base := os.Getenv(DirEnv); base != "" {
		return filepath.Join(base, "metrics"), filepath.Join(base, "metrics-final")
	}
	return DefaultSocketDir, DefaultStateDir
}

const (
	socketSuffix = ".sock"
	finalSuffix  = ".prom"
)

// Name is the file name stem of a shim's socket and final snapshot: a
// hash, like containerd's own shim sockets, because a socket path must fit
// in 108 bytes and a namespace plus a 64-character sandbox id would not
// reliably. The shim's identity is in the metrics' labels, not the name.
func Name(namespace, shimID string) string {
	sum := sha256.Sum256([]byte(namespace + "/" + shimID))
	return hex.EncodeToString(sum[:16])
}

// SocketPath is where the shim called name serves its metrics in dir.
func SocketPath(dir, name string) string { return filepath.Join(dir, name+socketSuffix) }

// SocketName is the shim name of a file in a socket directory
// ("<name>.sock"); ok is false for any other file name.
func SocketName(file string) (name string, ok bool) {
	name, ok = strings.CutSuffix(file, socketSuffix)
	return name, ok && name != ""
}

// Serve serves r's metrics on GET /metrics over a unix socket at
// socketPath until stop is called or ctx is done. The directory is created
// 0700 (and must be ours), the socket is 0600, and a connection whose peer
// is neither root nor our own uid is closed before any byte is read. stop
// shuts the server down and removes the socket; it may be called more
// than once.
func Serve(ctx context.Context, socketPath string, r *Recorder) (stop func() error, err error) {
	if err := EnsureDir(filepath.Dir(socketPath)); err != nil {
		return nil, fmt.Errorf("metrics socket directory: %w", err)
	}
	if err := removeStaleSocket(socketPath); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: socketPath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on metrics socket: %w", err)
	}
	// We remove the socket ourselves, and only if it is still ours: a
	// successor of the same name may have replaced it.
	l.SetUnlinkOnClose(false)
	// The socket is briefly umask-wide before this chmod; the 0700
	// directory and the peer check cover that window.
	if err := os.Chmod(socketPath, 0o600); err != nil {
		// Undo best effort; the chmod error is the one to report.
		_ = l.Close()
		_ = os.Remove(socketPath)
		return nil, fmt.Errorf("chmod metrics socket: %w", err)
	}
	ours, err := os.Lstat(socketPath)
	if err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("metrics socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", r.Handler())
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       30 * time.Second,
		MaxHeaderBytes:    8 << 10,
		// Connection errors are the client's business; the shim's log is
		// containerd's log.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(peerListener{l})
	}()

	var once sync.Once
	var stopErr error
	stop = func() error {
		once.Do(func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				// A scrape still running after the grace period: cut it.
				_ = srv.Close()
			}
			<-done
			if cur, err := os.Lstat(socketPath); err == nil && os.SameFile(cur, ours) {
				if err := os.Remove(socketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
					stopErr = fmt.Errorf("remove metrics socket: %w", err)
				}
			}
		})
		return stopErr
	}
	context.AfterFunc(ctx, func() { _ = stop() })
	return stop, nil
}

// CleanupSocket removes the metrics socket of a shim that died without
// removing it (containerd's "delete" after a SIGKILL), so the aggregator
// stops trying it: only if nothing accepts connections on it.
func CleanupSocket(socketPath string) error {
	c, err := net.DialTimeout("unix", socketPath, time.Second)
	switch {
	case err == nil:
		_ = c.Close()
		return nil // a live shim serves it
	case errors.Is(err, os.ErrNotExist):
		return nil
	case !errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("check metrics socket: %w", err)
	}
	return removeStaleSocket(socketPath)
}

// EnsureDir creates a socket or final-snapshot directory 0700 if needed
// and checks that it is a directory of ours that nobody else can write to
// or list (the aggregator creates both at start).
func EnsureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return checkPrivateDir(dir)
}

// checkPrivateDir is EnsureDir for a directory that must exist. A
// directory others can reach (hostPath volumes and install -d make 0755
// ones) is tightened to 0700, but only if it holds nothing but sockets and
// snapshots: a misconfigured path must not take /tmp or /run private.
func checkPrivateDir(dir string) error {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return &os.PathError{Op: "lstat", Path: dir, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if int(st.Uid) != os.Getuid() {
		return fmt.Errorf("%s is owned by uid %d, not %d", dir, st.Uid, os.Getuid())
	}
	if st.Mode&0o077 == 0 {
		return nil
	}
	if st.Mode&(unix.S_ISVTX|0o002) != 0 {
		return fmt.Errorf("%s is a shared directory (mode %o): give metrics a directory of their own", dir, st.Mode&0o7777)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !ownEntry(e.Name()) {
			return fmt.Errorf("%s is accessible to others (mode %o) and holds %q: give metrics a directory of their own", dir, st.Mode&0o777, e.Name())
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("chmod %s: %w", dir, err)
	}
	return nil
}

// ownEntry tells the files this package puts in its directories.
func ownEntry(name string) bool {
	return strings.HasSuffix(name, socketSuffix) || strings.HasSuffix(name, finalSuffix) || strings.HasSuffix(name, ".tmp")
}

// removeStaleSocket removes a socket left by a dead shim of the same name;
// anything else at that path is an error, not something to delete.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("metrics socket: %w", err)
	case fi.Mode()&os.ModeSocket == 0:
		return fmt.Errorf("metrics socket %s: exists and is not a socket", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale metrics socket: %w", err)
	}
	return nil
}

// peerListener closes connections from peers that may not scrape.
type peerListener struct{ *net.UnixListener }

func (l peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.UnixListener.Accept()
		if err != nil {
			return nil, err
		}
		if err := checkPeer(c); err != nil {
			_ = c.Close() // refused peer: nothing to report to it
			continue
		}
		return c, nil
	}
}

// checkPeer reads the peer's credentials (SO_PEERCRED, taken by the kernel
// at connect time, so the peer cannot forge them) and allows root and our
// own uid.
func checkPeer(c net.Conn) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return fmt.Errorf("peer check: %T is not a socket", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return fmt.Errorf("peer check: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return fmt.Errorf("peer check: %w", err)
	}
	if credErr != nil {
		return fmt.Errorf("peer check: SO_PEERCRED: %w", credErr)
	}
	if !uidAllowed(cred.Uid, uint32(os.Getuid())) {
		return fmt.Errorf("peer check: uid %d (pid %d) may not scrape", cred.Uid, cred.Pid)
	}
	return nil
}

func uidAllowed(peer, self uint32) bool { return peer == 0 || peer == self }
