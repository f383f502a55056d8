package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	cgroup1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	cgroup2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	eventtypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// TestExitCodes: the exit status of the init reaches Wait, the TaskExit
// event and Delete, for normal exits, error exits and signals.
func TestExitCodes(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		rec := harness.Record(t, e.client, namespace)
		for _, tc := range []struct {
			name   string
			script string
			want   uint32
		}{
			{"zero", "exit 0", 0},
			{"error", "echo out; echo err >&2; exit 3", 3},
			{"max", "exit 255", 255},
		} {
			t.Run(tc.name, func(t *testing.T) {
				id := containerID(t, "")
				c := newContainer(t, e, id, nil, oci.WithProcessArgs("sh", "-c", tc.script))
				got, out := runToExit(t, c)
				if got != tc.want {
					t.Fatalf("exit status %d, want %d", got, tc.want)
				}
				if tc.name == "error" && (out.stdout.String() != "out\n" || out.stderr.String() != "err\n") {
					t.Fatalf("stdout %q stderr %q", out.stdout.String(), out.stderr.String())
				}
				ev, err := rec.WaitFor(harness.Match(harness.TopicTaskExit, id), scaled(30*time.Second))
				if err != nil {
					t.Fatal(err)
				}
				if s := ev.Payload.(*eventtypes.TaskExit).ExitStatus; s != tc.want {
					t.Fatalf("TaskExit status %d, want %d", s, tc.want)
				}
				if _, err := rec.WaitFor(harness.Match(harness.TopicTaskDelete, id), scaled(30*time.Second)); err != nil {
					t.Fatal(err)
				}
				want := []string{harness.TopicTaskCreate, harness.TopicTaskStart, harness.TopicTaskExit, harness.TopicTaskDelete}
				if got := rec.Topics(id); strings.Join(got, " ") != strings.Join(want, " ") {
					t.Fatalf("events %v, want %v", got, want)
				}
			})
		}
	})
}

// TestSignals: Kill delivers the signal the process handles; Kill with all
// reaches every process; killing an exited task is NotFound.
func TestSignals(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := testContext(t)
		id := containerID(t, "")
		c := newContainer(t, e, id, nil, oci.WithProcessArgs("sh", "-c", "trap 'exit 42' TERM; echo trapped; while :; do sleep 0.1; done"))
		var out outputs
		task, statusC := startTask(t, c, out.creator())
		waitOutput(t, &out.stdout, "trapped", 30*time.Second)
		if err := task.Kill(ctx, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if st := waitExit(t, statusC, 30*time.Second); st.ExitCode() != 42 {
			t.Fatalf("exit %d, want 42", st.ExitCode())
		}
		err := task.Kill(ctx, syscall.SIGKILL)
		wantKind(t, "kill after exit", err, errdefs.IsNotFound, "NotFound")
		if _, err := task.Delete(ctx); err != nil {
			t.Fatal(err)
		}

		id2 := containerID(t, "all")
		c2 := newContainer(t, e, id2, nil, oci.WithProcessArgs("sh", "-c", "sleep 1000 & sleep 1000 & wait"))
		task2, statusC2 := startTask(t, c2, nil)
		eventually(t, 30*time.Second, "three processes", func() error {
			ps, err := task2.Pids(ctx)
			if err != nil {
				return fmt.Errorf("pids: %w", err)
			}
			if len(ps) < 3 {
				return fmt.Errorf("pids %v", ps)
			}
			return nil
		})
		if err := task2.Kill(ctx, syscall.SIGKILL, client.WithKillAll); err != nil {
			t.Fatal(err)
		}
		if st := waitExit(t, statusC2, 30*time.Second); st.ExitCode() != 137 {
			t.Fatalf("exit %d, want 137", st.ExitCode())
		}
		task2.Delete(ctx)
		assertNothingLeft(t, e, id2)
	})
}

// TestExec: exec processes get their own stdio and exit codes, their
// events, and the init's TaskExit comes after theirs.
func TestExec(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := testContext(t)
		rec := harness.Record(t, e.client, namespace)
		id := containerID(t, "")
		c := newContainer(t, e, id, nil, oci.WithProcessArgs("sh", "-c", "sleep 1000"))
		task, statusC := startTask(t, c, nil)
		spec, err := c.Spec(ctx)
		if err != nil {
			t.Fatal(err)
		}

		pspec := *spec.Process
		pspec.Args = []string{"sh", "-c", "echo exec-out; cat /proc/self/status | grep -c PPid; exit 5"}
		var out outputs
		p, err := task.Exec(ctx, "e1", &pspec, out.creator())
		if err != nil {
			t.Fatal(err)
		}
		pc, _ := p.Wait(ctx)
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if st := waitExit(t, pc, 30*time.Second); st.ExitCode() != 5 {
			t.Fatalf("exec exit %d", st.ExitCode())
		}
		p.Delete(ctx)
		if !strings.HasPrefix(out.stdout.String(), "exec-out\n") {
			t.Fatalf("exec stdout %q", out.stdout.String())
		}

		// Unknown and duplicate exec ids.
		if _, err := task.LoadProcess(ctx, "nope", nil); !errdefs.IsNotFound(err) {
			t.Fatalf("load unknown exec: %v", err)
		}
		pspec.Args = []string{"sleep", "1000"}
		long, err := task.Exec(ctx, "e2", &pspec, cio.NullIO)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := task.Exec(ctx, "e2", &pspec, cio.NullIO); !errdefs.IsAlreadyExists(err) {
			t.Fatalf("duplicate exec id: %v", err)
		}
		lc, _ := long.Wait(ctx)
		if err := long.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := long.Delete(ctx); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("delete running exec: %v", err)
		}
		// The init dies while the exec runs: the exec's exit is published
		// first.
		if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitExit(t, statusC, 30*time.Second)
		waitExit(t, lc, 30*time.Second)
		// No exec may start once the init has exited.
		pspec.Args = []string{"true"}
		if late, err := task.Exec(ctx, "e3", &pspec, cio.NullIO); err == nil {
			if err := late.Start(ctx); !errdefs.IsFailedPrecondition(err) {
				t.Fatalf("start exec after init exit: %v", err)
			}
		} else if !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("exec after init exit: %v", err)
		}
		if _, err := task.Delete(ctx, client.WithProcessKill); err != nil {
			t.Fatal(err)
		}
		if _, err := rec.WaitFor(harness.Match(harness.TopicTaskDelete, id), scaled(30*time.Second)); err != nil {
			t.Fatal(err)
		}
		var order []string
		for _, ev := range rec.ForContainer(id) {
			switch p := ev.Payload.(type) {
			case *eventtypes.TaskExit:
				order = append(order, "exit:"+p.ID)
			case *eventtypes.TaskExecStarted:
				order = append(order, "started:"+p.ExecID)
			case *eventtypes.TaskExecAdded:
				order = append(order, "added:"+p.ExecID)
			}
		}
		want := "added:e1 started:e1 exit:e1 added:e2 started:e2 exit:e2 exit:" + id
		if strings.Join(order, " ") != want {
			t.Fatalf("exec events %v\nwant %s", order, want)
		}
	})
}

// TestStdinAndCloseIO: stdin reaches the process; CloseIO gives it EOF.
func TestStdinAndCloseIO(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := testContext(t)
		id := containerID(t, "")
		c := newContainer(t, e, id, nil, oci.WithProcessArgs("sh", "-c", "cat; echo done"))
		var out outputs
		in := strings.NewReader("from-stdin\n")
		task, statusC := startTask(t, c, cio.NewCreator(cio.WithStreams(in, &out.stdout, &out.stderr)))
		eventually(t, 30*time.Second, "stdin copied", func() error {
			if !strings.Contains(out.stdout.String(), "from-stdin") {
				return fmt.Errorf("stdout %q", out.stdout.String())
			}
			return nil
		})
		if err := task.CloseIO(ctx, client.WithStdinCloser); err != nil {
			t.Fatal(err)
		}
		if st := waitExit(t, statusC, 30*time.Second); st.ExitCode() != 0 {
			t.Fatalf("exit %d", st.ExitCode())
		}
		task.Delete(ctx)
		if out.stdout.String() != "from-stdin\ndone\n" {
			t.Fatalf("stdout %q", out.stdout.String())
		}
	})
}

// TestTTY: a terminal task sees a tty, and ResizePty reaches it.
func TestTTY(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := testContext(t)
		id := containerID(t, "")
		c := newContainer(t, e, id, nil, oci.WithTTY,
			oci.WithProcessArgs("sh", "-c", `[ -t 0 ] && [ -t 1 ] && echo is-a-tty; while [ "$(stty size)" != "12 34" ]; do sleep 0.05; done; echo resized`))
		var out syncBuffer
		task, statusC := startTask(t, c, cio.NewCreator(cio.WithStreams(nil, &out, nil), cio.WithTerminal))
		if err := task.Resize(ctx, 34, 12); err != nil {
			t.Fatal(err)
		}
		if st := waitExit(t, statusC, 30*time.Second); st.ExitCode() != 0 {
			t.Fatalf("exit %d", st.ExitCode())
		}
		task.Delete(ctx)
		if s := out.String(); !strings.Contains(s, "is-a-tty\r\n") || !strings.Contains(s, "resized") {
			t.Fatalf("tty output %q", s)
		}
	})
}

// TestPauseResume: state and events follow pause and resume.
func TestPauseResume(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := testContext(t)
		rec := harness.Record(t, e.client, namespace)
		id := containerID(t, "")
		c := newContainer(t, e, id, nil, oci.WithProcessArgs("sleep", "1000"))
		task, _ := startTask(t, c, nil)
		if err := task.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if st, _ := task.Status(ctx); st.Status != client.Paused {
			t.Fatalf("status %v after pause", st.Status)
		}
		if err := task.Pause(ctx); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("pause twice: %v", err)
		}
		if err := task.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		if st, _ := task.Status(ctx); st.Status != client.Running {
			t.Fatalf("status %v after resume", st.Status)
		}
		for _, topic := range []string{harness.TopicTaskPaused, harness.TopicTaskResumed} {
			if _, err := rec.WaitFor(harness.Match(topic, id), scaled(30*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestStatsAndUpdate: Stats returns the cgroup metrics types containerd's
// runc shim returns for the host's cgroup mode, with the process count, CPU
// time and memory limit; Update changes the memory limit they show and the
// CPU quota in the task's host cgroup; ctr task metrics reads them.
func TestStatsAndUpdate(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := testContext(t)
		id := containerID(t, "")
		logOnFailure(t, e, id)
		c := newContainer(t, e, id, nil, oci.WithProcessArgs("sleep", "1000"), oci.WithMemoryLimit(64<<20))
		task, _ := startTask(t, c, nil)
		type figures struct{ pids, cpu, limit uint64 }
		stats := func() (figures, error) {
			m, err := task.Metrics(ctx)
			if err != nil {
				return figures{}, err
			}
			v, err := typeurl.UnmarshalAny(m.Data)
			if err != nil {
				return figures{}, err
			}
			checkMetricsType(t, v)
			switch s := v.(type) {
			case *cgroup1stats.Metrics:
				if s.CPU == nil || s.Memory == nil {
					return figures{}, fmt.Errorf("incomplete v1 metrics: %v", s)
				}
				return figures{s.Pids.GetCurrent(), s.CPU.GetUsage().GetTotal(), s.Memory.GetUsage().GetLimit()}, nil
			case *cgroup2stats.Metrics:
				if s.CPU == nil || s.Memory == nil {
					return figures{}, fmt.Errorf("incomplete v2 metrics: %v", s)
				}
				return figures{s.Pids.GetCurrent(), s.CPU.GetUsageUsec(), s.Memory.GetUsageLimit()}, nil
			}
			return figures{}, fmt.Errorf("unexpected metrics type %T", v)
		}
		// Just after start the pids counter may still count runc init's
		// threads (runc backend, loaded machine).
		var f figures
		eventually(t, 30*time.Second, "one process in the cgroup", func() (err error) {
			if f, err = stats(); err == nil && f.pids != 1 {
				err = fmt.Errorf("%s pids.current %d", cgroupMode(), f.pids)
			}
			return err
		})
		if f.limit != 64<<20 || f.cpu == 0 {
			t.Fatalf("%s stats: memory limit %d (want %d), cpu usage %d (want > 0)", cgroupMode(), f.limit, 64<<20, f.cpu)
		}
		newLimit := int64(128 << 20)
		if err := task.Update(ctx, client.WithResources(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &newLimit}})); err != nil {
			t.Fatal(err)
		}
		if f, err := stats(); err != nil || f.limit != 128<<20 {
			t.Fatalf("%s stats after update: memory limit %d (want %d), %v", cgroupMode(), f.limit, 128<<20, err)
		}
		// A CPU quota reaches the task's host cgroup (gVisor's sandbox's
		// under runsc): cpu.max on v2, cpu.cfs_quota_us on v1.
		quota, period := int64(50000), uint64(100000)
		if err := task.Update(ctx, client.WithResources(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}})); err != nil {
			t.Fatal(err)
		}
		want := "50000 100000"
		if !unified() {
			want = "50000"
		}
		if got, err := cgroupFile(int(task.Pid()), "cpu", "cpu.cfs_quota_us", "cpu.max"); err != nil || got != want {
			t.Fatalf("%s cpu quota after update %q, want %q (%v)", cgroupMode(), got, want, err)
		}
		if f, err := stats(); err != nil || f.limit != 128<<20 {
			t.Fatalf("memory limit %d after the CPU update, want it kept at %d (%v)", f.limit, 128<<20, err)
		}
		// An update is no reason for a later exec to fail (in-process
		// runc kept the update's SkipDevices in the live config:
		// "can't start container with SkipDevices set").
		if code := execToExit(t, c, task, "after-update", nil, "true"); code != 0 {
			t.Fatalf("exec after an update: exit %d", code)
		}
		out, _, err := e.d.Ctr("-n", namespace, "task", "metrics", id)
		if err != nil || !strings.Contains(out, "memory") {
			t.Fatalf("ctr task metrics: %v\n%s", err, out)
		}
		// Host pids, on gVisor too (the backend maps the sandbox's).
		wantPid := task.Pid()
		ps, err := task.Pids(ctx)
		if err != nil || len(ps) != 1 || ps[0].Pid != wantPid {
			t.Fatalf("pids %v %v (want %d)", ps, err, wantPid)
		}
	})
}

// TestOOM: a task over its memory limit is OOM-killed; one TaskOOM comes
// right before TaskExit and Stats counts the kill.
func TestOOM(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := testContext(t)
		rec := harness.Record(t, e.client, namespace)
		id := containerID(t, "")
		// gVisor's sandbox itself needs memory under the same limit.
		limit := uint64(16 << 20)
		if e.backend == "runsc" {
			limit = 128 << 20
		}
		c := newContainer(t, e, id, nil, oci.WithMemoryLimit(limit),
			oci.WithProcessArgs("sh", "-c", "x=a; while :; do x=$x$x; done"))
		task, statusC := startTask(t, c, nil)
		if st := waitExit(t, statusC, 30*time.Second); st.ExitCode() != 137 {
			t.Fatalf("exit %d, want 137", st.ExitCode())
		}
		m, err := task.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := typeurl.UnmarshalAny(m.Data)
		checkMetricsType(t, v)
		var kills uint64
		switch s := v.(type) {
		case *cgroup1stats.Metrics:
			kills = s.MemoryOomControl.GetOomKill()
		case *cgroup2stats.Metrics:
			kills = s.MemoryEvents.GetOomKill()
		}
		if kills < 1 {
			t.Fatalf("OOM kill count %d in %s stats", kills, cgroupMode())
		}
		task.Delete(ctx)
		if _, err := rec.WaitFor(harness.Match(harness.TopicTaskDelete, id), scaled(30*time.Second)); err != nil {
			t.Fatal(err)
		}
		topics := strings.Join(rec.Topics(id), " ")
		if !strings.Contains(topics, harness.TopicTaskOOM+" "+harness.TopicTaskExit) {
			t.Fatalf("want TaskOOM right before TaskExit, got %s", topics)
		}
		// The watch and the exit both see the kill: one TaskOOM.
		if n := strings.Count(topics, harness.TopicTaskOOM); n != 1 {
			t.Fatalf("%d TaskOOM, want 1: %s", n, topics)
		}
	})
}

// TestLogURIs: file:// and binary:// stdio as ctr and nerdctl use them.
func TestLogURIs(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		dir := t.TempDir()
		logFile := filepath.Join(dir, "file.log")
		id := containerID(t, "file")
		if out, _, err := e.d.Ctr("-n", namespace, "run", "--rm", "--runtime", runtimeName, "--log-uri", "file://"+logFile,
			harness.BusyboxImage, id, "sh", "-c", "echo to-file; echo err-to-file >&2"); err != nil {
			t.Fatalf("ctr run: %v %s", err, out)
		}
		data, _ := os.ReadFile(logFile)
		if !strings.Contains(string(data), "to-file") || !strings.Contains(string(data), "err-to-file") {
			t.Fatalf("file log %q", data)
		}

		// A logging driver as nerdctl's: fds 3 and 4 carry stdout and
		// stderr, closing fd 5 says it is ready.
		driver := filepath.Join(dir, "driver.sh")
		check(t, os.WriteFile(driver, []byte("#!/bin/sh\nexec 5>&-\ncat <&3 >>\"$2\" &\ncat <&4 >>\"$2\" &\nwait\n"), 0o755))
		binLog := filepath.Join(dir, "binary.log")
		id = containerID(t, "binary")
		if out, _, err := e.d.Ctr("-n", namespace, "run", "--rm", "--runtime", runtimeName,
			"--log-uri", "binary://"+driver+"?file="+binLog,
			harness.BusyboxImage, id, "sh", "-c", "echo to-binary"); err != nil {
			t.Fatalf("ctr run: %v %s", err, out)
		}
		eventually(t, 30*time.Second, "binary log written", func() error {
			data, _ := os.ReadFile(binLog)
			if !strings.Contains(string(data), "to-binary") {
				return fmt.Errorf("binary log %q", data)
			}
			return nil
		})
	})
}

// TestCtrRun: the plain ctr flow users start with, exit code included.
func TestCtrRun(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		id := containerID(t, "")
		out, _, err := e.d.Ctr("-n", namespace, "run", "--rm", "--runtime", runtimeName, harness.BusyboxImage, id, "sh", "-c", "echo hello from ctr")
		if err != nil || !strings.Contains(out, "hello from ctr") {
			t.Fatalf("ctr run: %v %q", err, out)
		}
		_, _, err = e.d.Ctr("-n", namespace, "run", "--rm", "--runtime", runtimeName, harness.BusyboxImage, id+"-x", "sh", "-c", "exit 9")
		if err == nil || !strings.Contains(err.Error(), "exit status 9") {
			t.Fatalf("ctr run exit code: %v", err)
		}
		assertNothingLeft(t, e, id)
	})
}
