package task

import (
	"context"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
)

// timed records every backend command's duration and failure. It wraps the
// backend rather than the call sites so no command goes unmeasured.
type timed struct {
	b   runtime.Backend
	rec *metrics.Recorder
	l   metrics.Labels
}

func instrument(b runtime.Backend, rec *metrics.Recorder, l metrics.Labels) runtime.Backend {
	if rec == nil {
		return b
	}
	return &timed{b: b, rec: rec, l: l}
}

func (t *timed) done(cmd string, start time.Time, err error) {
	t.rec.BackendCommand(t.l, cmd, err, time.Since(start))
}

func (t *timed) Create(ctx context.Context, c *runtime.CreateConfig) (pid int, err error) {
	defer func(s time.Time) { t.done("create", s, err) }(time.Now())
	return t.b.Create(ctx, c)
}

func (t *timed) Start(ctx context.Context, id string, io *runtime.IO) (err error) {
	defer func(s time.Time) { t.done("start", s, err) }(time.Now())
	return t.b.Start(ctx, id, io)
}

func (t *timed) Restore(ctx context.Context, c *runtime.CreateConfig, r *runtime.RestoreConfig) (pid int, err error) {
	defer func(s time.Time) { t.done("restore", s, err) }(time.Now())
	return t.b.Restore(ctx, c, r)
}

func (t *timed) Exec(ctx context.Context, id string, e *runtime.ExecConfig) (pid int, err error) {
	defer func(s time.Time) { t.done("exec", s, err) }(time.Now())
	return t.b.Exec(ctx, id, e)
}

func (t *timed) Kill(ctx context.Context, id string, sig syscall.Signal, all bool) (err error) {
	defer func(s time.Time) { t.done("kill", s, err) }(time.Now())
	return t.b.Kill(ctx, id, sig, all)
}

func (t *timed) Signal(ctx context.Context, id string, p runtime.ExecProcess, sig syscall.Signal) (err error) {
	defer func(s time.Time) { t.done("signal", s, err) }(time.Now())
	return t.b.Signal(ctx, id, p, sig)
}

func (t *timed) Delete(ctx context.Context, id string, force bool) (err error) {
	defer func(s time.Time) { t.done("delete", s, err) }(time.Now())
	return t.b.Delete(ctx, id, force)
}

func (t *timed) Pause(ctx context.Context, id string) (err error) {
	defer func(s time.Time) { t.done("pause", s, err) }(time.Now())
	return t.b.Pause(ctx, id)
}

func (t *timed) Resume(ctx context.Context, id string) (err error) {
	defer func(s time.Time) { t.done("resume", s, err) }(time.Now())
	return t.b.Resume(ctx, id)
}

func (t *timed) Update(ctx context.Context, id string, r *specs.LinuxResources) (err error) {
	defer func(s time.Time) { t.done("update", s, err) }(time.Now())
	return t.b.Update(ctx, id, r)
}

func (t *timed) Pids(ctx context.Context, id string) (pids []int, err error) {
	defer func(s time.Time) { t.done("ps", s, err) }(time.Now())
	return t.b.Pids(ctx, id)
}

func (t *timed) Cgroup(ctx context.Context, id string, pid int) (cgroup.Cgroup, error) {
	return t.b.Cgroup(ctx, id, pid)
}

func (t *timed) Stats(ctx context.Context, id string, cg cgroup.Cgroup) (st *cgroup.Metrics, err error) {
	defer func(s time.Time) { t.done("stats", s, err) }(time.Now())
	return t.b.Stats(ctx, id, cg)
}

func (t *timed) Checkpoint(ctx context.Context, id string, c *runtime.CheckpointConfig) (err error) {
	defer func(s time.Time) { t.done("checkpoint", s, err) }(time.Now())
	return t.b.Checkpoint(ctx, id, c)
}
