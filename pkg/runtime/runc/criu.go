package runc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Kernel 6.13 added the [vvar_vclock] mapping; CRIU before 4.1 dies on it
// in kerndat ("vdso: Unexpected rt vDSO area bounds", criu issue #2532,
// fixed by PR #2539), so every dump and restore fails, after the container
// has been frozen, with only a log file to tell why.
var (
	vvarVclockKernel = version{6, 13, 0}
	vvarVclockCriu   = version{4, 1, 0}
)

// criuBinary is the CRIU that checkpoint and restore run: libcontainer
// (go-criu's MakeCriu) and runc's CLI (which ignores its --criu flag
// nowadays) both take "criu" from PATH.
const criuBinary = "criu"

// criuVersionTimeout bounds "criu --version", which only prints.
const criuVersionTimeout = 10 * time.Second

// criuTooOld starts both refusals: Kubernetes' node e2e checkpoint test
// skips on exactly this text, as it does for runc's shim.
const criuTooOld = "CRIU binary not found or too old"

// preflightCriu returns the criu binary checkpoint and restore will run,
// or why they cannot run on this host: NotImplemented without criu,
// FailedPrecondition for a CRIU too old for the kernel. It decides only
// what is known to fail: a CRIU whose version cannot be read is let through
// for its own errors to tell.
func preflightCriu(ctx context.Context) (string, error) {
	path, err := exec.LookPath(criuBinary)
	if err != nil {
		return "", fmt.Errorf("%s: checkpoint and restore need criu (the shim's PATH: %s): %w: %w", criuTooOld, os.Getenv("PATH"), err, errdefs.ErrNotImplemented)
	}
	v, err := criuVersions.get(ctx, path)
	if err != nil {
		log.G(ctx).WithError(err).Warn("criu preflight skipped: its version is unknown")
		return path, nil
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		log.G(ctx).WithError(err).Warn("criu preflight skipped: the kernel release is unknown")
		return path, nil
	}
	return path, criuKernelError(path, v, unix.ByteSliceToString(u.Release[:]))
}

// criuKernelError returns why CRIU criuVersion (as "criu --version" prints
// it) at path cannot run on kernel release, or nil if it can or either
// version cannot be parsed.
func criuKernelError(path, criuVersion, release string) error {
	cv, cerr := parseCriuVersion(criuVersion)
	kv, kerr := parseKernelRelease(release)
	known := cerr == nil && kerr == nil
	if !known || kv.less(vvarVclockKernel) || !cv.less(vvarVclockCriu) {
		return nil
	}
	return fmt.Errorf("%s: criu %s (%s) cannot run on kernel %s: needs CRIU %s or later (kernel %s's vvar_vclock mapping, criu PR #2539): %w",
		criuTooOld, cv.short(), path, release, vvarVclockCriu.short(), vvarVclockKernel.short(), errdefs.ErrFailedPrecondition)
}

// version is major, minor, patch.
type version [3]int

func (v version) less(w version) bool {
	for i := range v {
		if v[i] != w[i] {
			return v[i] < w[i]
		}
	}
	return false
}

func (v version) String() string { return fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2]) }

// short drops a zero patch level: "4.1", as CRIU names its releases.
func (v version) short() string {
	if v[2] == 0 {
		return fmt.Sprintf("%d.%d", v[0], v[1])
	}
	return v.String()
}

// "criu --version" prints "Version: 3.17.1", then "GitID: ..." for builds
// from git; a release without a patch level prints "Version: 4.1".
var criuVersionRe = regexp.MustCompile(`(?m)^Version:\s*(\d+)\.(\d+)(?:\.(\d+))?`)

func parseCriuVersion(out string) (version, error) {
	m := criuVersionRe.FindStringSubmatch(out)
	if m == nil {
		return version{}, fmt.Errorf("no \"Version: X.Y\" line in criu's output %q", out)
	}
	return versionOf(m[1:])
}

// Releases are "6.1.0-26-amd64", "6.18.44-fc-v1272", "6.13-rc1".
var kernelReleaseRe = regexp.MustCompile(`^(\d+)\.(\d+)(?:\.(\d+))?`)

func parseKernelRelease(release string) (version, error) {
	m := kernelReleaseRe.FindStringSubmatch(release)
	if m == nil {
		return version{}, fmt.Errorf("kernel release %q is not X.Y[.Z]", release)
	}
	return versionOf(m[1:])
}

// versionOf converts the regexps' digit groups; a missing patch is 0.
func versionOf(parts []string) (version, error) {
	var v version
	for i, p := range parts {
		if p == "" {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil {
			return version{}, err
		}
		v[i] = n
	}
	return v, nil
}

// criuVersions remembers each binary's version, per path and file, so a
// replaced criu (an upgrade) is asked again.
var criuVersions = &criuVersionCache{run: runCriuVersion}

type criuVersionCache struct {
	run func(ctx context.Context, path string) (string, error)
	mu  sync.Mutex
	m   map[string]criuStamp // guarded by mu
}

type criuStamp struct {
	mod     time.Time
	size    int64
	version string
}

// get returns path's "criu --version" output. The command runs outside mu:
// concurrent first calls may both run it, which is harmless.
func (c *criuVersionCache) get(ctx context.Context, path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	s, ok := c.m[path]
	c.mu.Unlock()
	if ok && s.mod.Equal(fi.ModTime()) && s.size == fi.Size() {
		return s.version, nil
	}
	out, err := c.run(ctx, path)
	if err != nil {
		return "", err
	}
	if _, err := parseCriuVersion(out); err != nil {
		return "", err
	}
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]criuStamp{}
	}
	c.m[path] = criuStamp{mod: fi.ModTime(), size: fi.Size(), version: out}
	c.mu.Unlock()
	return out, nil
}

func runCriuVersion(ctx context.Context, path string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, criuVersionTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--version").CombinedOutput()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("%s --version: %w: %s", path, err, out)
		}
		return "", fmt.Errorf("%s --version: %w", path, err)
	}
	return string(out), nil
}

// keepCriuLog copies criu's log from its work directory (about to go) into
// the bundle and returns what an error should add: criu's own error lines
// (the last few; CRIU's first error is usually the cause, its last what
// failed after it), and the copy's path.
func keepCriuLog(work, name, dst string) string {
	data, err := os.ReadFile(filepath.Join(work, name))
	if err != nil {
		return ""
	}
	var b strings.Builder
	if msg := criuLogErrors(data, 3); msg != "" {
		b.WriteString(": " + msg)
	}
	if os.WriteFile(dst, data, 0o600) == nil {
		b.WriteString(" (criu log: " + dst + ")")
	}
	return b.String()
}

// criuLogErrors returns up to n of criu's "Error (file:line): message"
// lines, joined with "; ", without their timestamps: the first ones (the
// cause), then the last one if there are more.
func criuLogErrors(log []byte, n int) string {
	var errs []string
	for _, line := range strings.Split(string(log), "\n") {
		i := strings.Index(line, "Error (")
		if i < 0 {
			continue
		}
		errs = append(errs, strings.TrimSpace(line[i:]))
	}
	switch {
	case len(errs) <= n:
	case n < 2:
		errs = errs[:n]
	default:
		errs = append(errs[:n-1], "...", errs[len(errs)-1])
	}
	return strings.Join(errs, "; ")
}
