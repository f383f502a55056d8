// Package harness runs a private containerd for integration tests of
// containerd-shim-custom-v2: a daemon with its own root, state and socket, a
// busybox image built offline, an event recorder and leak checks.
//
// The containerd binaries come from scripts/deps.sh (.tools/containerd/<version>/bin).
// Everything needs root.
package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// DefaultContainerdVersion is the containerd whose binaries Config uses when
// neither Config.ContainerdBinDir nor $CONTAINERD_BIN_DIR is set.
const DefaultContainerdVersion = "2.4.2"

// DefaultNamespace is the namespace Daemon.Client uses unless Config.Namespace is set.
const DefaultNamespace = "testing"

// Config describes a private containerd. The zero value is usable.
type Config struct {
	// ContainerdBinDir holds containerd, ctr and containerd-shim-runc-v2.
	// Default: $CONTAINERD_BIN_DIR, else <module root>/.tools/containerd/2.4.2/bin.
	ContainerdBinDir string
	// ShimDir is put first on the daemon's PATH so that the runtime
	// io.containerd.custom.v2 resolves to ShimDir/containerd-shim-custom-v2.
	// Default: $SHIM_DIR (may be empty).
	ShimDir string
	// ExtraConfig is TOML appended to the generated config. It can only add
	// tables: top-level keys (root, state, disabled_plugins, ...) are already set.
	ExtraConfig string
	// Env is added to the daemon's environment (KEY=VALUE; later entries win).
	Env []string
	// EnableCRI keeps the CRI plugins. By default they are disabled, which makes
	// startup quick and keeps the daemon off CNI.
	EnableCRI bool
	// Namespace is the default namespace of Client(). Default: DefaultNamespace.
	Namespace string
	// StartTimeout bounds the wait for the daemon to answer. Default: 30s.
	StartTimeout time.Duration
	// LogLevel is containerd's log level (shims inherit debug). Default: debug.
	LogLevel string
	// StateDir overrides the daemon's state directory (e.g. a small tmpfs
	// the test mounted). Default: a directory next to the root.
	StateDir string
	// ContainerdVersion is the version of the containerd in ContainerdBinDir
	// ("1.7.36", "2.4.2"); it picks the config format (version 2 for 1.x,
	// version 3 for 2.x) and the plugin names. Default: what
	// `containerd --version` reports.
	ContainerdVersion string
}

// Daemon is a running private containerd. Create it with Start or StartDaemon.
type Daemon struct {
	cfg        Config
	dir        string // everything below lives here
	root       string
	state      string
	address    string
	configPath string
	logPath    string

	mu     sync.Mutex
	cmd    *exec.Cmd     // nil when not running
	exited chan struct{} // closed when cmd has exited
	client *client.Client
}

// Start starts a private containerd for the test, fails the test if it cannot,
// and registers cleanup: when the test ends the daemon is stopped and
// everything under its directories is removed (see Daemon.Cleanup). If the test
// failed, the tail of the containerd log is logged first.
func Start(t testing.TB, cfg Config) *Daemon {
	t.Helper()
	d, err := StartDaemon(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("tail of %s:\n%s", d.logPath, tailFile(d.logPath, 60))
		}
		if err := d.Cleanup(); err != nil {
			t.Logf("containerd cleanup: %v", err)
		}
	})
	return d
}

// StartDaemon starts a private containerd without a testing.TB. The caller
// must call Cleanup.
func StartDaemon(ctx context.Context, cfg Config) (*Daemon, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	for _, b := range []string{"containerd", "ctr"} {
		if _, err := os.Stat(filepath.Join(cfg.ContainerdBinDir, b)); err != nil {
			return nil, fmt.Errorf("containerd binaries (run scripts/deps.sh): %w", err)
		}
	}
	if cfg.ContainerdVersion == "" {
		v, err := BinaryVersion(filepath.Join(cfg.ContainerdBinDir, "containerd"))
		if err != nil {
			return nil, err
		}
		cfg.ContainerdVersion = v
	}
	// Unix socket paths are limited to 108 bytes, so stay short and out of
	// $TMPDIR, which may be long (shims add their own sockets next to ours).
	dir, err := os.MkdirTemp("/tmp", "ctrd-")
	if err != nil {
		return nil, fmt.Errorf("create daemon dir: %w", err)
	}
	d := &Daemon{
		cfg:        cfg,
		dir:        dir,
		root:       filepath.Join(dir, "root"),
		state:      cfg.StateDir,
		address:    filepath.Join(dir, "c.sock"),
		configPath: filepath.Join(dir, "config.toml"),
		logPath:    filepath.Join(dir, "containerd.log"),
	}
	if d.state == "" {
		d.state = filepath.Join(dir, "state")
	}
	if err := os.WriteFile(d.configPath, []byte(d.configTOML()), 0o644); err != nil {
		_ = os.RemoveAll(dir) // nothing started yet; the write error is the one to report
		return nil, fmt.Errorf("write containerd config: %w", err)
	}
	if err := d.start(ctx); err != nil {
		log := tailFile(d.logPath, 30)
		_ = d.Cleanup()
		return nil, fmt.Errorf("%w\ncontainerd log tail:\n%s", err, log)
	}
	return d, nil
}

func (c *Config) setDefaults() error {
	if c.ContainerdBinDir == "" {
		c.ContainerdBinDir = os.Getenv("CONTAINERD_BIN_DIR")
	}
	if c.ContainerdBinDir == "" {
		root, err := ModuleRoot()
		if err != nil {
			return err
		}
		c.ContainerdBinDir = filepath.Join(root, ".tools", "containerd", DefaultContainerdVersion, "bin")
	}
	if c.ShimDir == "" {
		c.ShimDir = os.Getenv("SHIM_DIR")
	}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 30 * time.Second
	}
	return nil
}

// BinaryVersion runs `<containerd> --version` and returns the version it
// reports, without a leading "v" or build suffix: "containerd
// github.com/containerd/containerd 1.7.36+unknown" gives "1.7.36".
func BinaryVersion(containerd string) (string, error) {
	out, err := exec.Command(containerd, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", containerd, err)
	}
	fields := strings.Fields(string(out))
	if len(fields) < 3 {
		return "", fmt.Errorf("%s --version: unexpected output %q", containerd, out)
	}
	v := strings.TrimPrefix(fields[2], "v")
	if i := strings.IndexAny(v, "+-"); i >= 0 {
		v = v[:i]
	}
	return v, nil
}

// MajorVersion is the major version of a containerd version string ("1.7.36"
// gives 1), or 0 when it does not start with a number.
func MajorVersion(version string) int {
	major, _, _ := strings.Cut(strings.TrimPrefix(version, "v"), ".")
	n, err := strconv.Atoi(major)
	if err != nil {
		return 0
	}
	return n
}

// configTOML renders the daemon config: version 3 for containerd 2.x,
// version 2 (with 1.x's plugin names) for containerd 1.x.
func (d *Daemon) configTOML() string {
	legacy := d.Major() == 1
	// NRI listens on a fixed host path (/var/run/nri/nri.sock) that a second
	// daemon would fight over, so it is always off (1.7 has the same name).
	disabled := []string{"io.containerd.nri.v1.nri"}
	if !d.cfg.EnableCRI {
		// 1.x has a single CRI plugin; 2.x split it up.
		disabled = append(disabled, "io.containerd.grpc.v1.cri")
		if !legacy {
			disabled = append(disabled,
				"io.containerd.cri.v1.images",
				"io.containerd.cri.v1.runtime",
				"io.containerd.podsandbox.controller.v1.podsandbox",
			)
		}
	}
	configVersion := 3
	if legacy {
		configVersion = 2
	}
	var b strings.Builder
	fmt.Fprintf(&b, "version = %d\nroot = %q\nstate = %q\n", configVersion, d.root, d.state)
	fmt.Fprintf(&b, "disabled_plugins = [%s]\n\n", quoteList(disabled))
	fmt.Fprintf(&b, "[grpc]\n  address = %q\n\n", d.address)
	fmt.Fprintf(&b, "[ttrpc]\n  address = %q\n\n", d.address+".ttrpc")
	level := d.cfg.LogLevel
	if level == "" {
		level = "debug"
	}
	fmt.Fprintf(&b, "[debug]\n  level = %q\n\n", level)
	// Keep the "opt" plugin out of the host's /opt/containerd (same name and
	// key in 1.x and 2.x; the quoting suits both config versions).
	fmt.Fprintf(&b, "[plugins.\"io.containerd.internal.v1.opt\"]\n  path = %q\n\n", filepath.Join(d.root, "opt"))
	b.WriteString(d.cfg.ExtraConfig)
	b.WriteString("\n")
	return b.String()
}

func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// env is the daemon's environment: ShimDir and the containerd bin dir first on
// PATH (so io.containerd.runc.v2 resolves to the matching runc shim), then Config.Env.
func (d *Daemon) env() []string {
	path := d.cfg.ContainerdBinDir + ":" + os.Getenv("PATH")
	if d.cfg.ShimDir != "" {
		path = d.cfg.ShimDir + ":" + path
	}
	env := append(os.Environ(), "PATH="+path)
	return append(env, d.cfg.Env...) // exec.Cmd keeps the last value of duplicate keys
}

// start runs containerd and waits until it answers Version.
func (d *Daemon) start(ctx context.Context) error {
	logFile, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open containerd log: %w", err)
	}
	defer logFile.Close() // the child keeps its own descriptor

	cmd := exec.Command(filepath.Join(d.cfg.ContainerdBinDir, "containerd"), "--config", d.configPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = d.env()
	// If the test binary dies (e.g. go test -timeout), take the daemon down too.
	// Pdeathsig fires when the forking *thread* exits; the Go runtime keeps its
	// threads unless a goroutine exits while locked to one, which we never do.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()

	d.mu.Lock()
	d.cmd, d.exited = cmd, exited
	d.mu.Unlock()

	if err := d.waitReady(ctx, exited); err != nil {
		_ = d.signalAndWait(syscall.SIGKILL, 10*time.Second)
		return err
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.client == nil {
		c, err := client.New(d.address, client.WithDefaultNamespace(d.cfg.Namespace))
		if err != nil {
			return fmt.Errorf("containerd client: %w", err)
		}
		d.client = c
	} else if err := d.client.Reconnect(); err != nil { // after Restart
		return fmt.Errorf("reconnect containerd client: %w", err)
	}
	return nil
}

// waitReady polls Version with a fresh client per attempt: a failed attempt on
// a long-lived gRPC connection would put it into reconnect backoff.
func (d *Daemon) waitReady(ctx context.Context, exited <-chan struct{}) error {
	deadline := time.Now().Add(d.cfg.StartTimeout)
	lastErr := fmt.Errorf("socket %s never appeared", d.address)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("containerd exited during startup (log %s)", d.logPath)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if _, err := os.Stat(d.address); err == nil {
			lastErr = probeVersion(ctx, d.address)
			if lastErr == nil {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("containerd not ready after %s (last error: %w)", d.cfg.StartTimeout, lastErr)
}

func probeVersion(ctx context.Context, address string) error {
	c, err := client.New(address)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = c.Version(ctx)
	return err
}

// Client returns the containerd client (default namespace Config.Namespace).
// It stays valid across Restart.
func (d *Daemon) Client() *client.Client {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.client
}

// Address is the daemon's gRPC socket path.
func (d *Daemon) Address() string { return d.address }

// Namespace is the default namespace of Client.
func (d *Daemon) Namespace() string { return d.cfg.Namespace }

// LogPath is the containerd log file (stdout and stderr, debug level).
func (d *Daemon) LogPath() string { return d.logPath }

// StateDir is containerd's state directory (bundles live below it).
func (d *Daemon) StateDir() string { return d.state }

// RootDir is containerd's root directory (content, snapshots, metadata).
func (d *Daemon) RootDir() string { return d.root }

// BinDir is the directory holding containerd, ctr and containerd-shim-runc-v2.
func (d *Daemon) BinDir() string { return d.cfg.ContainerdBinDir }

// Version is the daemon's containerd version ("1.7.36", "2.4.2").
func (d *Daemon) Version() string { return d.cfg.ContainerdVersion }

// Major is the daemon's containerd major version (1 or 2).
func (d *Daemon) Major() int { return MajorVersion(d.cfg.ContainerdVersion) }

// Pid is the daemon's pid, or 0 when it is not running.
func (d *Daemon) Pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return 0
	}
	select {
	case <-d.exited: // died on its own
		return 0
	default:
		return d.cmd.Process.Pid
	}
}

// Ctr runs the matching ctr against this daemon ("ctr -a <socket> args...").
// Pass "-n", ns to choose a namespace (ctr's default is "default").
func (d *Daemon) Ctr(args ...string) (stdout, stderr string, err error) {
	var outb, errb strings.Builder
	cmd := exec.Command(filepath.Join(d.cfg.ContainerdBinDir, "ctr"), append([]string{"-a", d.address}, args...)...)
	cmd.Stdout, cmd.Stderr = &outb, &errb
	if err := cmd.Run(); err != nil {
		return outb.String(), errb.String(), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return outb.String(), errb.String(), nil
}

// Stop sends SIGTERM and waits for the daemon to exit (SIGKILL after 30s).
// Shims keep running, as with a real daemon stop. Stopping a stopped daemon is a no-op.
func (d *Daemon) Stop() error {
	return d.signalAndWait(syscall.SIGTERM, 30*time.Second)
}

// Kill sends SIGKILL and waits for the daemon to exit.
func (d *Daemon) Kill() error {
	return d.signalAndWait(syscall.SIGKILL, 10*time.Second)
}

// Restart stops the daemon (if running) and starts it again on the same root,
// state, socket and config. Client() reconnects.
func (d *Daemon) Restart() error {
	if err := d.Stop(); err != nil {
		return err
	}
	return d.start(context.Background())
}

func (d *Daemon) signalAndWait(sig syscall.Signal, timeout time.Duration) error {
	d.mu.Lock()
	cmd, exited := d.cmd, d.exited
	d.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig) // fails only if it already exited
	var err error
	select {
	case <-exited:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-exited
		err = fmt.Errorf("containerd (pid %d) ignored %v for %s; killed", cmd.Process.Pid, sig, timeout)
	}
	d.mu.Lock()
	d.cmd = nil
	d.mu.Unlock()
	return err
}

// Cleanup removes everything the daemon created. Best effort, in this order:
// delete all tasks and containers through the API (so runc state and cgroups
// go too), stop the daemon, then CleanUnder its directory (runc/runsc state
// of containers whose shim died, leftover shims whose command line or cwd
// refers to the directory and their descendants, mounts below it), and
// remove it. Start registers it with t.Cleanup.
func (d *Daemon) Cleanup() error {
	if os.Getenv("KEEP_DAEMON_DIR") != "" {
		return d.Stop()
	}
	var errs []error
	if d.Pid() != 0 && d.Client() != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if err := d.removeContainers(ctx); err != nil {
			errs = append(errs, fmt.Errorf("remove containers: %w", err))
		}
		cancel()
	}
	if err := d.Stop(); err != nil {
		errs = append(errs, err)
	}
	d.mu.Lock()
	if d.client != nil {
		_ = d.client.Close()
		d.client = nil
	}
	d.mu.Unlock()
	if err := CleanUnder(d.dir, "", nil); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(d.dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", d.dir, err))
	}
	return errors.Join(errs...)
}

// removeContainers deletes every task (killing it) and container in every namespace.
func (d *Daemon) removeContainers(ctx context.Context) error {
	c := d.Client()
	nss, err := c.NamespaceService().List(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		ctrs, err := c.Containers(nctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("list containers in %s: %w", ns, err))
			continue
		}
		for _, ctr := range ctrs {
			if task, err := ctr.Task(nctx, nil); err == nil {
				if _, err := task.Delete(nctx, client.WithProcessKill); err != nil {
					errs = append(errs, fmt.Errorf("delete task %s/%s: %w", ns, ctr.ID(), err))
				}
			}
			if err := ctr.Delete(nctx, client.WithSnapshotCleanup); err != nil {
				errs = append(errs, fmt.Errorf("delete container %s/%s: %w", ns, ctr.ID(), err))
			}
		}
	}
	return errors.Join(errs...)
}

// tailFile returns the last n lines of path (or an error text).
func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
