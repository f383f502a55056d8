package shim

import (
	"context"
	"sync"

	"github.com/containerd/cgroups/v3/cgroup1"
	cgroupsv2 "github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/oom"
	oomv1 "github.com/containerd/containerd/v2/pkg/oom/v1"
	"github.com/containerd/log"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
)

// oomWatcher publishes TaskOOM when a task's cgroup records an OOM kill.
// The kernel's oom_kill counter, not the notification, decides: the
// notification may come late (after the process was reaped) or twice, and
// the exit path checks the counter synchronously so TaskOOM always precedes
// the TaskExit of an OOM-killed init.
type oomWatcher struct {
	ctx     context.Context
	publish func(id string)

	mu       sync.Mutex
	v1       oom.Watcher          // guarded by mu; created on first use
	watched  map[string]*oomEntry // guarded by mu
	shutdown context.CancelFunc
}

type oomEntry struct {
	cg       any
	reported uint64
}

func newOOMWatcher(ctx context.Context, publish func(id string)) *oomWatcher {
	ctx, cancel := context.WithCancel(ctx)
	return &oomWatcher{ctx: ctx, publish: publish, watched: make(map[string]*oomEntry), shutdown: cancel}
}

// add starts watching a task's cgroup (nil: nothing to watch).
func (w *oomWatcher) add(id string, cg any) {
	if cg == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	e := &oomEntry{cg: cg}
	e.reported, _ = cgroup.OOMKills(cg) // kills before this task are not its own
	w.watched[id] = e
	switch cg := cg.(type) {
	case cgroup1.Cgroup:
		if w.v1 == nil {
			v1, err := oomv1.New(publisherFunc(func(id string) { w.check(id, false) }))
			if err != nil {
				log.G(w.ctx).WithError(err).Warn("cannot watch cgroup v1 OOM events")
				return
			}
			w.v1 = v1
			go v1.Run(w.ctx)
		}
		if err := w.v1.Add(id, cg); err != nil {
			log.G(w.ctx).WithError(err).WithField("id", id).Warn("watch cgroup v1 OOM events")
		}
	case *cgroupsv2.Manager:
		events, errs := cg.EventChan()
		go func() {
			for {
				select {
				case ev := <-events:
					if ev.OOMKill > 0 {
						w.check(id, false)
					}
				case err := <-errs:
					if err != nil {
						log.G(w.ctx).WithError(err).WithField("id", id).Debug("cgroup v2 OOM watch ended")
					}
					return
				case <-w.ctx.Done():
					return
				}
			}
		}()
	}
}

// check publishes TaskOOM if the cgroup counted OOM kills not yet reported.
func (w *oomWatcher) check(id string, onExit bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	e := w.watched[id]
	if e == nil {
		return
	}
	n, err := cgroup.OOMKills(e.cg)
	if err != nil {
		if onExit {
			log.G(w.ctx).WithError(err).WithField("id", id).Debug("read OOM kill count")
		}
		return
	}
	if n > e.reported {
		e.reported = n
		w.publish(id)
	}
}

func (w *oomWatcher) remove(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.watched, id)
}

func (w *oomWatcher) close() {
	w.shutdown()
}

// publisherFunc adapts the v1 watcher's publisher to a callback.
type publisherFunc func(id string)

func (f publisherFunc) Publish(ctx context.Context, topic string, event events.Event) error {
	if ev, ok := event.(interface{ GetContainerID() string }); ok {
		f(ev.GetContainerID())
	}
	return nil
}
