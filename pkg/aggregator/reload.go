package aggregator

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"time"

	"github.com/containerd/log"
	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"
)

// reloadDelay gathers the burst of events one change makes (an editor's
// write and rename, the five steps of a Kubernetes ConfigMap update) into
// one reload.
const reloadDelay = 200 * time.Millisecond

// Reload loads the configuration file again and puts it in force if it is
// valid. If not, the settings in force stay, the error (a *ConfigError:
// file, line, key) is returned and logged, and
// …_config_last_reload_successful drops to 0 until a reload succeeds. A
// reload never resets a counter, and scrapes under way finish with the
// settings they started with. Without a configuration file it does
// nothing.
func (a *Aggregator) Reload(ctx context.Context) error { return a.reload(ctx, true) }

// reload is Reload; unless force, a file whose content is that of the
// configuration in force is left alone (the watcher sees events for every
// file in the directory).
func (a *Aggregator) reload(ctx context.Context, force bool) error {
	path := a.cfg.ConfigFile
	if path == "" {
		return nil
	}
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	data, err := readConfigFile(path)
	if err == nil && !force && a.lastOK && bytes.Equal(data, a.lastFile) {
		return nil
	}
	var st *settings
	if err != nil {
		err = &ConfigError{File: path, Err: err}
	} else {
		st, err = parseSettings(path, data, a.flags, os.LookupEnv)
	}
	a.lastFile, a.lastOK = data, err == nil
	if err != nil {
		a.reloadOK.Set(0)
		log.G(ctx).WithError(err).Error("configuration refused; the previous one stays in force")
		return err
	}
	a.set.Store(st)
	a.reloadOK.Set(1)
	a.reloadTime.SetToCurrentTime()
	log.G(ctx).WithFields(st.fields()).Info("configuration reloaded")
	return nil
}

// fields describe settings for the log.
func (s *settings) fields() log.Fields {
	exclude := make([]string, 0, len(s.exclude))
	for f := range s.exclude {
		exclude = append(exclude, f)
	}
	slices.Sort(exclude)
	labels := make([]string, 0, len(s.labels))
	for _, l := range s.labels {
		labels = append(labels, l.name+"="+l.value)
	}
	return log.Fields{"scrape_timeout": s.scrapeTimeout, "shim_socket_dir": s.socketDir, "state_dir": s.stateDir,
		"exclude_families": exclude, "const_labels": labels}
}

// watch reloads the configuration on SIGHUP (hup) and when a file in its
// directory changes, until ctx is done. The directory, not the file, is
// watched: Kubernetes updates a mounted ConfigMap by swapping a symlink
// next to the file, and editors replace files by renaming. It also checks
// the web configuration file when its directory changes (exporter-toolkit
// reads it on every connection by itself) so that a broken one is logged
// as soon as it is written rather than at the next scrape.
func (a *Aggregator) watch(ctx context.Context, hup <-chan os.Signal) {
	var dirs []string
	for _, f := range []string{a.cfg.ConfigFile, a.cfg.WebConfigFile} {
		if f != "" && !slices.Contains(dirs, filepath.Dir(f)) {
			dirs = append(dirs, filepath.Dir(f))
		}
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	var w *fsnotify.Watcher
	if len(dirs) > 0 {
		var err error
		if w, err = fsnotify.NewWatcher(); err != nil {
			log.G(ctx).WithError(err).Warn("cannot watch the configuration files: changes apply on SIGHUP only")
		} else {
			defer w.Close()
			events, errs = w.Events, w.Errors
			addWatches(ctx, w, dirs)
		}
	}
	webBefore, _ := checkWebConfig(a.cfg.WebConfigFile)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if a.cfg.ConfigFile == "" {
				log.G(ctx).Info("SIGHUP: no --config.file to reload")
			}
			_ = a.reload(ctx, true)
			webBefore = a.checkWebChange(ctx, webBefore)
		case ev := <-events:
			log.G(ctx).WithField("event", ev.String()).Debug("configuration directory changed")
			timer.Reset(reloadDelay)
		case err := <-errs:
			log.G(ctx).WithError(err).Warn("watching the configuration files")
		case <-timer.C:
			_ = a.reload(ctx, false)
			webBefore = a.checkWebChange(ctx, webBefore)
			// A directory that was removed and made again is watched anew.
			addWatches(ctx, w, dirs)
		}
	}
}

func addWatches(ctx context.Context, w *fsnotify.Watcher, dirs []string) {
	if w == nil {
		return
	}
	have := w.WatchList()
	for _, d := range dirs {
		if slices.Contains(have, d) {
			continue
		}
		if err := w.Add(d); err != nil {
			log.G(ctx).WithError(err).WithField("dir", d).Warn("cannot watch a configuration directory: changes apply on SIGHUP only")
		}
	}
}

// checkWebChange logs what a changed web configuration file means: an
// error (new connections fail until it is fixed), or that turning TLS on
// or off waits for a restart (exporter-toolkit decides between HTTP and
// HTTPS when it starts).
func (a *Aggregator) checkWebChange(ctx context.Context, before webSecurity) webSecurity {
	if a.cfg.WebConfigFile == "" {
		return before
	}
	now, err := checkWebConfig(a.cfg.WebConfigFile)
	switch {
	case err != nil:
		log.G(ctx).WithError(err).Error("web configuration broken: new connections are refused until it is fixed")
		return before
	case now.tls != before.tls:
		log.G(ctx).WithField("tls", now.tls).Warn("web configuration turns TLS on or off: that takes a restart; certificates, client CAs and users apply at once")
	}
	return now
}

// Run serves the aggregator until ctx is done (see serve), folds final
// snapshots every FoldInterval between scrapes, and reloads the
// configuration file on change and on SIGHUP.
func (a *Aggregator) Run(ctx context.Context) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, unix.SIGHUP)
	defer signal.Stop(hup)
	return a.run(ctx, hup)
}

func (a *Aggregator) run(ctx context.Context, hup <-chan os.Signal) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	servers, errc, err := a.serve(ctx)
	if err != nil {
		return fmt.Errorf("metrics aggregator: %w", err)
	}
	done := make(chan struct{})
	defer func() { cancel(); <-done }()
	go func() {
		defer close(done)
		a.watch(ctx, hup)
	}()
	go func() {
		t := time.NewTicker(a.cfg.FoldInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				a.foldFinals(ctx)
			}
		}
	}()
	st := a.set.Load()
	log.G(ctx).WithFields(st.fields()).WithFields(log.Fields{"listen": a.cfg.Listen, "path": a.cfg.TelemetryPath,
		"web_config": a.cfg.WebConfigFile, "config": a.cfg.ConfigFile}).Info("metrics aggregator serving")
	var serveErr error
	select {
	case serveErr = <-errc:
		if serveErr == nil {
			serveErr = fmt.Errorf("a server stopped")
		}
		serveErr = fmt.Errorf("metrics aggregator: serve: %w", serveErr)
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	for _, srv := range servers {
		if err := srv.Shutdown(sctx); err != nil {
			_ = srv.Close() // forced after the timeout: nothing is left to do
		}
	}
	return serveErr
}

// Run runs an aggregator with cfg until ctx is done.
func Run(ctx context.Context, cfg Config) error {
	a, err := New(cfg)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}
