package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// peerEnv makes the test binary act as a ttrpc client of a shim socket (run
// under another uid by TestShimSocketSecurity).
const peerEnv = "SHIM_PEER_SOCKET"

func init() {
	sock := os.Getenv(peerEnv)
	if sock == "" {
		return
	}
	// A Connect call; exit 0 only if the shim answered.
	conn, err := net.DialTimeout("unix", sock, 2*time.Second)
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(2)
	}
	c := ttrpc.NewClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_, err = taskv3.NewTTRPCTaskClient(c).Connect(ctx, &taskv3.ConnectRequest{ID: "x"})
	cancel()
	if err != nil {
		fmt.Println("connect:", err)
		os.Exit(3)
	}
	os.Exit(0)
}

// TestShimSocketSecurity: the shim listens on a file socket (never an
// abstract one, the CVE-2020-15257 class) with mode 0600 in a 0700
// directory, has no TCP listener, and refuses a peer of another uid even
// when the file permissions would let it in.
func TestShimSocketSecurity(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		id := containerID(t, "")
		c := newContainer(t, e, id, nil, oci.WithProcessArgs("sleep", "1000"))
		startTask(t, c, nil)
		shims := shimsFor(id)
		if len(shims) != 1 {
			t.Fatalf("shims %+v", shims)
		}
		sock := socketOf(shims[0])
		fi, err := os.Stat(sock)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
			t.Fatalf("socket %s mode %v, want a 0600 socket", sock, fi.Mode())
		}
		di, _ := os.Stat(filepath.Dir(sock))
		if di.Mode().Perm() != 0o700 {
			t.Fatalf("socket directory mode %v, want 0700", di.Mode().Perm())
		}
		inodes := socketInodes(t, shims[0].Pid)
		for _, l := range unixSockets(t) {
			if inodes[l.inode] && strings.HasPrefix(l.path, "@") {
				t.Fatalf("shim holds an abstract socket %s", l.path)
			}
		}
		for _, file := range []string{"tcp", "tcp6"} {
			for _, inode := range tcpListeners(t, shims[0].Pid, file) {
				if inodes[inode] {
					t.Fatalf("shim listens on TCP (%s inode %s)", file, inode)
				}
			}
		}

		// Open a path to the socket up (a hard link in a directory of our
		// own, so other shims starting meanwhile do not close it again),
		// then connect as nobody: the ttrpc handshake must still refuse.
		open, err := os.MkdirTemp("/run", "peer-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(open)
		check(t, os.Chmod(open, 0o755))
		link := filepath.Join(open, "shim.sock")
		if err := os.Link(sock, link); err != nil {
			t.Fatal(err)
		}
		check(t, os.Chmod(link, 0o666)) // the inode's mode: restored below
		defer func() { check(t, os.Chmod(sock, 0o600)) }()
		sock = link
		bin := peerBinary(t)
		out, err := asUser(bin, 65534, sock)
		if code := exitCode(err); code != 3 {
			// 3: connected, then refused by the server; anything else means
			// the probe did not get that far.
			t.Fatalf("a uid 65534 peer: exit %d (%v): %s", code, err, out)
		}
		t.Logf("uid 65534 refused: %s", strings.TrimSpace(out))
		if out, err := asUser(bin, 0, sock); err != nil {
			t.Fatalf("root peer refused (the probe itself is broken): %v %s", err, out)
		}
	})
}

// peerBinary copies the test binary where any uid may run it.
func peerBinary(t *testing.T) string {
	dir, err := os.MkdirTemp("", "peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	check(t, os.Chmod(dir, 0o755))
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "peer")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

func asUser(bin string, uid uint32, sock string) (string, error) {
	cmd := exec.Command(bin, "-test.run", "^$")
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), peerEnv+"="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// socketInodes lists the socket inodes a process holds.
func socketInodes(t *testing.T, pid int) map[string]bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, e := range entries {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			out[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	return out
}

type unixSocket struct{ inode, path string }

func unixSockets(t *testing.T) []unixSocket {
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []unixSocket
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) >= 8 {
			out = append(out, unixSocket{inode: fl[6], path: fl[7]})
		}
	}
	return out
}

// tcpListeners returns the inodes of listening TCP sockets in the
// process's network namespace.
func tcpListeners(t *testing.T, pid int, file string) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, file))
	if err != nil {
		return nil
	}
	var out []string
	for i, l := range strings.Split(string(data), "\n") {
		fl := strings.Fields(l)
		if i == 0 || len(fl) < 10 {
			continue
		}
		if st, _ := strconv.ParseUint(fl[3], 16, 8); st == 0x0A { // LISTEN
			out = append(out, fl[9])
		}
	}
	return out
}

// TestSecretsNotLogged: a container's environment and an exec's arguments
// never reach the logs (containerd's, which carries the shim's at debug).
func TestSecretsNotLogged(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		secret := "s3cr3t-" + runID + "-token"
		id := containerID(t, "")
		c := newContainer(t, e, id, nil, oci.WithProcessArgs("sh", "-c", "test -n \"$API_TOKEN\"; sleep 1000"),
			oci.WithEnv([]string{"API_TOKEN=" + secret}))
		task, statusC := startTask(t, c, nil)
		ctx := testContext(t)
		execToExit(t, c, task, "sec", nil, "sh", "-c", "echo "+secret+" >/dev/null")
		task.Kill(ctx, syscall.SIGKILL)
		waitExit(t, statusC, 30*time.Second)
		task.Delete(ctx)
		data, err := os.ReadFile(e.d.LogPath())
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(data), secret) {
			t.Fatalf("the secret appears in %s", e.d.LogPath())
		}
	})
}

// TestHostNetworkContainerCannotReachShim: a container sharing the host's
// network namespace sees the host's unix socket table, but the shim has no
// abstract socket to dial and its file socket is not in the container's
// filesystem.
func TestHostNetworkContainerCannotReachShim(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		e.skipOn(t, "runsc", "gVisor's netstack does not expose the host's unix socket table")
		keeper := containerID(t, "keeper")
		kc := newContainer(t, e, keeper, nil, oci.WithProcessArgs("sleep", "1000"))
		startTask(t, kc, nil)
		shims := shimsFor(keeper)
		if len(shims) != 1 {
			t.Fatalf("shims %+v", shims)
		}
		sock := socketOf(shims[0])
		id := containerID(t, "")
		script := fmt.Sprintf(`grep -c "@" /proc/net/unix; ls %s 2>&1; ls /run/containerd 2>&1; exit 0`, sock)
		c := newContainer(t, e, id, nil, oci.WithHostNamespace(specs.NetworkNamespace), oci.WithProcessArgs("sh", "-c", script))
		_, out := runToExit(t, c)
		got := out.stdout.String()
		if !strings.Contains(got, "No such file or directory") {
			t.Fatalf("the shim socket is visible inside the container:\n%s", got)
		}
		// The shim holds no abstract socket at all (checked from the host in
		// TestShimSocketSecurity), so the abstract names the container can
		// see are other programs'.
		for _, l := range unixSockets(t) {
			if socketInodes(t, shims[0].Pid)[l.inode] && strings.HasPrefix(l.path, "@") {
				t.Fatalf("shim abstract socket %s", l.path)
			}
		}
	})
}
