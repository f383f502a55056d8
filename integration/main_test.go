// Package integration drives containerd-shim-custom-v2 through a real,
// private containerd (one per containerd line under test), real runc and the
// containerd Go client and ctr, as users do.
//
// Needs root and scripts/deps.sh. Environment:
//
//	CONTAINERD_VERSIONS  containerd lines to test (default "2.4.2 2.2.9")
//	SHIM_BINARY          the shim to test (default: built from this module)
package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

const (
	runtimeName = "io.containerd.custom.v2"
	shimName    = "containerd-shim-custom-v2"
	namespace   = harness.DefaultNamespace
)

var (
	shimDir  string // holds containerd-shim-custom-v2
	daemons  []*env
	skipWhy  string
	rootDir  string
	testRoot = "/run/containerd/custom/runc" // the shim's default runc root
)

// env is one containerd line under test, shared by the tests that do not
// restart or break it.
type env struct {
	version string
	d       *harness.Daemon
	client  *client.Client
	image   client.Image
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		skipWhy = "integration tests need root"
		return m.Run()
	}
	var err error
	if rootDir, err = harness.ModuleRoot(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dir, err := os.MkdirTemp("", "shim-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	shimDir = dir
	if bin := os.Getenv("SHIM_BINARY"); bin != "" {
		if err := os.Symlink(bin, filepath.Join(dir, shimName)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	} else {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, shimName), "./cmd/"+shimName)
		cmd.Dir = rootDir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build shim: %v\n%s", err, out)
			return 1
		}
	}
	versions := strings.Fields(os.Getenv("CONTAINERD_VERSIONS"))
	if len(versions) == 0 {
		versions = []string{"2.4.2", "2.2.9"}
	}
	for _, v := range versions {
		d, err := harness.StartDaemon(context.Background(), daemonConfig(v))
		if err != nil {
			fmt.Fprintf(os.Stderr, "start containerd %s: %v\n", v, err)
			return 1
		}
		defer d.Cleanup()
		daemons = append(daemons, &env{version: v, d: d, client: d.Client()})
	}
	return m.Run()
}

func daemonConfig(version string) harness.Config {
	return harness.Config{
		ContainerdBinDir: filepath.Join(rootDir, ".tools", "containerd", version, "bin"),
		ShimDir:          shimDir,
	}
}

// forEach runs a test against every containerd line.
func forEach(t *testing.T, fn func(t *testing.T, e *env)) {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	for _, e := range daemons {
		t.Run("containerd-"+e.version, func(t *testing.T) {
			if e.image == nil {
				e.image = harness.ImportBusybox(t, e.client, namespace)
			}
			fn(t, e)
		})
	}
}

// ownDaemon starts a daemon the test may restart or break.
func ownDaemon(t *testing.T, version string, mod func(*harness.Config)) *env {
	t.Helper()
	cfg := daemonConfig(version)
	if mod != nil {
		mod(&cfg)
	}
	d := harness.Start(t, cfg)
	e := &env{version: version, d: d, client: d.Client()}
	e.image = harness.ImportBusybox(t, e.client, namespace)
	return e
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), namespace), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

var (
	unsafeID = regexp.MustCompile(`[^a-zA-Z0-9._-]+`)
	// runID keeps ids unique across runs: runc state and shim sockets are
	// machine-wide, and an aborted run may leave some behind.
	runID = strconv.FormatInt(time.Now().UnixNano()%(36*36*36*36), 36)
)

// containerID names a container after the test (ids must be unique on the
// machine and valid containerd identifiers).
func containerID(t *testing.T, suffix string) string {
	id := unsafeID.ReplaceAllString(t.Name(), "-")
	if suffix != "" {
		id += "-" + suffix
	}
	id += "-" + runID
	if len(id) > 70 {
		id = id[len(id)-70:]
	}
	return strings.Trim(id, "-.")
}
