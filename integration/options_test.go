package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// stateUnder reports whether the runtime keeps state for id under root.
func stateUnder(root, id string) bool {
	_, err := os.Stat(filepath.Join(root, namespace, id, "state.json"))
	return err == nil
}

// TestRuntimeOptions: each way containerd passes options reaches the
// backend: containerd's runc options (as its client suite and runc-style
// CRI handlers send), runtimeoptions ConfigPath and ConfigBody (CRI, ctr
// --runtime-config-path), and nothing at all (the built-in defaults).
func TestRuntimeOptions(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		e.skipOn(t, "runsc", "these are runc options; the runsc backend's own are in TestRunscOptions")
		dir := t.TempDir()
		cfgFile := filepath.Join(dir, "shim.toml")
		pathRoot := filepath.Join(dir, "path-root")
		check(t, os.WriteFile(cfgFile, []byte(fmt.Sprintf("backend = \"runc\"\n[runc]\nroot = %q\n", pathRoot)), 0o644))
		bodyRoot := filepath.Join(dir, "body-root")
		runcRoot := filepath.Join(dir, "runc-root")
		cases := []struct {
			name string
			opts any
			root string
		}{
			{"nil options", nil, "/run/containerd/custom/runc"},
			{"runc options", &runcoptions.Options{BinaryName: "runc", Root: runcRoot}, runcRoot},
			{"ConfigPath", &runtimeoptions.Options{ConfigPath: cfgFile}, pathRoot},
			{"ConfigBody", &runtimeoptions.Options{ConfigBody: []byte(fmt.Sprintf("[runc]\nroot = %q\n", bodyRoot))}, bodyRoot},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				ctx := testContext(t)
				id := containerID(t, "")
				c := newContainer(t, e, id, tc.opts, oci.WithProcessArgs("sleep", "1000"))
				task, statusC := startTask(t, c, nil)
				if !stateUnder(tc.root, id) {
					t.Fatalf("no runc state for %s under %s", id, tc.root)
				}
				task.Kill(ctx, 9)
				waitExit(t, statusC, 30*time.Second)
				if _, err := task.Delete(ctx); err != nil {
					t.Fatal(err)
				}
				if stateUnder(tc.root, id) {
					t.Fatalf("runc state for %s left under %s", id, tc.root)
				}
			})
		}
	})
}

// TestCrun: crun drives containers through the same runc backend.
func TestCrun(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		e.skipOn(t, "runsc", "crun is a runc-backend binary")
		harness.RequireDep(t, "crun (scripts/deps.sh installs it)", harness.NeedExecutable("/usr/bin/crun"))
		id := containerID(t, "")
		c := newContainer(t, e, id, &runtimeoptions.Options{ConfigBody: []byte("[runc]\nbinary_name = \"crun\"\n")},
			oci.WithProcessArgs("sh", "-c", "echo via crun; exit 4"), withSpecVersion("1.0.2"))
		ctx := testContext(t)
		var out outputs
		if _, err := c.NewTask(ctx, out.creator()); err != nil {
			if strings.Contains(err.Error(), "hybrid mode not supported") {
				t.Skipf("this crun refuses cgroup v1 hybrid hosts: %v", err)
			}
			t.Fatal(err)
		}
		removeContainer(e, id)
		st, _ := runToExit(t, newContainer(t, e, id+"-2", &runtimeoptions.Options{ConfigBody: []byte("[runc]\nbinary_name = \"crun\"\n")},
			oci.WithProcessArgs("sh", "-c", "echo via crun; exit 4"), withSpecVersion("1.0.2")))
		if st != 4 {
			t.Fatalf("exit %d", st)
		}
	})
}

// TestRuntimeBinaryName: the runc backend runs whatever runc-compatible
// binary the configuration names (here a wrapper that records its calls).
func TestRuntimeBinaryName(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		e.skipOn(t, "runsc", "runc-backend binary_name; runsc's is covered by the matrix itself")
		dir := t.TempDir()
		calls := filepath.Join(dir, "calls")
		wrapper := filepath.Join(dir, "my-runc")
		check(t, os.WriteFile(wrapper, []byte(fmt.Sprintf("#!/bin/sh\necho \"$*\" >> %s\nexec runc \"$@\"\n", calls)), 0o755))
		id := containerID(t, "")
		c := newContainer(t, e, id, &runtimeoptions.Options{ConfigBody: []byte(fmt.Sprintf("[runc]\nbinary_name = %q\n", wrapper))},
			oci.WithProcessArgs("sh", "-c", "exit 6"))
		if st, _ := runToExit(t, c); st != 6 {
			t.Fatalf("exit %d", st)
		}
		data, _ := os.ReadFile(calls)
		for _, cmd := range []string{"create", "start", "delete"} {
			if !strings.Contains(string(data), " "+cmd+" ") {
				t.Errorf("wrapper never ran %q:\n%s", cmd, data)
			}
		}
	})
}

// TestCtrRuntimeConfigPath: ctr's --runtime-config-path, as a user points a
// container at a handler's TOML.
func TestCtrRuntimeConfigPath(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		e.skipOn(t, "runsc", "the same path for runsc is TestRunscConfigPath")
		dir := t.TempDir()
		cfg := filepath.Join(dir, "shim.toml")
		check(t, os.WriteFile(cfg, []byte("[runc]\nbinary_name = \"/nonexistent/runc\"\n"), 0o644))
		id := containerID(t, "")
		_, _, err := e.d.Ctr("-n", namespace, "run", "--rm", "--runtime", runtimeName, "--runtime-config-path", cfg, harness.BusyboxImage, id, "true")
		if err == nil || !strings.Contains(err.Error(), "/nonexistent/runc") {
			t.Fatalf("ctr run with a config naming a missing runc: %v", err)
		}
		check(t, os.WriteFile(cfg, []byte("[runc]\nbinary_name = \"runc\"\n"), 0o644))
		out, _, err := e.d.Ctr("-n", namespace, "run", "--rm", "--runtime", runtimeName, "--runtime-config-path", cfg, harness.BusyboxImage, id+"-ok", "echo", "configured")
		if err != nil || !strings.Contains(out, "configured") {
			t.Fatalf("ctr run: %v %q", err, out)
		}
	})
}

// TestDefaultConfigFromEnvironment: with no options, a config file named by
// the daemon's environment picks the settings (how ctr, nerdctl and
// containerd's client suite, which send none, can be pointed anywhere).
func TestDefaultConfigFromEnvironment(t *testing.T) {
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		like.skipOn(t, "runsc", "the runc root is a runc setting")
		dir := t.TempDir()
		root := filepath.Join(dir, "env-root")
		cfg := filepath.Join(dir, "default.toml")
		check(t, os.WriteFile(cfg, []byte(fmt.Sprintf("[runc]\nroot = %q\n", root)), 0o644))
		e := ownDaemon(t, like, func(c *harness.Config) {
			c.Env = append(c.Env, "CONTAINERD_SHIM_CUSTOM_CONFIG="+cfg)
		})
		id := containerID(t, "")
		c := newContainer(t, e, id, nil, oci.WithProcessArgs("sleep", "1000"))
		task, _ := startTask(t, c, nil)
		if !stateUnder(root, id) {
			t.Fatalf("no runc state under %s", root)
		}
		task.Kill(testContext(t), 9)
	})
}

// TestShimCgroupAndIOOwner: containerd's task options WithShimCgroup and
// WithUIDOwner/WithGIDOwner (runc options sent as task options) move the
// shim into the cgroup (a v1 memory cgroup, or a v2 cgroup on a unified
// host) and hand the stdio pipes to that owner.
func TestShimCgroupAndIOOwner(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := testContext(t)
		cgName := "/" + containerID(t, "shimcg")
		cgDir := filepath.Join(cgroupRoot, "memory", cgName)
		if unified() {
			cgDir = filepath.Join(cgroupRoot, cgName)
		}
		if err := os.Mkdir(cgDir, 0o755); err != nil {
			t.Fatalf("cannot create a %s (the suite runs as root): %v", cgroupMode(), err)
		}
		// A cgroup goes only once empty: the shim exits after the delete.
		t.Cleanup(func() {
			for i := 0; i < 100 && os.Remove(cgDir) != nil; i++ {
				time.Sleep(100 * time.Millisecond)
			}
		})
		id := containerID(t, "")
		c := newContainer(t, e, id, nil, oci.WithProcessArgs("sh", "-c", "stat -L -c %u:%g /proc/self/fd/1; sleep 1000"))
		var out outputs
		task, err := c.NewTask(ctx, out.creator(), client.WithShimCgroup(cgName), client.WithUIDOwner(1234), client.WithGIDOwner(5678))
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Start(ctx); err != nil {
			t.Fatal(err)
		}
		shims := shimsFor(id)
		if len(shims) != 1 {
			t.Fatalf("shims %+v", shims)
		}
		procs, _ := os.ReadFile(filepath.Join(cgDir, "cgroup.procs"))
		if !strings.Contains(string(procs), fmt.Sprint(shims[0].Pid)) {
			t.Fatalf("shim %d not in the %s %s (%q)", shims[0].Pid, cgroupMode(), cgName, procs)
		}
		// runc hands the pipe's uid to the process user (root here) and keeps
		// the group the shim set: the group shows the option arrived.
		// runsc hands the stdio to the container's process user, uid and
		// gid (root here), when it starts the sandbox: the group the shim set
		// does not survive on gVisor, whose containers cannot show it either.
		if e.backend == "runsc" {
			t.Log("I/O owner not observable on runsc (it gives the pipes to the process user); the shim cgroup is checked")
			task.Kill(ctx, 9)
			return
		}
		eventually(t, 30*time.Second, "stdout owner", func() error {
			if !strings.Contains(out.stdout.String(), ":5678") {
				return fmt.Errorf("stdout %q", out.stdout.String())
			}
			return nil
		})
		task.Kill(ctx, 9)
	})
}

// withSpecVersion sets the spec's ociVersion: Debian's crun 1.8 refuses the
// newer versions containerd writes ("unknown version specified").
func withSpecVersion(v string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Version = v
		return nil
	}
}

// TestRuncCLIExecSignals: on the runc CLI path (mode = "cli") an exec is
// signalled through the pidfd taken as it started; once it has exited,
// another signal for it is NotFound rather than a kill(2) of whatever
// process has its pid now.
func TestRuncCLIExecSignals(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		e.skipOn(t, "runsc", "the runc backend's CLI mode")
		ctx := testContext(t)
		id := containerID(t, "")
		c := newContainer(t, e, id, &runtimeoptions.Options{ConfigBody: []byte("[runc]\nmode = \"cli\"\n")}, oci.WithProcessArgs("sleep", "1000"))
		task, statusC := startTask(t, c, nil)
		pspec := specs.Process{Args: []string{"sleep", "1000"}, Cwd: "/", Env: []string{"PATH=/bin:/usr/bin"}}
		for i := range 3 {
			p, err := task.Exec(ctx, fmt.Sprint("e", i), &pspec, cio.NullIO)
			check(t, err)
			pc, err := p.Wait(ctx)
			check(t, err)
			check(t, p.Start(ctx))
			check(t, p.Kill(ctx, syscall.SIGTERM))
			if st := waitExit(t, pc, 30*time.Second); st.ExitCode() != 128+uint32(syscall.SIGTERM) {
				t.Fatalf("exec %d: exit %d after SIGTERM, want 143", i, st.ExitCode())
			}
			if err := p.Kill(ctx, syscall.SIGKILL); !errdefs.IsNotFound(err) {
				t.Fatalf("exec %d: a signal after its exit: %v, want NotFound", i, err)
			}
			_, err = p.Delete(ctx)
			check(t, err)
		}
		check(t, task.Kill(ctx, syscall.SIGKILL))
		waitExit(t, statusC, 30*time.Second)
		_, err := task.Delete(ctx)
		check(t, err)
	})
}
