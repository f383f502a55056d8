package runc

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/reaper"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// runningContainer creates and starts a container running sleep, with a
// memory limit, and deletes it at the end of the test.
func runningContainer(t *testing.T, id string) (*libBackend, *libcontainer.Container) {
	t.Helper()
	busybox := needContainers(t)
	b, spec := testBundle(t, busybox, "sleep", "100")
	spec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: ptr[int64](256 << 20)}}
	g := reaper.New()
	r := startReaper(g)
	t.Cleanup(r.close)
	be := newTestBackend(t, b, spec, g)
	ctx := context.Background()
	if _, err := be.Create(ctx, &runtime.CreateConfig{ID: id, Bundle: b}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := be.Delete(context.Background(), id, true); err != nil {
			t.Errorf("delete: %v", err)
		}
	})
	if err := be.Start(ctx, id, nil); err != nil {
		t.Fatal(err)
	}
	c, err := be.get(id)
	if err != nil {
		t.Fatal(err)
	}
	return be, c
}

// savedResources is the cgroup configuration in the container's state.json
// (the freezer state aside: pausing changes it).
func savedResources(t *testing.T, be *libBackend, id string) cgroups.Resources {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(be.root, id, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st libcontainer.State
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	r := *st.Config.Cgroups.Resources
	r.Freezer = ""
	return r
}

// cgroupValue reads a resource file of the container's cgroup: v1 is the
// file under the subsystem's hierarchy, v2 the unified one's.
func cgroupValue(t *testing.T, c *libcontainer.Container, subsystem, v1, v2 string) string {
	t.Helper()
	st, err := c.State()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(st.CgroupPaths[subsystem], v1)
	if cgroups.IsCgroup2UnifiedMode() {
		path = filepath.Join(st.CgroupPaths[""], v2)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// A refused update (a valid memory limit with a CFS period the kernel
// rejects: memory is written first, cpu fails) leaves the container as it
// was: its configuration, its state.json (also once the next update saved
// it again) and the kernel's cgroup files.
func TestLibcontainerRefusedUpdateChangesNothing(t *testing.T) {
	be, c := runningContainer(t, "refused")
	ctx := context.Background()
	before := *c.Config().Cgroups.Resources
	beforeSaved := savedResources(t, be, "refused")
	beforeLimit := cgroupValue(t, c, "memory", "memory.limit_in_bytes", "memory.max")
	if beforeLimit != "268435456" {
		t.Fatalf("memory limit before the update: %s, want the spec's 268435456", beforeLimit)
	}

	err := be.Update(ctx, "refused", &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: ptr[int64](128 << 20)},
		CPU:    &specs.LinuxCPU{Period: ptr[uint64](500)}, // below the kernel's 1 ms minimum
	})
	if err == nil {
		t.Fatal("the kernel accepted a 500 us CFS period: this test cannot refuse an update")
	}
	t.Logf("refused: %v", err)

	if now := cgroupValue(t, c, "memory", "memory.limit_in_bytes", "memory.max"); now != beforeLimit {
		t.Errorf("memory limit in the cgroup after a refused update: %s, was %s", now, beforeLimit)
	}
	if after := *c.Config().Cgroups.Resources; !reflect.DeepEqual(after, before) {
		t.Errorf("live config after a refused update:\n got  memory %d cpu period %d\n want memory %d cpu period %d",
			after.Memory, after.CpuPeriod, before.Memory, before.CpuPeriod)
	}
	if after := savedResources(t, be, "refused"); !reflect.DeepEqual(after, beforeSaved) {
		t.Errorf("state.json after a refused update: memory %d cpu period %d, want memory %d cpu period %d",
			after.Memory, after.CpuPeriod, beforeSaved.Memory, beforeSaved.CpuPeriod)
	}
	// The next accepted update saves the state from the live config: it
	// must not carry the refused limit along.
	if err := be.Update(ctx, "refused", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: ptr[int64](100)}}); err != nil {
		t.Fatal(err)
	}
	if after := savedResources(t, be, "refused"); after.Memory != beforeSaved.Memory {
		t.Errorf("state.json after the next update: memory %d, want %d", after.Memory, beforeSaved.Memory)
	}
	if now := cgroupValue(t, c, "memory", "memory.limit_in_bytes", "memory.max"); now != beforeLimit {
		t.Errorf("memory limit in the cgroup after the next update: %s, was %s", now, beforeLimit)
	}
}

// An update skips the device rules (runc update's SkipDevices: rules a
// device plugin added stay), and only that update: libcontainer refuses to
// start a process in a container whose config has it set, so an exec
// after an update must still work.
func TestLibcontainerUpdateKeepsDevicesAndExec(t *testing.T) {
	be, c := runningContainer(t, "devices")
	ctx := context.Background()
	// A rule added behind libcontainer's back, as a GPU plugin does (v1;
	// v2's device rules are a BPF program, not a file).
	const extra = "b 7:0 rwm"
	var devices string
	if !cgroups.IsCgroup2UnifiedMode() {
		st, err := c.State()
		if err != nil {
			t.Fatal(err)
		}
		devices = st.CgroupPaths["devices"]
		if err := os.WriteFile(filepath.Join(devices, "devices.allow"), []byte(extra), 0); err != nil {
			t.Fatal(err)
		}
	}

	if err := be.Update(ctx, "devices", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: ptr[int64](128 << 20)}}); err != nil {
		t.Fatal(err)
	}
	if got := cgroupValue(t, c, "memory", "memory.limit_in_bytes", "memory.max"); got != "134217728" {
		t.Fatalf("memory limit after the update: %s, want 134217728", got)
	}
	if c.Config().Cgroups.SkipDevices {
		t.Error("SkipDevices left set in the container's config after an update")
	}
	checkRule := func(when string) {
		t.Helper()
		if devices == "" {
			return
		}
		data, err := os.ReadFile(filepath.Join(devices, "devices.list"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), extra) {
			t.Errorf("device rule %q gone after %s; devices.list:\n%s", extra, when, data)
		}
	}
	checkRule("an update")
	// Set rolls a refused update back from the live config: the rollback
	// must leave the device rules alone too.
	if err := be.Update(ctx, "devices", &specs.LinuxResources{CPU: &specs.LinuxCPU{Period: ptr[uint64](500)}}); err == nil {
		t.Fatal("the kernel accepted a 500 us CFS period: this test cannot refuse an update")
	}
	checkRule("a refused update")
	if c.Config().Cgroups.SkipDevices {
		t.Error("SkipDevices left set in the container's config after a refused update")
	}
	rd, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	_, err = be.Exec(ctx, "devices", &runtime.ExecConfig{ID: "e", Spec: &specs.Process{Args: []string{"echo", "ok"}, Cwd: "/", Env: []string{"PATH=/bin"}}, IO: &runtime.IO{Stdout: wr, Stderr: wr}})
	wr.Close()
	if err != nil {
		t.Fatalf("exec after an update: %v", err)
	}
	out := make([]byte, 64)
	n, _ := rd.Read(out)
	if got := string(out[:n]); got != "ok\n" {
		t.Fatalf("exec output %q", got)
	}
}

// Updates racing execs: each exec starts with a config that does not skip
// devices, and (under -race) Update's setting and clearing of the flag is
// ordered against libcontainer's check of it.
func TestLibcontainerUpdatesRacingExecs(t *testing.T) {
	be, _ := runningContainer(t, "racing")
	ctx := context.Background()
	const n = 10
	errs := make(chan error, 2*n)
	go func() {
		for i := range n {
			limit := int64(128+i) << 20
			errs <- be.Update(ctx, "racing", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}})
		}
	}()
	go func() {
		for i := range n {
			_, err := be.Exec(ctx, "racing", &runtime.ExecConfig{ID: fmt.Sprint("e", i), Spec: &specs.Process{Args: []string{"true"}, Cwd: "/", Env: []string{"PATH=/bin"}}})
			errs <- err
		}
	}()
	for range 2 * n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// Pause and Resume racing execs (make soak's pause/resume and exec
// workers on one task): an exec either starts or is refused because the
// container is paused, and neither side ever hangs. A freeze that caught
// an exec's runc init half way left it frozen while libcontainer waited
// for it holding the container's lock: no Resume could thaw it again.
func TestLibcontainerPauseRacingExecs(t *testing.T) {
	be, _ := runningContainer(t, "pausing")
	ctx := context.Background()
	const n, execers = 150, 3
	done := make(chan error, (1+execers)*n)
	go func() {
		for range n {
			err := be.Pause(ctx, "pausing")
			if err == nil {
				err = be.Resume(ctx, "pausing")
			}
			done <- err
		}
	}()
	for w := range execers {
		go func() {
			for i := range n {
				_, err := be.Exec(ctx, "pausing", &runtime.ExecConfig{ID: fmt.Sprint("p", w, "-", i), Spec: &specs.Process{Args: []string{"true"}, Cwd: "/", Env: []string{"PATH=/bin"}}})
				if errdefs.IsFailedPrecondition(err) {
					err = nil // paused: refused, rightly
				}
				done <- err
			}
		}()
	}
	timeout := time.After(2 * time.Minute)
	for i := range (1 + execers) * n {
		select {
		case err := <-done:
			if err != nil {
				t.Error(err)
			}
		case <-timeout:
			t.Fatalf("after %d of %d pauses and execs nothing more in 2 minutes: a pause and an exec hang on each other", i, (1+execers)*n)
		}
	}
}

// reapOnTrack is the shim's reaper with the worst timing a tracked exec
// can meet: Track waits for the process to exit and reaps it there and
// then, as a SIGCHLD arriving at once would.
type reapOnTrack struct{ *reaper.Reaper }

func (g reapOnTrack) Track(pid int) {
	g.Reaper.Track(pid)
	for range 200 {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(st), ") Z ") {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	_ = g.Reap()
}

// Execs that exit at once, reaped as soon as the backend lets the reaper
// have them: each exec's pidfd must be open by then. Before, the exec was
// tracked (reapable while the gate is held) before its pidfd was opened:
// the exec failed with "no such process" (CI hit it in
// TestLibcontainerUpdatesRacingExecs), or the pidfd could have been that
// of another process that took the pid.
func TestLibcontainerInstantExecs(t *testing.T) {
	busybox := needContainers(t)
	b, spec := testBundle(t, busybox, "sleep", "100")
	g := reaper.New()
	ec := g.Subscribe()
	defer g.Unsubscribe(ec)
	go func() {
		for range ec {
		}
	}()
	be := newTestBackend(t, b, spec, reapOnTrack{g})
	ctx := context.Background()
	if _, err := be.Create(ctx, &runtime.CreateConfig{ID: "instant", Bundle: b}); err != nil {
		t.Fatal(err)
	}
	defer be.Delete(context.Background(), "instant", true) //nolint:errcheck // cleanup
	if err := be.Start(ctx, "instant", nil); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := be.Exec(ctx, "instant", &runtime.ExecConfig{ID: fmt.Sprint("e", i), Spec: &specs.Process{Args: []string{"true"}, Cwd: "/", Env: []string{"PATH=/bin"}}}); err != nil {
			t.Fatalf("exec %d: %v", i, err)
		}
	}
}
