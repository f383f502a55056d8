package cgroup

import (
	"context"
	"sync"

	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/oom"
	oomv1 "github.com/containerd/containerd/v2/pkg/oom/v1"
	"github.com/containerd/log"
)

// OOMWatcher reports OOM kills in the cgroups it watches. The kernel's
// oom_kill counter, not the notification, decides: a notification may come
// late (after the process was reaped) or twice, and callers check the
// counter synchronously on a process's exit (Check) so that TaskOOM
// precedes the TaskExit of an OOM-killed init.
type OOMWatcher struct {
	ctx    context.Context
	cancel context.CancelFunc
	onOOM  func(id string)

	mu      sync.Mutex        // leaf lock: onOOM is called without it
	v1      oom.Watcher       // guarded by mu; created on first use
	watched map[string]*entry // guarded by mu
}

type entry struct {
	cg       Cgroup
	reported uint64 // guarded by OOMWatcher.mu
}

// NewOOMWatcher returns a watcher calling onOOM(id) once per new OOM kill
// count seen in id's cgroup.
func NewOOMWatcher(ctx context.Context, onOOM func(id string)) *OOMWatcher {
	ctx, cancel := context.WithCancel(ctx)
	return &OOMWatcher{ctx: ctx, cancel: cancel, onOOM: onOOM, watched: make(map[string]*entry)}
}

// Add starts watching id's cgroup (nil: nothing to watch). Kills counted
// before now are not id's.
func (w *OOMWatcher) Add(id string, cg Cgroup) {
	if cg == nil {
		return
	}
	e := &entry{cg: cg}
	e.reported, _ = cg.OOMKills()
	w.mu.Lock()
	w.watched[id] = e
	w.mu.Unlock()
	switch cg := cg.(type) {
	case *v1:
		if err := w.addV1(id, cg); err != nil {
			log.G(w.ctx).WithError(err).WithField("id", id).Warn("cannot watch cgroup v1 OOM events")
		}
	case *v2:
		events, errs := cg.m.EventChan()
		go func() {
			for {
				select {
				case ev := <-events:
					if ev.OOMKill > 0 {
						w.Check(id)
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

func (w *OOMWatcher) addV1(id string, cg *v1) error {
	w.mu.Lock()
	if w.v1 == nil {
		v, err := oomv1.New(publisherFunc(w.Check))
		if err != nil {
			w.mu.Unlock()
			return err
		}
		w.v1 = v
		go v.Run(w.ctx)
	}
	v := w.v1
	w.mu.Unlock()
	return v.Add(id, cg.cg)
}

// Check reports whether id's cgroup counted OOM kills not yet reported, and
// calls onOOM if so.
func (w *OOMWatcher) Check(id string) bool {
	w.mu.Lock()
	e := w.watched[id]
	w.mu.Unlock()
	if e == nil {
		return false
	}
	n, err := e.cg.OOMKills()
	if err != nil {
		log.G(w.ctx).WithError(err).WithField("id", id).Debug("read OOM kill count")
		return false
	}
	w.mu.Lock()
	fresh := n > e.reported
	if fresh {
		e.reported = n
	}
	w.mu.Unlock()
	if fresh {
		w.onOOM(id)
	}
	return fresh
}

// Remove stops watching id.
func (w *OOMWatcher) Remove(id string) {
	w.mu.Lock()
	delete(w.watched, id)
	w.mu.Unlock()
}

// Close stops every watch.
func (w *OOMWatcher) Close() { w.cancel() }

// publisherFunc adapts the v1 watcher's event publisher to a callback.
type publisherFunc func(id string) bool

func (f publisherFunc) Publish(ctx context.Context, topic string, event events.Event) error {
	if ev, ok := event.(interface{ GetContainerID() string }); ok {
		f(ev.GetContainerID())
	}
	return nil
}
