package aggregator

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
)

// Name is the aggregator's binary.
const Name = "containerd-shim-custom-metrics"

// Main runs "containerd-shim-custom-metrics [flags]" (args are
// the flags) until SIGTERM or SIGINT and returns the exit code; version
// and revision are the binary's, for build_info.
//
// The web flags are node_exporter's (exporter-toolkit's): repeated
// --web.listen-address, --web.telemetry-path, --web.config.file. The old
// --listen still works, as a deprecated alias of --web.listen-address.
func Main(args []string, version, revision string) int {
	cfg := Config{Version: version, Revision: revision}
	sockets, finals := metrics.Dirs()
	fs := flag.NewFlagSet(Name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var listen, deprecated []string
	fs.Func("web.listen-address", "address to serve on, host:port or unix:///path; repeat for several (default "+DefaultListen+")", func(s string) error {
		listen = append(listen, s)
		return nil
	})
	fs.Func("listen", "deprecated: use --web.listen-address", func(s string) error {
		listen = append(listen, s)
		deprecated = append(deprecated, s)
		return nil
	})
	fs.StringVar(&cfg.TelemetryPath, "web.telemetry-path", "/metrics", "path under which to expose metrics")
	fs.StringVar(&cfg.WebConfigFile, "web.config.file", "", "exporter-toolkit web configuration file: TLS, client certificates, basic auth (re-read on every connection)")
	fs.StringVar(&cfg.ConfigFile, "config.file", "", "aggregator configuration file (YAML; reloaded on change and on SIGHUP); its settings override the flags below")
	fs.StringVar(&cfg.SocketDir, "shim-socket-dir", sockets, "directory where shims create their metrics sockets ($"+metrics.DirEnv+"/metrics if set)")
	fs.StringVar(&cfg.StateDir, "state-dir", finals, "directory where exiting shims leave their final snapshots ($"+metrics.DirEnv+"/metrics-final if set)")
	fs.DurationVar(&cfg.ScrapeTimeout, "scrape-timeout", defaultScrapeTimeout, "timeout of each shim's scrape")
	debug := fs.Bool("debug", false, "log at debug level (every failed shim scrape)")
	usage := func() {
		fmt.Fprintln(os.Stderr, "usage: "+Name+" [flags]")
		fs.SetOutput(os.Stderr)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage()
			return 0
		}
		fmt.Fprintf(os.Stderr, Name+": %v\n", err)
		usage()
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, Name+": unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if cfg.ScrapeTimeout <= 0 {
		fmt.Fprintln(os.Stderr, Name+": --scrape-timeout must be positive")
		return 2
	}
	if !strings.HasPrefix(cfg.TelemetryPath, "/") || strings.ContainsAny(cfg.TelemetryPath, " {}") {
		fmt.Fprintf(os.Stderr, Name+": --web.telemetry-path %q must be a path starting with /\n", cfg.TelemetryPath)
		return 2
	}
	cfg.Listen = listen
	_ = log.SetFormat(log.TextFormat)
	if *debug {
		_ = log.SetLevel("debug")
	}
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stop()
	for _, l := range deprecated {
		log.G(ctx).WithField("listen", l).Warn("--listen is deprecated: use --web.listen-address (same values, repeatable)")
	}
	if err := Run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, Name+": %v\n", err)
		return 1
	}
	return 0
}
