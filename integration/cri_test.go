package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

const (
	criNamespace  = "k8s.io" // CRI's containerd namespace
	criHandler    = "custom"
	criPauseImage = "registry.k8s.io/pause:custom-test"
	criImage      = "ghcr.io/containerd/busybox:1.36"
)

// criConfig registers this shim as the CRI runtime handler "custom" with
// the handler configuration cfg, in the config format of containerd's line.
func criConfig(major int, cfg string) string {
	if major == 1 {
		return fmt.Sprintf(`[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  # 1.7 replaces its built-in runtimes with the file's, and CRI will not
  # load without the default runtime (runc).
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.%s]
    runtime_type = "io.containerd.custom.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.%s.options]
      ConfigPath = %q
`, criPauseImage, criHandler, criHandler, cfg)
	}
	return fmt.Sprintf(`[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = %q
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.%s]
    runtime_type = "io.containerd.custom.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.%s.options]
      ConfigPath = %q
`, criPauseImage, criHandler, criHandler, cfg)
}

// criDaemon starts a daemon of its own with CRI on, the busybox image and
// a pause image in CRI's namespace, and returns a CRI client for it.
func criDaemon(t *testing.T, like *env) (*env, func() runtimeapi.RuntimeServiceClient) {
	return criDaemonWith(t, like, filepath.Join(cfgDir, like.backend+".toml"))
}

// criDaemonWith is criDaemon with the handler configuration at cfg.
func criDaemonWith(t *testing.T, like *env, cfg string) (*env, func() runtimeapi.RuntimeServiceClient) {
	t.Helper()
	e := ownDaemon(t, like, func(c *harness.Config) {
		c.EnableCRI = true
		c.ExtraConfig = criConfig(harness.MajorVersion(like.version), cfg)
	})
	ctx := nsCtx(testContext(t))
	harness.ImportBusybox(t, e.client, criNamespace)
	if _, err := harness.ImportImage(ctx, e.client, criNamespace, pauseImage(t)); err != nil {
		t.Fatalf("import pause image: %v", err)
	}
	connect := func() runtimeapi.RuntimeServiceClient {
		conn, err := grpc.NewClient("unix://"+e.d.Address(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return runtimeapi.NewRuntimeServiceClient(conn)
	}
	return e, connect
}

// pauseImage builds a pause image whose entrypoint sleeps: Debian's
// busybox, made into an OCI archive by scripts/peer/mkoci.sh.
func pauseImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "/bin/busybox", filepath.Join(rootfs, "bin", "busybox")).CombinedOutput(); err != nil {
		t.Fatalf("copy busybox: %v: %s", err, out)
	}
	out := filepath.Join(dir, "pause.tar")
	cmd := exec.Command("bash", filepath.Join(rootDir, "scripts", "peer", "mkoci.sh"), out, rootfs,
		`{"Entrypoint":["/bin/busybox","sleep","2147483647"]}`, criPauseImage)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build pause image: %v: %s", err, b)
	}
	return out
}

// TestCRIStdoutWhileContainerdDown: with CRI, containerd itself reads a
// container's stdout (into the pod's log file). While containerd is
// stopped nobody reads, so the shim's copy and then the container's writes
// block; once containerd is back, CRI reattaches to the shim's fifos, the
// container must write again, and it must still stop on request.
func TestCRIStdoutWhileContainerdDown(t *testing.T) {
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		e, connect := criDaemon(t, like)
		rc := connect()
		ctx := testContext(t)
		logDir := t.TempDir()

		podCfg := &runtimeapi.PodSandboxConfig{
			Metadata:     &runtimeapi.PodSandboxMetadata{Name: "chatty", Uid: containerID(t, "uid"), Namespace: "test"},
			LogDirectory: logDir,
			Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			}},
		}
		pod, err := rc.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg, RuntimeHandler: criHandler})
		if err != nil {
			t.Fatalf("RunPodSandbox: %v", err)
		}
		podID := pod.PodSandboxId
		t.Cleanup(func() {
			ctx := context.Background()
			rc := connect()
			// Best effort: the daemon's Cleanup removes what is left.
			_, _ = rc.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID})
			_, _ = rc.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID})
		})
		// About 9 KB of numbered lines every 50 ms: far more than the pipe
		// and fifo buffers hold while containerd is away, yet bounded on disk.
		cc, err := rc.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId: podID,
			Config: &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: "writer"},
				Image:    &runtimeapi.ImageSpec{Image: criImage},
				Command:  []string{"sh", "-c", `i=0; while :; do seq $i $((i+1999)); i=$((i+2000)); sleep 0.05; done`},
				LogPath:  "writer.log",
			},
			SandboxConfig: podCfg,
		})
		if err != nil {
			t.Fatalf("CreateContainer: %v", err)
		}
		ctrID := cc.ContainerId
		if _, err := rc.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ctrID}); err != nil {
			t.Fatalf("StartContainer: %v", err)
		}
		logPath := filepath.Join(logDir, "writer.log")
		size := func() int64 {
			st, err := os.Stat(logPath)
			if err != nil {
				return 0
			}
			return st.Size()
		}
		eventually(t, 30*time.Second, "container log grows past 1 MB", func() error {
			if s := size(); s < 1<<20 {
				return fmt.Errorf("log is %d bytes", s)
			}
			return nil
		})
		st, err := rc.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctrID})
		if err != nil {
			t.Fatal(err)
		}
		if st.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Fatalf("writer is %v before the stop", st.Status.State)
		}

		if err := e.d.Stop(); err != nil {
			t.Fatal(err)
		}
		down := time.Now()
		time.Sleep(2 * time.Second)
		stalled := size()
		time.Sleep(3 * time.Second)
		if s := size(); s != stalled {
			t.Errorf("log grew from %d to %d bytes with containerd down: who is reading?", stalled, s)
		}
		up := time.Now()
		if err := e.d.Restart(); err != nil {
			t.Fatal(err)
		}
		rc = connect()
		// A restarted containerd reattaches to the container's output while
		// it recovers, before CRI serves requests ("server is not
		// initialized yet" from 1.7 meanwhile); the kubelet waits too.
		eventually(t, 60*time.Second, "CRI serves again after the restart", func() error {
			_, err := rc.Status(ctx, &runtimeapi.StatusRequest{})
			return err
		})
		eventually(t, 60*time.Second, "container writes again after containerd is back", func() error {
			if s := size(); s < stalled+1<<20 {
				return fmt.Errorf("log is %d bytes, %d when containerd stopped", s, stalled)
			}
			return nil
		})
		t.Logf("log %d bytes at the stop, %d after the restart", stalled, size())

		if _, err := rc.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: ctrID, Timeout: 2}); err != nil {
			t.Fatalf("StopContainer after the restart: %v", err)
		}
		// Right after a restart CRI's StopContainer can return before its
		// exit handler has recorded the exit (its Kill meets the task's
		// closed connection and takes the dead-shim path): the state
		// kubelet polls for must follow within moments.
		eventually(t, 30*time.Second, "writer EXITED after StopContainer", func() error {
			st, err := rc.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctrID})
			if err != nil {
				return err
			}
			if st.Status.State != runtimeapi.ContainerState_CONTAINER_EXITED {
				return fmt.Errorf("writer is %v", st.Status.State)
			}
			return nil
		})
		lines, lost, err := contiguousLog(logPath, down, up)
		if err != nil {
			t.Errorf("container output across the restart: %v", err)
		} else {
			report(t, fmt.Sprintf("cri-stdout-restart %s: containerd stopped 5s at %d bytes of output; writer resumed, %d lines in order, %d bytes dropped by the stopping containerd, stopped on request, nothing left",
				like.name(), stalled, lines, lost))
		}
		if _, err := rc.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
			t.Fatalf("StopPodSandbox: %v", err)
		}
		if _, err := rc.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
			t.Fatalf("RemovePodSandbox: %v", err)
		}
		eventually(t, 30*time.Second, "the pod's shim exits", func() error {
			ps, _ := harness.ProcessesMatching(shimName + " -namespace " + criNamespace + " -id " + podID)
			if len(ps) > 0 {
				return fmt.Errorf("shim still running: %+v", ps)
			}
			return nil
		})
		mounts, err := harness.MountsUnder(e.d.StateDir())
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range mounts {
			if strings.Contains(m, podID) || strings.Contains(m, ctrID) {
				t.Errorf("mount left behind: %s", m)
			}
		}
		for _, id := range []string{podID, ctrID} {
			if _, err := os.Stat(filepath.Join(e.stateRoot(), criNamespace, id)); !os.IsNotExist(err) {
				t.Errorf("%s state left behind for %s: %v", e.backend, id, err)
			}
		}
	})
}

// containerdReadBuffers bounds what containerd may hold of a container's
// output between reading it from the fifo and writing it to the log: its
// copy buffer (32 KiB) and CRI's line reader (4 KiB), with room to spare.
const containerdReadBuffers = 64 << 10

// contiguousLog checks that a CRI log file holds the container's output,
// the numbers 0, 1, 2, ... one per line, each once and in order: nothing the
// container wrote was lost or repeated while containerd was away. It returns
// the number of full lines and the bytes of output lost at the stop.
//
// The log is read as kubelet reads it: a partial line (tag P) is joined to
// what follows it. A stopping containerd writes the line it has half read
// as a partial one and the rest follows after its restart; the checker
// compares bytes, not lines, so that split is no gap.
//
// One gap is allowed, and only where containerd itself dropped data: a
// stopping containerd may exit with what it last read from the fifo still
// in its buffers, unwritten (seen with 1.7 on SIGTERM). That gap must open
// after a line containerd logged before it had exited (down), close at a
// line logged after it was started again (up), and be no larger than
// containerd's buffers. Output the shim or the pipes held while containerd
// was away must all arrive.
func contiguousLog(path string, down, up time.Time) (lines, lost int, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	// The output as a byte stream, and where each log line's text begins.
	type piece struct {
		off int
		at  time.Time
	}
	var out strings.Builder
	var pieces []piece
	for i, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		// <timestamp> <stream> <F|P> <text>
		f := strings.SplitN(line, " ", 4)
		if len(f) != 4 || f[1] != "stdout" || (f[2] != "F" && f[2] != "P") {
			return 0, 0, fmt.Errorf("line %d: unexpected %q", i+1, line)
		}
		at, err := time.Parse(time.RFC3339Nano, f[0])
		if err != nil {
			return 0, 0, fmt.Errorf("line %d: timestamp: %w", i+1, err)
		}
		pieces = append(pieces, piece{off: out.Len(), at: at})
		out.WriteString(f[3])
		if f[2] == "F" {
			out.WriteByte('\n')
			lines++
		}
	}
	got := out.String()
	if got == "" {
		return 0, 0, fmt.Errorf("%s is empty", path)
	}
	var want strings.Builder
	for n := 0; want.Len() < len(got)+containerdReadBuffers+16; n++ {
		want.WriteString(strconv.Itoa(n) + "\n")
	}
	exp := want.String()
	diff := 0
	for diff < len(got) && got[diff] == exp[diff] {
		diff++
	}
	if diff == len(got) {
		return lines, 0, nil
	}
	// containerd writes a log line's text at once, so a gap can only open
	// where a line begins: at the line holding the first difference (its
	// first bytes may match by chance: "28000" where "26801" was due).
	k := sort.Search(len(pieces), func(i int) bool { return pieces[i].off > diff }) - 1
	gap := pieces[k].off
	if k == 0 || pieces[k-1].at.After(down) || pieces[k].at.Before(up) {
		return 0, 0, fmt.Errorf("line %d (logged %s; containerd down %s, up %s): output differs at byte %d: got %q, want %q",
			k+1, pieces[k].at.Format(time.RFC3339Nano), down.Format(time.RFC3339Nano), up.Format(time.RFC3339Nano),
			gap, excerpt(got, gap), excerpt(exp, gap))
	}
	for skip := 1; skip <= containerdReadBuffers; skip++ {
		if strings.HasPrefix(exp[gap+skip:], got[gap:]) {
			return lines, skip, nil
		}
	}
	return 0, 0, fmt.Errorf("line %d: the output from there on is not the container's after a gap of at most %d bytes (containerd's buffers): %q",
		k+1, containerdReadBuffers, excerpt(got, gap))
}

// excerpt is up to 40 bytes of s from off, for an error message.
func excerpt(s string, off int) string {
	return s[off:min(len(s), off+40)]
}

// TestContiguousLog: the checker above accepts only a gap containerd's own
// stop explains.
func TestContiguousLog(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	down, up := t0.Add(time.Second), t0.Add(5*time.Second)
	line := func(at time.Time, n int) string {
		return fmt.Sprintf("%s stdout F %d\n", at.Format("2006-01-02T15:04:05.000000000Z07:00"), n)
	}
	before, after := t0.Add(500*time.Millisecond), t0.Add(6*time.Second)
	tagged := func(tag string) func(time.Time, string) string {
		return func(at time.Time, text string) string {
			return fmt.Sprintf("%s stdout %s %s\n", at.Format("2006-01-02T15:04:05.000000000Z07:00"), tag, text)
		}
	}
	full, partial := tagged("F"), tagged("P")
	// upTo is the output 0 to n-1 as full lines.
	upTo := func(at time.Time, n int) string {
		var b strings.Builder
		for i := range n {
			b.WriteString(line(at, i))
		}
		return b.String()
	}
	for _, tc := range []struct {
		name string
		log  string
		lost int // -1: rejected
	}{
		{"contiguous", line(before, 0) + line(before, 1) + line(after, 2), 0},
		{"gap at the stop", line(before, 0) + line(before, 1) + line(after, 5), 6},
		{"gap while up", line(before, 0) + line(before, 1) + line(before, 5), -1},
		{"gap after the restart", line(before, 0) + line(after, 1) + line(after, 5), -1},
		{"two gaps", line(before, 0) + line(after, 2) + line(after, 4), -1},
		{"repeat", line(before, 0) + line(before, 1) + line(after, 1) + line(after, 2) + line(after, 3), -1},
		{"gap at the start", line(after, 3), -1},
		{"gap larger than containerd buffers", line(before, 0) + line(after, 20000), -1},
		{"stderr", line(before, 0) + strings.Replace(line(before, 1), "stdout", "stderr", 1), -1},
		// 0 to 11, then 12, 13, ... with the "1" of "12" written as a partial line.
		{"partial line at the stop", upTo(before, 12) + partial(before, "1") + full(after, "2") + full(after, "13") + full(after, "14"), 0},
		{"partial line while up", upTo(before, 12) + partial(before, "1") + full(before, "2") + full(after, "13"), 0},
		{"partial line, then a gap", upTo(before, 12) + partial(before, "1") + full(after, "4") + full(after, "15"), 6},
		{"gap ending inside a line", upTo(before, 12) + full(after, "3") + full(after, "14") + full(after, "15"), 4},
		{"partial line at the end", upTo(before, 12) + partial(after, "1"), 0},
		{"partial line that is not the output", upTo(before, 12) + partial(before, "7") + full(after, "2"), -1},
		// 26801 to 27999 lost; the next line begins like the one due.
		{"gap at a line beginning like the one due", upTo(before, 26801) + full(after, "28000") + full(after, "28001"), 7194},
		{"repeat after a partial line", upTo(before, 12) + partial(before, "1") + full(after, "1") + full(after, "12") + full(after, "13"), -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "log")
			if err := os.WriteFile(path, []byte(tc.log), 0o644); err != nil {
				t.Fatal(err)
			}
			_, lost, err := contiguousLog(path, down, up)
			switch {
			case tc.lost < 0 && err == nil:
				t.Errorf("accepted, lost %d", lost)
			case tc.lost >= 0 && err != nil:
				t.Errorf("rejected: %v", err)
			case tc.lost >= 0 && lost != tc.lost:
				t.Errorf("lost %d, want %d", lost, tc.lost)
			}
		})
	}
}
