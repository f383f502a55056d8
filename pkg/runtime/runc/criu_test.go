package runc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

func TestParseCriuVersion(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		want      version
		bad       bool
	}{
		{name: "release", out: "Version: 3.17.1\n", want: version{3, 17, 1}},
		{name: "git build", out: "Version: 3.17.1\nGitID: v3.17.1-12-gabcdef\n", want: version{3, 17, 1}},
		{name: "no patch level", out: "Version: 4.1\n", want: version{4, 1, 0}},
		{name: "two-digit patch", out: "Version: 4.1.12\n", want: version{4, 1, 12}},
		{name: "after a warning line", out: "Warn: something\nVersion: 4.2\n", want: version{4, 2, 0}},
		{name: "no version line", out: "criu: unknown option\n", bad: true},
		{name: "empty", out: "", bad: true},
		{name: "no minor", out: "Version: 4\n", bad: true},
		{name: "not at a line start", out: "GitVersion: 4.1\n", bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCriuVersion(tc.out)
			if tc.bad {
				if err == nil {
					t.Fatalf("parsed %v, want an error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestParseKernelRelease(t *testing.T) {
	for _, tc := range []struct {
		release string
		want    version
		bad     bool
	}{
		{release: "6.18.0-foo", want: version{6, 18, 0}},
		{release: "6.1.0-26-amd64", want: version{6, 1, 0}},
		{release: "6.18.44-fc-v1272", want: version{6, 18, 44}},
		{release: "6.13-rc1", want: version{6, 13, 0}},
		{release: "5.15.153.1-microsoft-standard-WSL2", want: version{5, 15, 153}},
		{release: "", bad: true},
		{release: "linux", bad: true},
		{release: "6", bad: true},
	} {
		t.Run(tc.release, func(t *testing.T) {
			got, err := parseKernelRelease(tc.release)
			if tc.bad {
				if err == nil {
					t.Fatalf("parsed %v, want an error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// TestCriuKernelError is the decision: only CRIU < 4.1 on kernel >= 6.13
// is refused, and an unreadable version refuses nothing.
func TestCriuKernelError(t *testing.T) {
	for _, tc := range []struct {
		name, criu, kernel string
		blocked            bool
	}{
		{name: "old criu, new kernel", criu: "Version: 3.17.1\n", kernel: "6.18.44-fc-v1272", blocked: true},
		{name: "old criu, first bad kernel", criu: "Version: 3.17.1\n", kernel: "6.13.0", blocked: true},
		{name: "old criu, first bad rc", criu: "Version: 3.17.1\n", kernel: "6.13-rc1", blocked: true},
		{name: "4.0.9, new kernel", criu: "Version: 4.0.9\n", kernel: "6.13.1", blocked: true},
		{name: "old criu, 6.12", criu: "Version: 3.17.1\n", kernel: "6.12.99", blocked: false},
		{name: "old criu, Debian 12 kernel", criu: "Version: 3.17.1\n", kernel: "6.1.0-26-amd64", blocked: false},
		{name: "old criu, 5.x with a large minor", criu: "Version: 3.17.1\n", kernel: "5.19.0", blocked: false},
		{name: "4.1, new kernel", criu: "Version: 4.1\n", kernel: "6.18.0-foo", blocked: false},
		{name: "4.1.1, new kernel", criu: "Version: 4.1.1\nGitID: v4.1.1\n", kernel: "6.18.0-foo", blocked: false},
		{name: "4.2, new kernel", criu: "Version: 4.2\n", kernel: "6.13.0", blocked: false},
		{name: "5.0, new kernel", criu: "Version: 5.0\n", kernel: "7.0.0", blocked: false},
		{name: "old criu, kernel 7", criu: "Version: 3.19\n", kernel: "7.0.0", blocked: true},
		{name: "unknown criu", criu: "garbage", kernel: "6.18.0", blocked: false},
		{name: "unknown kernel", criu: "Version: 3.17.1\n", kernel: "weird", blocked: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := criuKernelError("/usr/sbin/criu", tc.criu, tc.kernel)
			if !tc.blocked {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errdefs.IsFailedPrecondition(err) {
				t.Fatalf("got %v, want FailedPrecondition", err)
			}
			v, _ := parseCriuVersion(tc.criu)
			for _, want := range []string{"/usr/sbin/criu", v.short(), tc.kernel, "4.1 or later", "vvar_vclock", "#2539"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("message %q lacks %q", err, want)
				}
			}
		})
	}
}

func TestVersionShort(t *testing.T) {
	for v, want := range map[version]string{{4, 1, 0}: "4.1", {3, 17, 1}: "3.17.1", {6, 13, 0}: "6.13"} {
		if got := v.short(); got != want {
			t.Errorf("%v.short() = %q, want %q", v, got, want)
		}
	}
}

// fakeCriu writes a criu that prints version and counts its runs in a file
// beside it.
func fakeCriu(t *testing.T, dir, version string) string {
	t.Helper()
	p := filepath.Join(dir, "criu")
	script := "#!/bin/sh\necho x >> \"$(dirname \"$0\")/runs\"\nprintf 'Version: " + version + "\\nGitID: v" + version + "\\n'\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func runs(t *testing.T, dir string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "runs"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return strings.Count(string(data), "x")
}

// TestCriuVersionCache: criu runs once per binary, and again once the
// binary is replaced.
func TestCriuVersionCache(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p := fakeCriu(t, dir, "3.17.1")
	c := &criuVersionCache{run: runCriuVersion}
	for range 3 {
		out, err := c.get(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := parseCriuVersion(out); v != (version{3, 17, 1}) {
			t.Fatalf("version %v from %q", v, out)
		}
	}
	if n := runs(t, dir); n != 1 {
		t.Fatalf("criu ran %d times, want 1", n)
	}
	fakeCriu(t, dir, "4.1.10")
	// The same size: only the mtime tells the upgrade.
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(p, later, later); err != nil {
		t.Fatal(err)
	}
	out, err := c.get(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := parseCriuVersion(out); v != (version{4, 1, 10}) {
		t.Fatalf("after the upgrade: version %v from %q", v, out)
	}
	if n := runs(t, dir); n != 2 {
		t.Fatalf("criu ran %d times, want 2", n)
	}
}

// TestCriuVersionFailures: a criu that fails or prints no version is an
// error, not cached, so the preflight lets it through.
func TestCriuVersionFailures(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p := filepath.Join(dir, "criu")
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho 'no such option' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := &criuVersionCache{run: runCriuVersion}
	if _, err := c.get(ctx, p); err == nil || !strings.Contains(err.Error(), "no such option") {
		t.Fatalf("failing criu: %v", err)
	}
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho hello\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := c.get(ctx, p); err == nil {
		t.Fatal("criu without a version line: no error")
	}
	if len(c.m) != 0 {
		t.Fatalf("cached %v", c.m)
	}
}

// TestPreflightCriu runs the whole preflight against fake criu binaries on
// PATH and this host's kernel.
func TestPreflightCriu(t *testing.T) {
	ctx := context.Background()
	t.Run("missing", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		_, err := preflightCriu(ctx)
		if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), "need criu") {
			t.Fatalf("got %v, want NotImplemented naming criu", err)
		}
	})
	for _, v := range []string{"3.17.1", "4.1"} {
		t.Run(v, func(t *testing.T) {
			dir := t.TempDir()
			p := fakeCriu(t, dir, v)
			t.Setenv("PATH", dir)
			got, err := preflightCriu(ctx)
			if got != p {
				t.Fatalf("criu %q, want %q", got, p)
			}
			var u unix.Utsname
			if err := unix.Uname(&u); err != nil {
				t.Fatal(err)
			}
			want := criuKernelError(p, "Version: "+v, unix.ByteSliceToString(u.Release[:]))
			if (err == nil) != (want == nil) {
				t.Fatalf("preflight %v, decision %v", err, want)
			}
		})
	}
}

// A failed dump's error carries criu's own error lines, not only a log path.
func TestCriuLogErrors(t *testing.T) {
	log := []byte(`(00.000010) Version: 3.17.1 (gitid 0)
(00.010028) Error (criu/sockets.c:209): sockets: Diag module missing (-2)
(00.120687) Warn  (criu/util.c:642): something
(00.200468) Error (criu/tun.c:85): tun: Unable to create tun: No such file or directory
(00.596774) Error (criu/kerndat.c:1666): kerndat_has_nftables_concat failed when initializing kerndat.
(00.599593) Error (criu/crtools.c:260): Could not initialize kernel features detection.
`)
	want := "Error (criu/sockets.c:209): sockets: Diag module missing (-2); Error (criu/tun.c:85): tun: Unable to create tun: No such file or directory; ...; Error (criu/crtools.c:260): Could not initialize kernel features detection."
	if got := criuLogErrors(log, 3); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if got := criuLogErrors(log, 1); got != "Error (criu/sockets.c:209): sockets: Diag module missing (-2)" {
		t.Errorf("first error only: %q", got)
	}
	if got := criuLogErrors([]byte("(00.1) Info all good\n"), 3); got != "" {
		t.Errorf("no errors: %q", got)
	}
	work, dst := t.TempDir(), filepath.Join(t.TempDir(), "criu-dump.log")
	if err := os.WriteFile(filepath.Join(work, "dump.log"), log[:150], 0o600); err != nil {
		t.Fatal(err)
	}
	if got := keepCriuLog(work, "dump.log", dst); got != ": Error (criu/sockets.c:209): sockets: Diag module missing (-2) (criu log: "+dst+")" {
		t.Errorf("keepCriuLog: %q", got)
	}
	if got := keepCriuLog(work, "none.log", dst); got != "" {
		t.Errorf("no log: %q", got)
	}
}
