// Package integration drives containerd-shim-custom-v2 through a real,
// private containerd (one per containerd line under test), real runc and the
// containerd Go client and ctr, as users do.
//
// Needs root and scripts/deps.sh. Without them every test skips, saying
// what is missing; with $CI set the suite fails instead (harness.RequireDep).
// Environment:
//
//	CONTAINERD_VERSIONS  containerd lines to test (default "2.4.2 2.2.9 1.7.36")
//	BACKENDS             backends to test (default "runc runsc")
//	RUNSC_BINARY         runsc for the runsc backend (default .tools/runsc/runsc)
//	SHIM_BINARY          the shim to test (default: built from this module)
//	BUSYBOX              the static busybox images are made of (default /bin/busybox)
//	CI                   set: a missing dependency fails instead of skipping
//	TEST_TIME_SCALE      multiplies the suite's timeouts (default 1; make
//	                     test-cgroup2 runs it in an emulated guest, slower)
//
// Every test runs once per containerd line and backend. A daemon for the
// runsc backend has CONTAINERD_SHIM_CUSTOM_CONFIG in its environment naming
// a config with backend = "runsc", so clients that send no runtime options
// (ctr, the Go client) get gVisor, as an operator would set it up.
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
	// aggregatorName is the node metrics aggregator's binary.
	aggregatorName = "containerd-shim-custom-metrics"
	namespace      = harness.DefaultNamespace
)

var (
	shimDir  string // holds containerd-shim-custom-v2
	daemons  []*env
	missing  error // a dependency the suite lacks (then every test skips)
	rootDir  string
	runscBin string
	cfgDir   string // default configs per backend
)

// env is one containerd line and backend under test, shared by the tests
// that do not restart or break it.
type env struct {
	version string
	backend string
	d       *harness.Daemon
	client  *client.Client
	image   client.Image
}

// name is the subtest name of an env.
func (e *env) name() string { return "containerd-" + e.version + "/" + e.backend }

// stateRoot is where the backend keeps container state (per namespace).
func (e *env) stateRoot() string {
	if e.backend == "runsc" {
		return "/run/containerd/custom/runsc"
	}
	return "/run/containerd/custom/runc"
}

// skipOn skips a test on a backend, with the reason.
func (e *env) skipOn(t *testing.T, backend, why string) {
	t.Helper()
	if e.backend == backend {
		t.Skipf("%s: %s", backend, why)
	}
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	versions := strings.Fields(os.Getenv("CONTAINERD_VERSIONS"))
	if len(versions) == 0 {
		versions = []string{"2.4.2", "2.2.9", "1.7.36"}
	}
	backends := strings.Fields(os.Getenv("BACKENDS"))
	if len(backends) == 0 {
		backends = []string{"runc", "runsc"}
	}
	if err := harness.NeedRoot(); err != nil {
		return withoutDependency(m, "root", err)
	}
	var err error
	if rootDir, err = harness.ModuleRoot(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	runscBin = os.Getenv("RUNSC_BINARY")
	if runscBin == "" {
		runscBin = filepath.Join(rootDir, ".tools", "runsc", "runsc")
	}
	if what, err := missingDependency(versions, backends); err != nil {
		return withoutDependency(m, what, err)
	}
	dir, err := os.MkdirTemp("", "shim-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	shimDir = dir
	// The shim, and the node aggregator beside it (make build puts both
	// in bin/); built from this module when SHIM_BINARY is not set.
	shimBin, aggBin := os.Getenv("SHIM_BINARY"), ""
	if shimBin != "" {
		aggBin = filepath.Join(filepath.Dir(shimBin), aggregatorName)
	}
	if shimBin != "" {
		if _, err := os.Stat(shimBin); err != nil {
			fmt.Fprintf(os.Stderr, "SHIM_BINARY: %v\n", err)
			return 1
		}
	}
	for name, prebuilt := range map[string]string{shimName: shimBin, aggregatorName: aggBin} {
		if err := linkOrBuild(dir, name, prebuilt); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	if cfgDir, err = os.MkdirTemp("", "shim-config-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(cfgDir)
	configs := map[string]string{
		"runc":  "backend = \"runc\"\n",
		"runsc": fmt.Sprintf("backend = \"runsc\"\n[runsc]\nbinary_name = %q\n", runscBin),
	}
	for b, c := range configs {
		if err := os.WriteFile(filepath.Join(cfgDir, b+".toml"), []byte(c), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	defer func() { // newest first
		for i := len(daemons) - 1; i >= 0; i-- {
			if err := daemons[i].d.Cleanup(); err != nil {
				fmt.Fprintf(os.Stderr, "cleanup containerd %s: %v\n", daemons[i].name(), err)
			}
		}
	}()
	for _, b := range backends {
		if _, ok := configs[b]; !ok {
			fmt.Fprintf(os.Stderr, "unknown backend %q in BACKENDS\n", b)
			return 1
		}
		for _, v := range versions {
			d, err := harness.StartDaemon(context.Background(), daemonConfig(v, b))
			if err != nil {
				fmt.Fprintf(os.Stderr, "start containerd %s: %v\n", v, err)
				return 1
			}
			daemons = append(daemons, &env{version: v, backend: b, d: d, client: d.Client()})
		}
	}
	return m.Run()
}

// missingDependency returns the first thing the suite needs from
// scripts/deps.sh and lacks (what, and why), checked before anything
// starts. Tests that need more (crun, criu, nerdctl, Debian's runsc) ask
// for it themselves with harness.RequireDep.
func missingDependency(versions, backends []string) (what string, err error) {
	for _, v := range versions {
		for _, b := range []string{"containerd", "ctr", "containerd-shim-runc-v2"} {
			if err := harness.NeedExecutable(filepath.Join(rootDir, ".tools", "containerd", v, "bin", b)); err != nil {
				return "containerd " + v + " (scripts/deps.sh builds it)", err
			}
		}
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return "runc (scripts/deps.sh installs it)", err
	}
	for _, b := range backends {
		if b == "runsc" {
			if err := harness.NeedExecutable(runscBin); err != nil {
				return "runsc for the runsc backend (scripts/deps.sh builds it; or set RUNSC_BINARY)", err
			}
		}
	}
	busybox := os.Getenv("BUSYBOX")
	if busybox == "" {
		busybox = "/bin/busybox"
	}
	if err := harness.NeedExecutable(busybox); err != nil {
		return "a static busybox for the test images (scripts/deps.sh installs busybox-static)", err
	}
	return "", nil
}

// withoutDependency runs the suite without a dependency it needs: every
// test skips, naming it; under CI nothing runs and the suite fails.
func withoutDependency(m *testing.M, what string, err error) int {
	if harness.InCI() {
		fmt.Fprintf(os.Stderr, "integration: missing dependency: %s: %v (CI is set: failing instead of skipping every test)\n", what, err)
		return 1
	}
	missing = fmt.Errorf("%s: %w", what, err)
	return m.Run()
}

// requireSuite skips the test (TestMain found a dependency missing) or
// lets it run.
func requireSuite(t *testing.T) {
	t.Helper()
	harness.RequireDep(t, "the integration suite's dependencies", missing)
}

func daemonConfig(version, backend string) harness.Config {
	return harness.Config{
		ContainerdBinDir: filepath.Join(rootDir, ".tools", "containerd", version, "bin"),
		ShimDir:          shimDir,
		Env:              []string{"CONTAINERD_SHIM_CUSTOM_CONFIG=" + filepath.Join(cfgDir, backend+".toml")},
		StartTimeout:     scaled(30 * time.Second),
	}
}

// scaled stretches a timeout by $TEST_TIME_SCALE: the cgroup v2 run
// (scripts/cgroup2) emulates its machine and is several times slower.
func scaled(d time.Duration) time.Duration {
	if f, err := strconv.ParseFloat(os.Getenv("TEST_TIME_SCALE"), 64); err == nil && f > 1 {
		return time.Duration(float64(d) * f)
	}
	return d
}

// forEach runs a test against every containerd line.
func forEach(t *testing.T, fn func(t *testing.T, e *env)) {
	t.Helper()
	requireSuite(t)
	for _, e := range daemons {
		t.Run(e.name(), func(t *testing.T) {
			if e.image == nil {
				e.image = harness.ImportBusybox(t, e.client, namespace)
			}
			fn(t, e)
		})
	}
}

// ownDaemon starts a daemon the test may restart or break.
func ownDaemon(t *testing.T, like *env, mod func(*harness.Config)) *env {
	t.Helper()
	cfg := daemonConfig(like.version, like.backend)
	if mod != nil {
		mod(&cfg)
	}
	d := harness.Start(t, cfg)
	e := &env{version: like.version, backend: like.backend, d: d, client: d.Client()}
	e.image = harness.ImportBusybox(t, e.client, namespace)
	return e
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), namespace), scaled(2*time.Minute))
	t.Cleanup(cancel)
	return ctx
}

var (
	unsafeID = regexp.MustCompile(`[^a-zA-Z0-9]+`)
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

// aggregatorBinary is the node metrics aggregator (TestMain puts it beside
// the shim).
func aggregatorBinary(t *testing.T) string {
	t.Helper()
	return filepath.Join(shimDir, aggregatorName)
}

// linkOrBuild puts the binary name into dir: a link to prebuilt if that
// exists, else `go build` of ./cmd/<name>.
func linkOrBuild(dir, name, prebuilt string) error {
	if prebuilt != "" {
		if _, err := os.Stat(prebuilt); err == nil {
			return os.Symlink(prebuilt, filepath.Join(dir, name))
		}
	}
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), "./cmd/"+name)
	cmd.Dir = rootDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %w\n%s", name, err, out)
	}
	return nil
}
