package aggregator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/prometheus/common/expfmt"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
)

type liveShim struct {
	name, instance string
	view           *snapshot // last good scrape
	fresh          bool      // view is from this round: its gauges are current
	lastSeen       time.Time // last round its socket was listed
}

type shimKey struct{ name, instance string }

type scrapeResult struct {
	name, instance string
	snap           *snapshot
	dropped        int
	reason         string // error kind, "" on success
	err            error
	took           time.Duration
}

// dialPath carries a shim's socket path to the transport's dialer.
type dialPath struct{}

func (a *Aggregator) listSockets(ctx context.Context, dir string) map[string]bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		log.G(ctx).WithError(err).Warn("list shim metrics sockets")
	}
	listed := make(map[string]bool, len(entries))
	for _, e := range entries {
		if name, ok := metrics.SocketName(e.Name()); ok && e.Type()&os.ModeSocket != 0 {
			listed[name] = true
		}
	}
	return listed
}

func (a *Aggregator) scrapeAll(ctx context.Context, st *settings, listed map[string]bool) []scrapeResult {
	names := sortedKeys(listed)
	results := make([]scrapeResult, len(names))
	sem := make(chan struct{}, a.cfg.Parallelism)
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			results[i] = a.scrapeOne(ctx, st, name)
		}()
	}
	wg.Wait()
	return results
}

func (a *Aggregator) scrapeOne(ctx context.Context, st *settings, name string) (res scrapeResult) {
	res.name = name
	start := time.Now()
	defer func() { res.took = time.Since(start) }()
	ctx, cancel := context.WithTimeout(context.WithValue(ctx, dialPath{}, metrics.SocketPath(st.socketDir, name)), st.scrapeTimeout)
	defer cancel()
	fail := func(reason string, err error) scrapeResult {
		if ctx.Err() != nil {
			reason = "timeout"
		}
		res.reason, res.err = reason, err
		return res
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://shim/metrics", nil)
	if err != nil {
		return fail("connect", err)
	}
	req.Header.Set("Accept", acceptProto)
	resp, err := a.client.Do(req)
	if err != nil {
		return fail("connect", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fail("status", fmt.Errorf("status %s", resp.Status))
	}
	format := formatText // whatever is not protobuf is read as text
	if expfmt.ResponseFormat(resp.Header).FormatType() == expfmt.TypeProtoDelim {
		format = formatProto
	}
	snap, dropped, err := parseSnapshot(resp.Body, format, a.cfg.MaxScrapeBytes, a.cfg.MaxSeriesPerShim, true)
	switch {
	case errors.Is(err, errTooLarge):
		return fail("too_large", err)
	case err != nil:
		return fail("parse", err)
	}
	res.instance = truncate(resp.Header.Get(metrics.InstanceHeader), 64)
	res.snap, res.dropped = snap, dropped
	return res
}

func (a *Aggregator) apply(ctx context.Context, st *settings, res scrapeResult, now time.Time) {
	a.scrapes.Inc()
	a.shimDuration.Observe(res.took.Seconds())
	if res.err != nil {
		a.scrapeErrors.WithLabelValues(res.reason).Inc()
		log.G(ctx).WithError(res.err).WithField("shim", res.name).Debug("scrape shim metrics")
		if errors.Is(res.err, syscall.ECONNREFUSED) {
			a.removeDeadSocket(ctx, st.socketDir, res.name, now)
		}
		return
	}
	a.dropped.Add(float64(res.dropped))
	if _, gone := a.tombs[shimKey{res.name, res.instance}]; gone {
		return // already folded in: its socket is about to go
	}
	sh := a.live[res.name]
	if sh != nil && sh.instance != res.instance {
		a.retire(sh, now, "replaced")
		sh = nil
	}
	if sh == nil {
		sh = &liveShim{name: res.name, instance: res.instance}
		a.live[res.name] = sh
	}
	sh.view, sh.fresh, sh.lastSeen = res.snap, true, now
}

// removeDeadSocket removes the socket of a shim that refused a scrape, once
// it is older than staleSocketAge.
func (a *Aggregator) removeDeadSocket(ctx context.Context, dir, name string, now time.Time) {
	path := metrics.SocketPath(dir, name)
	fi, err := os.Lstat(path)
	if err != nil || now.Sub(fi.ModTime()) < staleSocketAge {
		return
	}
	if err := metrics.CleanupSocket(path); err != nil {
		log.G(ctx).WithError(err).WithField("shim", name).Warn("remove dead shim metrics socket")
		return
	}
	log.G(ctx).WithField("shim", name).Info("removed the metrics socket of a dead shim")
}

// retire moves a live shim's last view into base.
func (a *Aggregator) retire(sh *liveShim, now time.Time, how string) {
	a.dropped.Add(float64(a.base.add(sh.view, false, a.cfg.MaxSeries)))
	a.tombs[shimKey{sh.name, sh.instance}] = &tomb{folded: sh.view.withoutGauges(), at: now}
	delete(a.live, sh.name)
	a.retired.WithLabelValues(how).Inc()
}
