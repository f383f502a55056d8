package aggregator

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	goruntime "runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
)

// Config configures the node aggregator. Zero fields take the defaults
// below. SocketDir, StateDir, ScrapeTimeout, ExcludeFamilies and
// ConstLabels are the settings a configuration file (ConfigFile) may
// override and a reload may change; the rest is fixed for the process.
type Config struct {
	SocketDir string // shims' metrics sockets; metrics.DefaultSocketDir
	StateDir  string // shims' final snapshots; metrics.DefaultStateDir
	// ScrapeTimeout bounds each shim's scrape (default 2s); shims are
	// scraped in parallel, Parallelism at a time (default 16).
	ScrapeTimeout time.Duration
	// ExcludeFamilies are metric families left out of the output
	// ("task_state" or its full name; the aggregator's own too). They are
	// still summed, so that exporting them again later resumes their
	// totals where they are.
	ExcludeFamilies []string
	// ConstLabels are added to every exported series (node="…").
	ConstLabels map[string]string
	// ConfigFile is the YAML configuration file (see config.go), "" for
	// none; it is reloaded by Run on change and on SIGHUP.
	ConfigFile string

	// Listen are the addresses to serve on: host:port, or unix:///path
	// (default DefaultListen).
	Listen []string
	// TelemetryPath is where the metrics are served (default /metrics).
	TelemetryPath string
	// WebConfigFile is exporter-toolkit's web configuration file (TLS,
	// client certificates, basic auth), "" for plain HTTP; the toolkit
	// re-reads it for every connection.
	WebConfigFile string

	Parallelism int
	// MaxScrapeBytes bounds one shim's response or final file (default
	// 1 MiB, a real shim sends tens of KiB); MaxSeriesPerShim its series
	// (default 10000); MaxSeries the series accumulated from exited shims
	// (default 100000).
	MaxScrapeBytes   int64
	MaxSeriesPerShim int
	MaxSeries        int
	// VanishGrace is how long a shim whose socket disappeared without a
	// final snapshot keeps its last scraped counters live (default 30s),
	// in case the snapshot is late; then they are kept for good.
	VanishGrace time.Duration
	// TombstoneTTL is how long an exited shim instance is remembered, to
	// skip it if its socket lingers and to fold a late snapshot as a
	// difference (default 10m).
	TombstoneTTL time.Duration
	// FoldInterval is how often final snapshots are folded in between
	// scrapes (default 15s), so they do not pile up when nobody scrapes.
	FoldInterval time.Duration
	// Version and Revision label the aggregator's build_info; an empty
	// Version is "dev".
	Version, Revision string
}

const defaultScrapeTimeout = 2 * time.Second

func (c *Config) setDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.SocketDir, metrics.DefaultSocketDir)
	def(&c.StateDir, metrics.DefaultStateDir)
	def(&c.TelemetryPath, "/metrics")
	if len(c.Listen) == 0 {
		c.Listen = []string{DefaultListen}
	}
	def(&c.Version, "dev")
	if c.ScrapeTimeout <= 0 {
		c.ScrapeTimeout = defaultScrapeTimeout
	}
	if c.Parallelism <= 0 {
		c.Parallelism = 16
	}
	if c.MaxScrapeBytes <= 0 {
		c.MaxScrapeBytes = 1 << 20
	}
	if c.MaxSeriesPerShim <= 0 {
		c.MaxSeriesPerShim = 10000
	}
	if c.MaxSeries <= 0 {
		c.MaxSeries = 100000
	}
	if c.VanishGrace <= 0 {
		c.VanishGrace = 30 * time.Second
	}
	if c.TombstoneTTL <= 0 {
		c.TombstoneTTL = 10 * time.Minute
	}
	if c.FoldInterval <= 0 {
		c.FoldInterval = 15 * time.Second
	}
}

// Aggregator serves the sum of the node's shims' metrics.
//
// Counters and histograms (per series) are
//
//	base + Σ live views
//
// where a live view is the last good scrape of a running shim instance and
// base accumulates the shims that are gone. Each part only grows: a view
// is only replaced by a later scrape of the same process, and a shim
// leaves the live set exactly once, its contribution moving into base:
//
//   - it exited cleanly: its final snapshot, written after its last
//     recording and so >= every scrape of it, replaces its live view;
//   - its socket disappeared with no snapshot (SIGKILL, crash): after
//     VanishGrace its last view moves to base as it is;
//   - a new process answered under the same name: the old view moves to
//     base.
//
// Every instance that left is remembered for TombstoneTTL (at least while
// its socket lingers): one whose final snapshot was folded is not scraped
// or folded again, and for one retired without a snapshot base's share is
// kept, so that a late snapshot adds only what it counted beyond it. So a
// shim's counts enter the total once, and the total never goes backwards
// across the transition. Gauges are summed
// from this round's successful scrapes only: they describe live state.
//
// Series from different shims with the same labels are summed; there is
// no shim label. A shim label would add a series per pod for every
// counter and bucket (unbounded churn) and its series would end when the
// shim does, which is what base exists to prevent. Per-task identity is on
// the task_state gauge.
type Aggregator struct {
	cfg    Config // fixed for the process; the reloadable part is in set
	reg    *prometheus.Registry
	client *http.Client
	now    func() time.Time // tests move time

	// set is the settings in force. A reload swaps it whole; a round
	// loads it once. Never nil.
	set atomic.Pointer[settings]
	// flags are the settings of cfg, under those of the file.
	flags *settings

	// reloadMu serialises reloads; guards lastFile and lastOK.
	reloadMu sync.Mutex
	lastFile []byte // content of the file last loaded or refused
	lastOK   bool   // whether it was loaded

	mu        sync.Mutex // serialises rounds; guards the fields below
	base      *snapshot
	live      map[string]*liveShim
	tombs     map[shimKey]*tomb
	last      *snapshot // last output's counters and histograms, see clampMonotonic
	regressed int       // decreases clampMonotonic hid beyond rounding (tests)

	shims        prometheus.Gauge
	scrapes      prometheus.Counter
	scrapeErrors *prometheus.CounterVec
	shimDuration prometheus.Histogram
	duration     prometheus.Histogram
	folded       prometheus.Counter
	finalErrors  prometheus.Counter
	retired      *prometheus.CounterVec
	dropped      prometheus.Counter
	accumulated  prometheus.Gauge
	reloadOK     prometheus.Gauge
	reloadTime   prometheus.Gauge
}

// New returns an aggregator; it creates the socket and state
// directories (0700) if they are missing.
func New(cfg Config) (*Aggregator, error) {
	cfg.setDefaults()
	flags, err := settingsFrom(cfg)
	if err != nil {
		return nil, fmt.Errorf("metrics aggregator: %w", err)
	}
	set := flags
	var file []byte
	if cfg.ConfigFile != "" {
		// A configuration that does not load refuses the start: there is
		// no old one to keep.
		if set, file, err = loadSettings(cfg.ConfigFile, flags); err != nil {
			return nil, fmt.Errorf("metrics aggregator: configuration: %w", err)
		}
	}
	a := &Aggregator{
		flags:    flags,
		lastFile: file,
		lastOK:   true,
		cfg:      cfg,
		reg:      prometheus.NewRegistry(),
		client: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", ctx.Value(dialPath{}).(string))
			},
			// Shims come and go and each idle connection costs a shim a
			// goroutine: one connection per scrape.
			DisableKeepAlives:      true,
			DisableCompression:     true,
			MaxResponseHeaderBytes: 16 << 10,
		}},
		now:   time.Now,
		base:  newSnapshot(),
		live:  make(map[string]*liveShim),
		tombs: make(map[shimKey]*tomb),
		last:  newSnapshot(),
	}
	const sub = "aggregator"
	a.shims = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Subsystem: sub, Name: "shims",
		Help: "Shim metrics sockets found in the last scrape."})
	a.scrapes = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Subsystem: sub, Name: "shim_scrapes_total",
		Help: "Scrapes of shims attempted."})
	a.scrapeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Subsystem: sub, Name: "shim_scrape_errors_total",
		Help: "Failed scrapes of shims, by reason: connect, timeout, status, too_large, parse."}, []string{"reason"})
	a.shimDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Subsystem: sub, Name: "shim_scrape_duration_seconds",
		Help: "Time to scrape one shim.", Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}})
	a.duration = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Subsystem: sub, Name: "scrape_duration_seconds",
		Help: "Time to scrape all shims and fold in final snapshots, per scrape of the aggregator.", Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}})
	a.folded = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Subsystem: sub, Name: "final_snapshots_folded_total",
		Help: "Final snapshots of exited shims folded into the totals."})
	a.finalErrors = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Subsystem: sub, Name: "final_snapshot_errors_total",
		Help: "Final snapshots that could not be read or parsed (and were removed)."})
	a.retired = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Subsystem: sub, Name: "shims_retired_total",
		Help: "Shim instances whose counts moved to the totals of exited shims, by how: exited (final snapshot), vanished (socket gone without one), replaced (a new process under the same name)."}, []string{"how"})
	a.dropped = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Subsystem: sub, Name: "dropped_series_total",
		Help: "Series from shims dropped: foreign or malformed, conflicting types, or over the series limits."})
	a.accumulated = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Subsystem: sub, Name: "accumulated_series",
		Help: "Series held for exited shims."})
	// Named as Prometheus names its own (prometheus_config_last_reload_*).
	a.reloadOK = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Subsystem: sub, Name: "config_last_reload_successful",
		Help: "Whether the last configuration reload attempt was successful (1) or refused (0, the previous configuration stays in force)."})
	a.reloadTime = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Subsystem: sub, Name: "config_last_reload_success_timestamp_seconds",
		Help: "Time of the last successful configuration load (the start, or a reload)."})
	a.set.Store(set)
	a.reloadOK.Set(1)
	a.reloadTime.SetToCurrentTime()
	build := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Subsystem: sub, Name: "build_info",
		Help:        "Aggregator build, value 1.",
		ConstLabels: prometheus.Labels{"version": cfg.Version, "revision": cfg.Revision, "goversion": goruntime.Version()}})
	build.Set(1)
	for _, how := range []string{"exited", "vanished", "replaced"} {
		a.retired.WithLabelValues(how)
	}
	for _, r := range []string{"connect", "timeout", "status", "too_large", "parse"} {
		a.scrapeErrors.WithLabelValues(r)
	}
	a.reg.MustRegister(a.shims, a.scrapes, a.scrapeErrors, a.shimDuration, a.duration, a.folded,
		a.finalErrors, a.retired, a.dropped, a.accumulated, a.reloadOK, a.reloadTime, build,
		newProcessCollector(), newGoCollector())
	return a, nil
}

// Handler serves GET /metrics: every request scrapes the shims.
func (a *Aggregator) Handler() http.Handler {
	return promhttp.HandlerFor(a.gatherer(), promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		ErrorLog:            promLogger{},
	})
}

// gatherer is the shims' families and the aggregator's own, under one
// configuration: a reload during a scrape applies from the next one.
func (a *Aggregator) gatherer() prometheus.Gatherer {
	return prometheus.GathererFunc(a.gatherAll)
}

func (a *Aggregator) gatherAll() ([]*dto.MetricFamily, error) {
	st := a.set.Load()
	// The shims' first: gathering them runs the round whose figures the
	// aggregator's own metrics then report.
	out := a.gather(st)
	own, err := a.reg.Gather()
	// The names cannot collide: shims may send neither the aggregator's
	// prefix nor anything outside the shims' prefix (parseSnapshot).
	for _, mf := range own {
		if !st.exclude[mf.GetName()] {
			out = append(out, mf)
		}
	}
	if len(st.labels) > 0 {
		for _, mf := range out {
			for _, m := range mf.Metric {
				m.Label = withLabels(m.Label, st.labels)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out, err
}

// withLabels adds the constant labels to a series' (sorted) labels; the
// constant label wins over a shim's label of the same name, which the
// configuration check rules out for every label a real shim sends.
func withLabels(have []*dto.LabelPair, add []labelPair) []*dto.LabelPair {
	out := make([]*dto.LabelPair, 0, len(have)+len(add))
	for _, l := range have {
		if !slices.ContainsFunc(add, func(c labelPair) bool { return c.name == l.GetName() }) {
			out = append(out, l)
		}
	}
	for _, c := range add {
		out = append(out, &dto.LabelPair{Name: proto.String(c.name), Value: proto.String(c.value)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out
}

// promLogger takes promhttp's errors. They are mostly "broken pipe" from
// clients that stop reading (a kubelet probe reads 10 KiB), one per family
// left unsent: debug level, or one such client floods the log.
type promLogger struct{}

func (promLogger) Println(v ...any) { log.L.Debug(v...) }

// gather runs a round and returns the shims' totals, less the excluded
// families (which are still summed: see Config.ExcludeFamilies).
func (a *Aggregator) gather(st *settings) []*dto.MetricFamily {
	a.mu.Lock()
	defer a.mu.Unlock()
	start := time.Now()
	a.round(context.Background(), st, true)
	out := a.totalLocked()
	a.duration.Observe(time.Since(start).Seconds())
	return out.toDTO(st.exclude)
}

// round brings the aggregator's state up to date: list sockets, scrape
// (if asked), fold final snapshots, retire what is gone. The order
// matters: a shim writes its snapshot before removing its socket, so a
// shim scraped here whose snapshot appeared meanwhile is superseded by
// the snapshot in the same round.
func (a *Aggregator) round(ctx context.Context, st *settings, scrape bool) {
	now := a.now()
	listed := a.listSockets(ctx, st.socketDir)
	for _, sh := range a.live {
		sh.fresh = false
		if listed[sh.name] {
			sh.lastSeen = now
		}
	}
	if scrape {
		a.shims.Set(float64(len(listed)))
		for _, res := range a.scrapeAll(ctx, st, listed) {
			a.apply(ctx, st, res, now)
		}
	}
	a.foldFinalsLocked(ctx, st.stateDir, now)
	for _, name := range sortedKeys(a.live) {
		if sh := a.live[name]; !listed[name] && now.Sub(sh.lastSeen) > a.cfg.VanishGrace {
			a.retire(sh, now, "vanished")
		}
	}
	for k, t := range a.tombs {
		if !listed[k.name] && now.Sub(t.at) > a.cfg.TombstoneTTL {
			delete(a.tombs, k)
		}
	}
	a.accumulated.Set(float64(a.base.n))
}

// staleSocketAge is how long a socket nobody listens on is kept. A shim
// killed while containerd was down (or gone for good) never gets
// containerd's cleanup, and its socket would be retried on every scrape
// forever; a younger one may be a shim between bind and listen.
const staleSocketAge = time.Minute

// totalLocked is base plus the live views, in a fixed order (float sums
// depend on it).
func (a *Aggregator) totalLocked() *snapshot {
	t := newSnapshot()
	t.add(a.base, false, math.MaxInt)
	for _, name := range sortedKeys(a.live) {
		sh := a.live[name]
		a.dropped.Add(float64(t.add(sh.view, sh.fresh, math.MaxInt)))
	}
	a.clampMonotonic(t)
	return t
}

// clampMonotonic keeps every counter and histogram at or above its last
// output. The bookkeeping above already guarantees that for counts;
// histogram sums are floats, and moving a shim from the live sum into
// base reorders additions, which can change the last bit. A decrease of
// one ulp would read as a counter reset to Prometheus.
func (a *Aggregator) clampMonotonic(t *snapshot) {
	for name, f := range t.families {
		if f.typ == dto.MetricType_GAUGE {
			continue
		}
		lf := a.last.families[name]
		if lf == nil || lf.typ != f.typ {
			lf = &family{help: f.help, typ: f.typ, series: make(map[string]*series, len(f.series))}
			a.last.families[name] = lf
		}
		for k, s := range f.series {
			l := lf.series[k]
			if l == nil {
				lf.series[k] = s.clone()
				continue
			}
			if s.value < l.value || s.sum < l.sum || s.count < l.count {
				if s.count < l.count || s.value < l.value*(1-1e-9) || s.sum < l.sum*(1-1e-9) {
					a.regressed++
				}
			}
			s.value, s.sum, s.count = max(s.value, l.value), max(s.sum, l.sum), max(s.count, l.count)
			for i := range s.buckets {
				s.buckets[i].count = max(s.buckets[i].count, cumulativeAt(l.buckets, s.buckets[i].upper))
			}
			*l = *s.clone()
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
