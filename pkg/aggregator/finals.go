package aggregator

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
)

// tomb remembers a shim instance that left the live set.
type tomb struct {
	// final: its final snapshot is in base; nothing more of it counts.
	final bool
	// folded is what base holds of an instance retired without a final
	// (vanished, replaced), for a late snapshot to add only the rest.
	folded *snapshot
	at     time.Time
}

// foldFinals folds snapshots and retires vanished shims without scraping.
func (a *Aggregator) foldFinals(ctx context.Context) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.round(ctx, a.set.Load(), false)
}

func (a *Aggregator) foldFinalsLocked(ctx context.Context, dir string, now time.Time) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		log.G(ctx).WithError(err).Warn("list final metrics snapshots")
		return
	}
	for _, e := range entries {
		name, instance, ok := metrics.ParseFinalName(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		path := filepath.Join(dir, e.Name())
		snap, dropped, err := a.readFinal(path)
		if err != nil {
			// It will not get better: drop it rather than fail on it forever.
			a.finalErrors.Inc()
			log.G(ctx).WithError(err).WithField("file", path).Warn("final metrics snapshot")
			_ = os.Remove(path)
			continue
		}
		a.dropped.Add(float64(dropped))
		key := shimKey{name, instance}
		switch sh, t := a.live[name], a.tombs[key]; {
		case t != nil && t.final:
			// A second copy (an earlier remove failed): already counted.
		case sh != nil && sh.instance == instance:
			// The snapshot supersedes the live view of the same process.
			a.dropped.Add(float64(a.base.add(snap, false, a.cfg.MaxSeries)))
			delete(a.live, name)
			a.retired.WithLabelValues("exited").Inc()
			a.folded.Inc()
		case t != nil:
			// Retired earlier (vanished, replaced): only what it counted
			// beyond what base already holds of it.
			a.dropped.Add(float64(a.base.addDelta(snap, t.folded, a.cfg.MaxSeries)))
			a.folded.Inc()
		default:
			// Never scraped: lived between two scrapes, or we restarted.
			a.dropped.Add(float64(a.base.add(snap, false, a.cfg.MaxSeries)))
			a.folded.Inc()
		}
		// The tomb keeps no data: nothing of this instance counts again.
		a.tombs[key] = &tomb{final: true, at: now}
		// Removed after folding: if we die in between, our totals die
		// with us and the file is rightly folded into the next ones. The
		// tomb covers a failed remove.
		if err := os.Remove(path); err != nil {
			log.G(ctx).WithError(err).WithField("file", path).Warn("remove final metrics snapshot")
		}
	}
}

func (a *Aggregator) readFinal(path string) (*snapshot, int, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("not a regular file")
	}
	return parseSnapshot(f, formatText, a.cfg.MaxScrapeBytes, a.cfg.MaxSeriesPerShim, false)
}
