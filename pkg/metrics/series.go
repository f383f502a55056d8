package metrics

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// labelSet holds the children of every task metric for one Labels value,
// resolved once so that recording is an atomic add.
type labelSet struct {
	created, started, deleted, oom, execStarted prometheus.Counter
	exited, execExited                          [numExitReasons]prometheus.Counter
	startLatency, runDuration                   prometheus.Observer
}

type rpcKey struct{ method, result string }

type rpcSeries struct {
	requests prometheus.Counter
	duration prometheus.Observer // nil for Wait
}

type commandKey struct {
	l       Labels
	command string
}

type commandSeries struct {
	duration prometheus.Observer
	failures prometheus.Counter
}

// set is the series of one label set, made on first use; past the cap,
// the overflow set's.
func (r *Recorder) set(l Labels) *labelSet {
	return r.sets.get(l, Labels{overflow, overflow}, r.newLabelSet)
}

// newLabelSet creates every series of a label set at once, so that all
// exit reasons are exported as 0 from the first task on (rate() needs the
// zero).
func (r *Recorder) newLabelSet(l Labels) (*labelSet, error) {
	var errs []error
	c := func(v *prometheus.CounterVec, extra ...string) prometheus.Counter {
		m, err := v.GetMetricWithLabelValues(append([]string{l.Backend, l.Handler}, extra...)...)
		errs = append(errs, err)
		return m
	}
	o := func(v *prometheus.HistogramVec) prometheus.Observer {
		m, err := v.GetMetricWithLabelValues(l.Backend, l.Handler)
		errs = append(errs, err)
		return m
	}
	s := &labelSet{
		created:      c(r.tasksCreated),
		started:      c(r.tasksStarted),
		deleted:      c(r.tasksDeleted),
		oom:          c(r.oomEvents),
		execStarted:  c(r.execsStarted),
		startLatency: o(r.startLatency),
		runDuration:  o(r.runDuration),
	}
	for i := range numExitReasons {
		s.exited[i] = c(r.tasksExited, i.String())
		s.execExited[i] = c(r.execsExited, i.String())
	}
	return s, errors.Join(errs...)
}

func (r *Recorder) newRPCSeries(k rpcKey) (*rpcSeries, error) {
	c, err := r.rpcRequests.GetMetricWithLabelValues(k.method, k.result)
	if err != nil {
		return nil, err
	}
	s := &rpcSeries{requests: c}
	if k.method != "Wait" {
		if s.duration, err = r.rpcDuration.GetMetricWithLabelValues(k.method); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (r *Recorder) newCommandSeries(k commandKey) (*commandSeries, error) {
	o, err := r.commandDuration.GetMetricWithLabelValues(k.l.Backend, k.l.Handler, k.command)
	if err != nil {
		return nil, err
	}
	c, err := r.commandFailures.GetMetricWithLabelValues(k.l.Backend, k.l.Handler, k.command)
	if err != nil {
		return nil, err
	}
	return &commandSeries{duration: o, failures: c}, nil
}

// cache maps a label key to its resolved series. Reads are one atomic load
// and a map lookup (no lock, no allocation); a new key copies the map under
// mu, which happens a handful of times in a shim's life. Past max keys, or
// for a key whose label values client_golang rejects, the overflow key is
// used instead.
type cache[K comparable, V any] struct {
	m   atomicMap[K, V]
	mu  sync.Mutex
	max int
}

func (c *cache[K, V]) get(k K, overflowKey K, build func(K) (V, error)) V {
	if v, ok := c.m.load()[k]; ok {
		return v
	}
	return c.slow(k, overflowKey, build)
}

func (c *cache[K, V]) slow(k K, overflowKey K, build func(K) (V, error)) V {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.m.load()
	if v, ok := m[k]; ok {
		return v
	}
	if len(m) < c.max {
		if v, err := build(k); err == nil {
			c.m.store(k, v)
			return v
		}
	}
	if v, ok := m[overflowKey]; ok {
		return v
	}
	v, err := build(overflowKey)
	if err != nil {
		panic("metrics: overflow series rejected: " + err.Error()) // constant ASCII labels: cannot happen
	}
	c.m.store(overflowKey, v)
	return v
}

// atomicMap is a copy-on-write map: readers load it without a lock.
type atomicMap[K comparable, V any] struct {
	p atomic.Pointer[map[K]V]
}

func (a *atomicMap[K, V]) load() map[K]V {
	if p := a.p.Load(); p != nil {
		return *p
	}
	return nil
}

// store adds k; callers serialise stores.
func (a *atomicMap[K, V]) store(k K, v V) {
	old := a.load()
	m := make(map[K]V, len(old)+1)
	for ok, ov := range old {
		m[ok] = ov
	}
	m[k] = v
	a.p.Store(&m)
}
