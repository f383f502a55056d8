package integration

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// TestChurn runs many lifecycles in parallel and then counts what leaked:
// shim processes, mounts, runtime state, zombies; and checks every
// lifecycle's events. CHURN_LIFECYCLES (default 100; `make stress` 1000).
func TestChurn(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		n := envInt("CHURN_LIFECYCLES", 100)
		if e.backend == "runsc" {
			n = envInt("CHURN_LIFECYCLES_GVISOR", n/4)
		}
		const parallel = 10
		rec := harness.Record(t, e.client, namespace)
		ids := make(chan string, n)
		var all []string
		for i := 0; i < n; i++ {
			id := containerID(t, strconv.Itoa(i))
			ids <- id
			all = append(all, id)
		}
		close(ids)
		ctx := testContext(t)
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for w := 0; w < parallel; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for id := range ids {
					c, err := e.client.NewContainer(ctx, id, e.busybox(id, nil)...)
					if err != nil {
						errs <- err
						continue
					}
					task, err := c.NewTask(ctx, cio.NullIO)
					if err == nil {
						var ch <-chan client.ExitStatus
						if ch, err = task.Wait(ctx); err == nil {
							if err = task.Start(ctx); err == nil {
								<-ch
								_, err = task.Delete(ctx)
							}
						}
					}
					if err != nil {
						errs <- fmt.Errorf("%s: %w", id, err)
					}
					c.Delete(ctx, client.WithSnapshotCleanup)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		took := time.Since(start)
		// Each task's TaskDelete is its last event: once every one came,
		// nothing of theirs is still on its way.
		deadline := time.Now().Add(scaled(30 * time.Second))
		for _, id := range all {
			if _, err := rec.WaitFor(harness.Match(harness.TopicTaskDelete, id), time.Until(deadline)); err != nil {
				t.Logf("%s: delete event: %v", id, err) // the check below says what is missing
				break
			}
		}
		want := strings.Join([]string{harness.TopicTaskCreate, harness.TopicTaskStart, harness.TopicTaskExit, harness.TopicTaskDelete}, " ")
		complete := 0
		for _, id := range all {
			if got := strings.Join(rec.Topics(id), " "); got == want {
				complete++
			} else {
				t.Logf("%s: events %q, want %q", id, got, want)
			}
		}
		// Leaks, by kind.
		var shims, states int
		eventually(t, 15*time.Second, "shims gone", func() error {
			shims = 0
			for _, id := range all {
				shims += len(shimsFor(id))
			}
			if shims > 0 {
				return fmt.Errorf("%d shims left", shims)
			}
			return nil
		})
		for _, id := range all {
			if _, err := os.Stat(filepath.Join(e.stateRoot(), namespace, id)); err == nil {
				states++
			}
		}
		mounts, _ := harness.MountsUnder(e.d.StateDir())
		zombies, _ := harness.ZombieCount(e.d.Pid())
		line := fmt.Sprintf("churn %s: %d lifecycles at parallelism %d in %.1fs (%.1f/s); events complete %d/%d; leaked shims %d, mounts %d, runtime state dirs %d, containerd zombies %d",
			e.name(), n, parallel, took.Seconds(), float64(n)/took.Seconds(), complete, n, shims, len(mounts), states, zombies)
		t.Log(line)
		report(t, line)
		if complete != n || shims+len(mounts)+states+zombies > 0 {
			t.Fatal(line)
		}
	})
}

// TestExecStorm starts many execs at once in one task; every exit code must
// come back right, and the grouped shim must not leak descriptors.
func TestExecStorm(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		n := envInt("EXEC_STORM", 50)
		if e.backend == "runsc" {
			n = envInt("EXEC_STORM_GVISOR", n/2)
		}
		ctx := testContext(t)
		id := containerID(t, "")
		c := newContainer(t, e, id, nil, oci.WithProcessArgs("sleep", "1000"))
		task, _ := startTask(t, c, nil)
		shim := shimsFor(id)[0]
		fdsBefore := fdCount(shim.Pid)
		spec, _ := c.Spec(ctx)
		var wg sync.WaitGroup
		wrong := make(chan string, n)
		start := time.Now()
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				ps := *spec.Process
				ps.Args = []string{"sh", "-c", fmt.Sprintf("exit %d", i%256)}
				var out outputs
				p, err := task.Exec(ctx, fmt.Sprintf("storm-%d", i), &ps, out.creator())
				if err != nil {
					wrong <- err.Error()
					return
				}
				ch, _ := p.Wait(ctx)
				if err := p.Start(ctx); err != nil {
					wrong <- err.Error()
					return
				}
				st := <-ch
				if st.ExitCode() != uint32(i%256) {
					wrong <- fmt.Sprintf("exec %d: exit %d", i, st.ExitCode())
				}
				p.Delete(ctx)
			}(i)
		}
		wg.Wait()
		close(wrong)
		bad := 0
		for w := range wrong {
			bad++
			t.Error(w)
		}
		took := time.Since(start)
		// Exec stdio and containerd's connections close asynchronously.
		var fdsAfter int
		eventually(t, 30*time.Second, "shim descriptors back", func() error {
			if fdsAfter = fdCount(shim.Pid); fdsAfter > fdsBefore+3 {
				return fmt.Errorf("shim fds grew from %d to %d", fdsBefore, fdsAfter)
			}
			return nil
		})
		line := fmt.Sprintf("exec-storm %s: %d concurrent execs in %.1fs, %d wrong; shim fds %d before, %d after", e.name(), n, took.Seconds(), bad, fdsBefore, fdsAfter)
		t.Log(line)
		report(t, line)
		task.Kill(ctx, syscall.SIGKILL)
	})
}

func fdCount(pid int) int {
	entries, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(entries)
}

// fdTargets says what a process's descriptors point at, so a failed
// descriptor check names what stayed open.
func fdTargets(pid int) map[string]int {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, _ := os.ReadDir(dir)
	kinds := map[string]int{}
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if i := strings.Index(target, ":["); i > 0 && !strings.HasPrefix(target, "anon_inode") {
			target = target[:i] // socket:[123] -> socket
		}
		kinds[target]++
	}
	return kinds
}

// fdDiff lists the descriptor kinds whose count changed, as kind:+n.
func fdDiff(before, after map[string]int) []string {
	var out []string
	for k, n := range after {
		if n != before[k] {
			out = append(out, fmt.Sprintf("%s:%+d", k, n-before[k]))
		}
	}
	for k, n := range before {
		if _, ok := after[k]; !ok {
			out = append(out, fmt.Sprintf("%s:%+d", k, -n))
		}
	}
	sort.Strings(out)
	return out
}

// TestInitKilledFromOutside: a container's init killed by someone else
// (the host, the OOM killer) is reported like any exit. On gVisor the
// host process is the sandbox.
func TestInitKilledFromOutside(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := testContext(t)
		id := containerID(t, "")
		c := newContainer(t, e, id, nil, oci.WithProcessArgs("sleep", "1000"))
		task, statusC := startTask(t, c, nil)
		if err := syscall.Kill(int(task.Pid()), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if st := waitExit(t, statusC, 30*time.Second); st.ExitCode() != 137 {
			t.Fatalf("exit %d", st.ExitCode())
		}
		if _, err := task.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		assertNothingLeft(t, e, id)
	})
}

// TestRuntimeKilledMidCreate: the runtime dies during create (a wrapper
// that kills itself); the create fails and nothing is left behind.
func TestRuntimeKilledMidCreate(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		e.skipOn(t, "runsc", "the wrapper is a runc binary_name")
		dir := t.TempDir()
		wrapper := filepath.Join(dir, "dying-runc")
		// runc create starts the container's init, then the wrapper dies
		// before runc returns.
		check(t, os.WriteFile(wrapper, []byte(`#!/bin/sh
case " $* " in *" create "*) runc "$@" & sleep 0.05; kill -9 $! $$ ;; esac
exec runc "$@"
`), 0o755))
		id := containerID(t, "")
		c := newContainer(t, e, id, &runtimeoptions.Options{ConfigBody: []byte(fmt.Sprintf("[runc]\nbinary_name = %q\n", wrapper))},
			oci.WithProcessArgs("sleep", "1000"))
		_, err := c.NewTask(testContext(t), cio.NullIO)
		if err == nil {
			t.Fatal("create succeeded with the runtime killed")
		}
		t.Logf("error: %v", err)
		assertNothingLeft(t, e, id)
		eventually(t, 30*time.Second, "no container process left", func() error {
			ps, _ := harness.ProcessesMatching("sleep 1000")
			for _, p := range ps {
				cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.Pid))
				if strings.Contains(string(cg), id) {
					return fmt.Errorf("pid %d of %s still running", p.Pid, id)
				}
			}
			return nil
		})
	})
}

// TestStateOnFullFilesystem: with containerd's state directory (where the
// bundles and the shim's own files live) on a nearly full filesystem, a
// create that cannot write fails cleanly, leaves nothing behind, and
// creates work again once there is room.
func TestStateOnFullFilesystem(t *testing.T) {
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		dir, err := os.MkdirTemp("/tmp", "fullfs-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=4m"); err != nil {
			harness.RequireDep(t, "mounting a tmpfs (CAP_SYS_ADMIN)", err)
		}
		defer syscall.Unmount(dir, syscall.MNT_DETACH)
		e := ownDaemon(t, like, func(c *harness.Config) { c.StateDir = filepath.Join(dir, "state") })
		filler := filepath.Join(dir, "filler")
		fill := func() {
			// Leave a few KiB: enough for containerd's bundle, not for much more.
			var st syscall.Statfs_t
			check(t, syscall.Statfs(dir, &st))
			free := int64(st.Bavail) * st.Bsize
			// ENOSPC is fine: the point is a full filesystem.
			if err := os.WriteFile(filler, make([]byte, max(free-16<<10, 0)), 0o644); err != nil && !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
		}
		fill()
		var failures []string
		for i := 0; i < 5; i++ {
			id := containerID(t, strconv.Itoa(i))
			c := newContainer(t, e, id, nil, oci.WithProcessArgs("true"))
			if _, err := c.NewTask(testContext(t), cio.NullIO); err != nil {
				if !strings.Contains(err.Error(), "full") && !strings.Contains(err.Error(), "no space") {
					t.Errorf("the error does not say the filesystem is full: %v", err)
				}
				failures = append(failures, err.Error())
				assertNothingLeft(t, e, id)
				continue
			}
			removeContainer(e, id)
		}
		if len(failures) == 0 {
			t.Fatal("no create failed on a full filesystem")
		}
		t.Logf("%d of 5 creates failed on the full filesystem, e.g.: %s", len(failures), failures[0])
		os.Remove(filler)
		id := containerID(t, "after")
		if st, _ := runToExit(t, newContainer(t, e, id, nil, oci.WithProcessArgs("sh", "-c", "exit 2"))); st != 2 {
			t.Fatalf("after freeing space: exit %d", st)
		}
	})
}

// TestGroupedShimChurn: a long-lived grouped shim (a pod's) that sees many
// containers come and go keeps its descriptors and goroutines flat.
func TestGroupedShimChurn(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		n := envInt("GROUP_CHURN", 30)
		group := containerID(t, "group")
		ann := oci.WithAnnotations(map[string]string{"io.containerd.custom.v2.group": group})
		keeper := containerID(t, "keeper")
		startTask(t, newContainer(t, e, keeper, nil, oci.WithProcessArgs("sleep", "1000"), ann), nil)
		shim := shimsFor(keeper)[0]
		// One warm-up lifecycle, so lazily created things exist already.
		runToExit(t, newContainer(t, e, containerID(t, "warm"), nil, oci.WithProcessArgs("true"), ann))
		before, beforeKinds := fdCount(shim.Pid), fdTargets(shim.Pid)
		for i := 0; i < n; i++ {
			c := newContainer(t, e, containerID(t, strconv.Itoa(i)), nil, oci.WithProcessArgs("sh", "-c", "echo out; echo err >&2"), ann)
			runToExit(t, c)
			removeContainer(e, c.ID())
		}
		if n := len(shimsFor(keeper)); n != 1 {
			t.Fatalf("the group's shim went away")
		}
		// containerd closes its per-task connections to the shim (1.7 keeps
		// one per task) asynchronously: let them go before counting.
		var after int
		eventually(t, 30*time.Second, "descriptors back to where they were", func() error {
			if after = fdCount(shim.Pid); after > before+1 {
				return fmt.Errorf("fds %d before, %d after; changed: %v", before, after, fdDiff(beforeKinds, fdTargets(shim.Pid)))
			}
			return nil
		})
		line := fmt.Sprintf("grouped-shim %s: %d lifecycles through one shim, fds %d before, %d after %v", e.name(), n, before, after, fdDiff(beforeKinds, fdTargets(shim.Pid)))
		t.Log(line)
		report(t, line)
	})
}
