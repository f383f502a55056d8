package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// nerdctl is one nerdctl set up against one daemon: its own data root, CNI
// config dir and config file (nothing of the host's), the suite's namespace.
type nerdctl struct {
	bin    string
	global []string
	env    []string
}

// nerdctlBinary is $NERDCTL_BINARY, else .tools/peer/bin/nerdctl
// (scripts/peer/nerdctl-build.sh, run by scripts/deps.sh).
func nerdctlBinary() (string, error) {
	if p := os.Getenv("NERDCTL_BINARY"); p != "" {
		return p, nil
	}
	root, err := harness.ModuleRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".tools", "peer", "bin", "nerdctl"), nil
}

func newNerdctl(t *testing.T, bin string, e *env) *nerdctl {
	dir := t.TempDir()
	netconf := filepath.Join(dir, "net.d")
	if err := os.Mkdir(netconf, 0o755); err != nil {
		t.Fatal(err)
	}
	return &nerdctl{
		bin: bin,
		global: []string{
			"--address", e.d.Address(),
			"--namespace", namespace, // the suite's: assertNothingLeft looks there
			"--data-root", filepath.Join(dir, "data"),
			"--cni-path", "/usr/lib/cni",
			"--cni-netconfpath", netconf,
		},
		// No host config file (/etc/nerdctl/nerdctl.toml) gets in the way.
		env: append(os.Environ(), "NERDCTL_TOML="+filepath.Join(dir, "nerdctl.toml")),
	}
}

// run runs nerdctl and returns its output and exit code; it fails the test
// if nerdctl cannot run or takes longer than timeout.
func (n *nerdctl) run(t *testing.T, timeout time.Duration, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var outb, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, n.bin, append(append([]string{}, n.global...), args...)...)
	cmd.Env = n.env
	cmd.Stdout, cmd.Stderr = &outb, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("nerdctl %s: no answer within %s (stdout %q, stderr %q)", strings.Join(args, " "), timeout, outb.String(), errb.String())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("nerdctl %s: %v", strings.Join(args, " "), err)
	}
	return outb.String(), errb.String(), code
}

// ok runs nerdctl and fails the test unless it exits 0.
func (n *nerdctl) ok(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := n.run(t, 2*time.Minute, args...)
	if code != 0 {
		t.Fatalf("nerdctl %s: exit %d: %s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// TestNerdctl runs nerdctl (v2, built by scripts/peer/nerdctl-build.sh) on
// every daemon of the suite with --runtime io.containerd.custom.v2: images
// loaded from an archive, foreground runs with exit codes and output,
// --net none and --net host, a detached container with binary:// logs,
// exec, ps and rm -f, and nothing left behind. nerdctl sends no runtime
// options, so the daemon's default config picks the backend; on the runsc
// daemons the container must be on gVisor's kernel.
func TestNerdctl(t *testing.T) {
	requireSuite(t)
	bin, err := nerdctlBinary()
	if err != nil {
		t.Fatal(err)
	}
	harness.RequireDep(t, "nerdctl (scripts/deps.sh builds it with scripts/peer/nerdctl-build.sh)", harness.NeedExecutable(bin))
	if out, err := exec.Command(bin, "--version").Output(); err == nil {
		t.Logf("%s", strings.TrimSpace(string(out)))
	}
	archive := harness.EnsureBusybox(t)
	hostname, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	forEach(t, func(t *testing.T, e *env) {
		n := newNerdctl(t, bin, e)
		if out := n.ok(t, "load", "-i", archive); !strings.Contains(out, harness.BusyboxImage) {
			t.Fatalf("nerdctl load: %q does not name %s", out, harness.BusyboxImage)
		}
		runArgs := func(extra ...string) []string {
			return append([]string{"run", "--runtime", runtimeName, "--pull", "never"}, extra...)
		}
		img := harness.BusyboxImage

		t.Run("exit codes and stdout", func(t *testing.T) {
			out := n.ok(t, runArgs("--rm", "--net", "none", img, "echo", "hello from nerdctl")...)
			if out != "hello from nerdctl\n" {
				t.Errorf("stdout %q", out)
			}
			out, errOut, code := n.run(t, 2*time.Minute, runArgs("--rm", "--net", "none", img, "sh", "-c", "echo to-stderr >&2; exit 7")...)
			if code != 7 {
				t.Errorf("exit %d, want 7 (stdout %q, stderr %q)", code, out, errOut)
			}
			if !strings.Contains(errOut, "to-stderr") {
				t.Errorf("stderr %q does not hold the container's stderr", errOut)
			}
		})

		t.Run("net none", func(t *testing.T) {
			cidFile := filepath.Join(t.TempDir(), "cid")
			out := n.ok(t, runArgs("--rm", "--net", "none", "--cidfile", cidFile, img, "cat", "/proc/net/dev")...)
			var ifaces []string
			for _, line := range strings.Split(out, "\n") {
				if name, _, ok := strings.Cut(line, ":"); ok && !strings.Contains(name, "|") {
					ifaces = append(ifaces, strings.TrimSpace(name))
				}
			}
			if len(ifaces) != 1 || ifaces[0] != "lo" {
				// gVisor with runsc --network=sandbox (the default) copies
				// the interfaces that are up in the netns runsc made for
				// the spec's network namespace: there are none (its lo is
				// down), so the sandbox gets no loopback at all, where runc
				// brings lo up.
				t.Errorf("interfaces %v, want only lo:\n%s", ifaces, out)
			}
			id, err := os.ReadFile(cidFile)
			if err != nil {
				t.Fatal(err)
			}
			assertNothingLeft(t, e, strings.TrimSpace(string(id)))
		})

		t.Run("net host", func(t *testing.T) {
			out := n.ok(t, runArgs("--rm", "--net", "host", img, "hostname")...)
			if strings.TrimSpace(out) != hostname {
				t.Errorf("hostname %q, want the host's %q", strings.TrimSpace(out), hostname)
			}
		})

		t.Run("kernel", func(t *testing.T) {
			// uname, not dmesg: nerdctl's default seccomp profile denies
			// syslog(2), and gVisor enforces it (--oci-seccomp).
			out := n.ok(t, runArgs("--rm", "--net", "none", img, "uname", "-r")...)
			gvisor := strings.Contains(out, "gvisor")
			if e.backend == "runsc" && !gvisor {
				t.Errorf("runsc daemon: kernel %q, want gVisor's (default config not applied?)", out)
			}
			if e.backend != "runsc" && gvisor {
				t.Errorf("%s daemon: container runs on gVisor: %q", e.backend, out)
			}
		})

		t.Run("detached logs exec ps rm", func(t *testing.T) {
			name := containerID(t, "")
			if len(name) > 40 {
				name = name[len(name)-40:]
			}
			name = "nd-" + strings.Trim(name, "-.")
			t.Cleanup(func() { n.run(t, 2*time.Minute, "rm", "-f", name) })
			out := n.ok(t, runArgs("-d", "--name", name, "--net", "none", img,
				"sh", "-c", "echo started; while :; do echo tick; sleep 1; done")...)
			id := strings.TrimSpace(out)
			if len(id) != 64 {
				t.Fatalf("run -d printed %q, want a container id", out)
			}
			// Logs go through binary:// (nerdctl's own logging driver).
			eventually(t, 20*time.Second, "logs show the container's output", func() error {
				logs, errOut, code := n.run(t, time.Minute, "logs", name)
				if code != 0 || !strings.Contains(logs, "started\n") || !strings.Contains(logs, "tick\n") {
					return fmt.Errorf("exit %d: %s%s", code, logs, errOut)
				}
				return nil
			})
			if out := n.ok(t, "exec", name, "echo", "exec-ok"); out != "exec-ok\n" {
				t.Errorf("exec stdout %q", out)
			}
			// nerdctl exec exits 1 and names the process's status.
			if _, errOut, code := n.run(t, time.Minute, "exec", name, "sh", "-c", "exit 3"); code == 0 || !strings.Contains(errOut, "exit code 3") {
				t.Errorf("exec of a failing process: exit %d, stderr %q; want a failure naming exit code 3", code, errOut)
			}
			if out := n.ok(t, "ps"); !strings.Contains(out, name) || !strings.Contains(out, "Up") {
				t.Errorf("ps does not list %s as up:\n%s", name, out)
			}
			if len(shimsFor(id)) != 1 {
				t.Errorf("no shim of ours serves %s: %+v", id, shimsFor(id))
			}
			n.ok(t, "rm", "-f", name)
			if out := n.ok(t, "ps", "-a"); strings.Contains(out, name) {
				t.Errorf("ps -a still lists %s:\n%s", name, out)
			}
			if _, err := e.client.LoadContainer(testContext(t), id); err == nil {
				t.Errorf("containerd still has container %s", id)
			}
			assertNothingLeft(t, e, id)
		})
	})
}
