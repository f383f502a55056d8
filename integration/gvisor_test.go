package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// TestRunsUnderTheBackend proves where the workload runs: gVisor's kernel
// announces itself in dmesg and uname; runc shows the host's kernel.
func TestRunsUnderTheBackend(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		id := containerID(t, "")
		c := newContainer(t, e, id, nil, oci.WithProcessArgs("sh", "-c", "uname -r; dmesg 2>/dev/null | head -1"))
		st, out := runToExit(t, c)
		if st != 0 {
			t.Fatalf("exit %d: %s", st, out.stderr.String())
		}
		host, err := harness.KernelRelease()
		check(t, err)
		got := out.stdout.String()
		switch e.backend {
		case "runsc":
			if strings.Contains(got, host) || !strings.Contains(got, "gVisor") {
				t.Fatalf("not gVisor: %q (host kernel %s)", got, host)
			}
		default:
			if !strings.HasPrefix(got, host) {
				t.Fatalf("not the host kernel: %q (host %s)", got, host)
			}
		}
		t.Logf("%s: %s", e.backend, strings.ReplaceAll(strings.TrimSpace(got), "\n", " | "))
	})
}

// TestPodSharesOneShimAndSandbox: containers carrying CRI's pod annotations
// share one shim process and, on gVisor, one sandbox (a runsc
// sub-container joins the pod's sandbox).
func TestPodSharesOneShimAndSandbox(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := testContext(t)
		podID := containerID(t, "pod")
		pod := newContainer(t, e, podID, nil, oci.WithProcessArgs("sleep", "1000"), oci.WithAnnotations(map[string]string{
			"io.kubernetes.cri.container-type": "sandbox",
			"io.kubernetes.cri.sandbox-id":     podID,
		}))
		podTask, _ := startTask(t, pod, nil)
		appID := containerID(t, "app")
		app := newContainer(t, e, appID, nil, oci.WithProcessArgs("sh", "-c", "echo from-app; sleep 1000"), oci.WithAnnotations(map[string]string{
			"io.kubernetes.cri.container-type": "container",
			"io.kubernetes.cri.sandbox-id":     podID,
		}))
		var out outputs
		appTask, appStatus := startTask(t, app, out.creator())
		if ps := shimsFor(podID); len(ps) != 1 {
			t.Fatalf("pod shims %d, want 1: %+v", len(ps), ps)
		}
		if n := len(shimsFor(appID)); n != 0 {
			t.Fatalf("the app container got a shim of its own")
		}
		eventually(t, 30*time.Second, "app output", func() error {
			if !strings.Contains(out.stdout.String(), "from-app") {
				return fmt.Errorf("stdout %q", out.stdout.String())
			}
			return nil
		})
		if e.backend == "runsc" {
			// One sandbox: the app reports the sandbox's pid, and one
			// runsc-sandbox process runs for the pod.
			if appTask.Pid() != podTask.Pid() {
				t.Fatalf("app pid %d, pod sandbox pid %d: not one sandbox", appTask.Pid(), podTask.Pid())
			}
			sandboxes, _ := harness.ProcessesMatching("runsc-sandbox")
			n := 0
			for _, p := range sandboxes {
				if strings.Contains(p.Cmdline, podID) {
					n++
				}
				if strings.Contains(p.Cmdline, " "+appID) {
					t.Fatalf("the app container got a sandbox of its own: %s", p.Cmdline)
				}
			}
			if n != 1 {
				t.Fatalf("%d sandboxes for the pod, want 1", n)
			}
		}
		// The app exits before the pod, with its own status.
		if err := appTask.Kill(ctx, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if st := waitExit(t, appStatus, 30*time.Second); st.ExitCode() != 137 {
			t.Fatalf("app exit %d", st.ExitCode())
		}
		if st, err := podTask.Status(ctx); err != nil || st.Status != "running" {
			t.Fatalf("pod after the app exited: %v %v", st, err)
		}
		appTask.Delete(ctx)
	})
}

// TestRunscSelection: the ways a container gets gVisor, and the errors for
// a bad runsc setting: containerd's runc options naming runsc, a handler's
// TOML with platform/network/flags, an invalid flag, a platform the binary
// lacks.
func TestRunscSelection(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		e.skipOn(t, "runc", "runs once, on the runsc daemons")
		cases := []struct {
			name    string
			opts    any
			script  string
			want    string // stdout substring; "" when an error is expected
			wantErr string
		}{
			{name: "runc options with BinaryName naming runsc", opts: &runcoptions.Options{BinaryName: runscBin}, script: "dmesg | head -1", want: "gVisor"},
			{name: "ptrace, no network", opts: body("backend = \"runsc\"\n[runsc]\nbinary_name = %q\nplatform = \"ptrace\"\nnetwork = \"none\"\n", runscBin),
				script: "dmesg | head -1; cat /proc/net/dev", want: "lo:"},
			{name: "extra flags", opts: body("backend = \"runsc\"\n[runsc]\nbinary_name = %q\nflags = { overlay2 = \"none\" }\n", runscBin), script: "echo flags-ok", want: "flags-ok"},
			{name: "invalid flag", opts: body("backend = \"runsc\"\n[runsc]\nbinary_name = %q\nflags = { no-such-flag = \"1\" }\n", runscBin), wantErr: "no-such-flag"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				id := containerID(t, "")
				c := newContainer(t, e, id, tc.opts, oci.WithProcessArgs("sh", "-c", tc.script))
				if tc.wantErr != "" {
					ctx := testContext(t)
					_, err := c.NewTask(ctx, cio.NullIO)
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Fatalf("want an error naming %q, got %v", tc.wantErr, err)
					}
					t.Logf("error: %v", err)
					assertNothingLeft(t, e, id)
					if _, err := os.Stat(shimSocket(e, id)); err == nil {
						t.Errorf("shim socket %s left", shimSocket(e, id))
					}
					return
				}
				st, out := runToExit(t, c)
				if strings.Contains(tc.name, "no network") && strings.Contains(out.stdout.String(), "eth0") {
					t.Fatalf("network = none, yet: %s", out.stdout.String())
				}
				if st != 0 || !strings.Contains(out.stdout.String(), tc.want) {
					t.Fatalf("exit %d stdout %q stderr %q", st, out.stdout.String(), out.stderr.String())
				}
			})
		}
	})
}

func body(format string, args ...any) *runtimeoptions.Options {
	return &runtimeoptions.Options{ConfigBody: []byte(fmt.Sprintf(format, args...))}
}

// TestRunscConfigPath: a user points ctr at the gVisor config from contrib.
func TestRunscConfigPath(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		e.skipOn(t, "runc", "runs once, on the runsc daemons")
		data, err := os.ReadFile(filepath.Join(rootDir, "contrib", "runsc.toml"))
		if err != nil {
			t.Fatal(err)
		}
		cfg := filepath.Join(t.TempDir(), "runsc.toml")
		// The contrib file names "runsc" on PATH; point it at the tested one.
		check(t, os.WriteFile(cfg, []byte(strings.Replace(string(data), `binary_name = "runsc"`, fmt.Sprintf("binary_name = %q", runscBin), 1)), 0o644))
		id := containerID(t, "")
		out, _, err := e.d.Ctr("-n", namespace, "run", "--rm", "--runtime", runtimeName, "--runtime-config-path", cfg,
			harness.BusyboxImage, id, "sh", "-c", "dmesg | head -1")
		if err != nil || !strings.Contains(out, "gVisor") {
			t.Fatalf("ctr run: %v %q", err, out)
		}
	})
}

// TestDebianRunsc: Debian 12's runsc package (2022) has no systrap
// platform: the default (systrap) falls back to ptrace with a warning.
func TestDebianRunsc(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		e.skipOn(t, "runc", "runs once, on the runsc daemons")
		const debian = "/usr/bin/runsc"
		harness.RequireDep(t, "Debian's runsc package (scripts/deps.sh installs it)", harness.NeedExecutable(debian))
		id := containerID(t, "")
		// This runsc cannot make a network namespace of its own (CRI hands it
		// one): network = "none" for a plain container.
		c := newContainer(t, e, id, body("backend = \"runsc\"\n[runsc]\nbinary_name = %q\nnetwork = \"none\"\n", debian),
			oci.WithProcessArgs("sh", "-c", "dmesg | head -1; exit 4"), withSpecVersion("1.0.2"))
		st, out := runToExit(t, c)
		if st != 4 || !strings.Contains(out.stdout.String(), "gVisor") {
			t.Fatalf("exit %d stdout %q stderr %q", st, out.stdout.String(), out.stderr.String())
		}
	})
}

// TestIDsThatArePrefixes: "x" and "x2" side by side (runsc looks containers
// up by id prefix; the shim keeps each group in a root of its own).
func TestIDsThatArePrefixes(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := testContext(t)
		id := containerID(t, "")
		var tasks []client.Task
		for _, cid := range []string{id, id + "2"} {
			c := newContainer(t, e, cid, nil, oci.WithProcessArgs("sleep", "1000"))
			task, _ := startTask(t, c, nil)
			tasks = append(tasks, task)
		}
		for i, task := range tasks {
			if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
				t.Fatalf("kill %d: %v", i, err)
			}
		}
	})
}

// TestMissingExecutable: a process whose executable is not in the rootfs
// fails at create on both backends, and leaves nothing behind.
func TestMissingExecutable(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		id := containerID(t, "")
		c := newContainer(t, e, id, nil, oci.WithProcessArgs("no-such-binary", "x"))
		_, err := c.NewTask(testContext(t), cio.NullIO)
		if err == nil || !strings.Contains(err.Error(), "no-such-binary") {
			t.Fatalf("create with a missing executable: %v", err)
		}
		t.Logf("error: %v", err)
		assertNothingLeft(t, e, id)
	})
}

// TestHostNetworkAndName: a container sharing the host's network and UTS
// namespaces (a CRI hostNetwork pod) sees the host's interfaces and name,
// on gVisor too.
func TestHostNetworkAndName(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		host, _ := os.Hostname()
		var iface string
		data, _ := os.ReadFile("/proc/net/dev")
		for _, l := range strings.Split(string(data), "\n")[2:] {
			if name, _, ok := strings.Cut(strings.TrimSpace(l), ":"); ok && name != "lo" {
				iface = name
				break
			}
		}
		id := containerID(t, "")
		c := newContainer(t, e, id, nil, oci.WithHostNamespace(specs.NetworkNamespace), oci.WithHostNamespace(specs.UTSNamespace),
			oci.WithProcessArgs("sh", "-c", "hostname; cat /proc/net/dev"))
		st, out := runToExit(t, c)
		got := out.stdout.String()
		if st != 0 || !strings.HasPrefix(got, host+"\n") || (iface != "" && !strings.Contains(got, iface+":")) {
			t.Fatalf("exit %d, want hostname %q and interface %q:\n%s", st, host, iface, got)
		}
	})
}

// podAnnotations make a container part of podID's pod as CRI's would: the
// pod's sandbox container, or one of its containers.
func podAnnotations(podID, kind string) oci.SpecOpts {
	return oci.WithAnnotations(map[string]string{
		"io.kubernetes.cri.container-type": kind,
		"io.kubernetes.cri.sandbox-id":     podID,
	})
}

// TestPodContainerChurnKeepsShimFds (issue 19, finding 2): a container of
// a pod that is created and deleted again and again (a crash loop) costs
// the pod's shim nothing that stays. On gVisor every container of the pod
// has the sandbox's cgroup; each one used to add an OOM watch (an eventfd
// on cgroup v1, an inotify instance on v2) that its delete never closed.
func TestPodContainerChurnKeepsShimFds(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := testContext(t)
		podID := containerID(t, "pod")
		pod := newContainer(t, e, podID, nil, oci.WithProcessArgs("sleep", "1000"), podAnnotations(podID, "sandbox"))
		podTask, _ := startTask(t, pod, nil)
		shims := shimsFor(podID)
		if len(shims) != 1 {
			t.Fatalf("pod shims %d, want 1", len(shims))
		}
		shim := shims[0].Pid
		crash := func(i int) {
			t.Helper()
			id := containerID(t, fmt.Sprintf("app%d", i))
			c := newContainer(t, e, id, nil, oci.WithProcessArgs("sh", "-c", "exit 3"), podAnnotations(podID, "container"))
			task, statusC := startTask(t, c, nil)
			if st := waitExit(t, statusC, 30*time.Second); st.ExitCode() != 3 {
				t.Fatalf("%s: exit %d, want 3", id, st.ExitCode())
			}
			if _, err := task.Delete(ctx); err != nil {
				t.Fatalf("delete task %s: %v", id, err)
			}
			removeContainer(e, id)
		}
		// The first container of the pod may set up what the shim keeps
		// for the pod's life.
		crash(0)
		fdsBefore, kindsBefore := fdCount(shim), fdTargets(shim)
		const restarts = 20
		for i := 1; i <= restarts; i++ {
			crash(i)
		}
		// containerd's connections close asynchronously.
		var fdsAfter int
		eventually(t, 30*time.Second, "shim descriptors back", func() error {
			if fdsAfter = fdCount(shim); fdsAfter > fdsBefore+3 {
				return fmt.Errorf("shim fds grew from %d to %d over %d restarts (%v)", fdsBefore, fdsAfter, restarts, fdDiff(kindsBefore, fdTargets(shim)))
			}
			return nil
		})
		t.Logf("%s: shim fds %d before, %d after %d restarts of a pod's container", e.name(), fdsBefore, fdsAfter, restarts)
		if st, err := podTask.Status(ctx); err != nil || st.Status != "running" {
			t.Fatalf("pod after the restarts: %v %v", st, err)
		}
	})
}

// TestPodOOM: an OOM kill in a pod is reported for the containers it
// killed, once each, right before their TaskExit. On runc the app's own
// cgroup counts it and the pod's sandbox container hears nothing. On gVisor
// the pod's containers share the sandbox's cgroup: when the host kills the
// sandbox every container dies of it and each is told; when it kills the
// app's stub process only the app dies and only the app is told (the rule
// in cgroup.OOMWatcher and the README).
func TestPodOOM(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := testContext(t)
		rec := harness.Record(t, e.client, namespace)
		podID := containerID(t, "pod")
		podOpts := []oci.SpecOpts{oci.WithProcessArgs("sleep", "1000"), podAnnotations(podID, "sandbox")}
		appOpts := []oci.SpecOpts{oci.WithProcessArgs("sh", "-c", "x=a; while :; do x=$x$x; done"), podAnnotations(podID, "container")}
		if e.backend == "runsc" {
			// The sandbox's cgroup is made from the pod container's spec, and
			// gVisor itself needs memory under the limit.
			podOpts = append(podOpts, oci.WithMemoryLimit(128<<20))
		} else {
			appOpts = append(appOpts, oci.WithMemoryLimit(16<<20))
		}
		pod := newContainer(t, e, podID, nil, podOpts...)
		podTask, podStatus := startTask(t, pod, nil)
		appID := containerID(t, "app")
		app := newContainer(t, e, appID, nil, appOpts...)
		appTask, appStatus := startTask(t, app, nil)
		if st := waitExit(t, appStatus, 60*time.Second); st.ExitCode() != 137 {
			t.Fatalf("app exit %d, want 137", st.ExitCode())
		}
		killed := []string{appID}
		if e.backend == "runsc" {
			// The kernel kills the sandbox (the pod dies with the app) or
			// the app's stub process, which gVisor ends the app for
			// (google/gvisor#11590), the pod living on: which one is the
			// kernel's choice, by the memory each has touched.
			select {
			case st := <-podStatus:
				if st.ExitCode() != 137 {
					t.Fatalf("pod exit %d after its sandbox's OOM kill, want 137", st.ExitCode())
				}
				killed = append(killed, podID)
				t.Logf("%s: the OOM kill took the sandbox", e.name())
			case <-time.After(scaled(2 * time.Second)):
				if st, err := podTask.Status(ctx); err != nil || st.Status != "running" {
					t.Fatalf("pod after the app's OOM kill: %v %v", st, err)
				}
				t.Logf("%s: the OOM kill took the app's stub process; the sandbox lives on", e.name())
			}
		} else if st, err := podTask.Status(ctx); err != nil || st.Status != "running" {
			t.Fatalf("pod after the app's OOM kill: %v %v", st, err)
		}
		if _, err := appTask.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := rec.WaitFor(harness.Match(harness.TopicTaskDelete, appID), scaled(30*time.Second)); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{podID, appID} {
			topics := strings.Join(rec.Topics(id), " ")
			want := 0
			if slices.Contains(killed, id) {
				want = 1
				if !strings.Contains(topics, harness.TopicTaskOOM+" "+harness.TopicTaskExit) {
					t.Errorf("%s: want TaskOOM right before TaskExit, got %s", id, topics)
				}
			}
			if n := strings.Count(topics, harness.TopicTaskOOM); n != want {
				t.Errorf("%s: %d TaskOOM, want %d: %s", id, n, want, topics)
			}
		}
	})
}

// TestPodContainerLimitUnenforcedWarns: gVisor runs a pod's containers in
// the sandbox's cgroup, so a container's own memory limit bounds nothing
// when the Pod has no limit (a sibling has none, so kubelet sets none).
// The shim says so in containerd's log at the container's create instead
// of dropping the limit silently; with the Pod's limit in place it says
// nothing.
func TestPodContainerLimitUnenforcedWarns(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		e.skipOn(t, "runc", "runc enforces every container's own limit")
		const warning = "the container's memory limit is not enforced"
		for _, podLimit := range []int64{0, 256 << 20} {
			podID := containerID(t, fmt.Sprint("pod", podLimit>>20))
			podOpts := []oci.SpecOpts{oci.WithProcessArgs("sleep", "1000"), podAnnotations(podID, "sandbox")}
			if podLimit > 0 {
				podOpts = append(podOpts, oci.WithMemoryLimit(uint64(podLimit)))
			}
			startTask(t, newContainer(t, e, podID, nil, podOpts...), nil)
			appID := containerID(t, fmt.Sprint("app", podLimit>>20))
			startTask(t, newContainer(t, e, appID, nil, oci.WithProcessArgs("sleep", "1000"), oci.WithMemoryLimit(64<<20), podAnnotations(podID, "container")), nil)
			data, err := os.ReadFile(e.d.LogPath())
			check(t, err)
			warned := false
			for _, l := range strings.Split(string(data), "\n") {
				if strings.Contains(l, warning) && strings.Contains(l, appID) {
					warned = true
				}
			}
			if want := podLimit == 0; warned != want {
				t.Errorf("pod limit %d MiB: warned %v, want %v", podLimit>>20, warned, want)
			}
		}
	})
}
