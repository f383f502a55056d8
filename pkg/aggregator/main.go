package aggregator

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/containerd/log"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
	"golang.org/x/sys/unix"
)

// Main runs "containerd-shim-custom-v2 metrics-server [flags]" (args are
// the flags) until SIGTERM or SIGINT and returns the exit code; version
// and revision are the binary's, for build_info.
func Main(args []string, version, revision string) int {
	cfg := Config{Version: version, Revision: revision}
	sockets, finals := metrics.Dirs()
	fs := flag.NewFlagSet("metrics-server", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.SocketDir, "shim-socket-dir", sockets, "directory where shims create their metrics sockets ($"+metrics.DirEnv+"/metrics if set)")
	fs.StringVar(&cfg.StateDir, "state-dir", finals, "directory where exiting shims leave their final snapshots ($"+metrics.DirEnv+"/metrics-final if set)")
	fs.StringVar(&cfg.Listen, "listen", DefaultListen, "address to serve /metrics on: host:port, or unix:///path")
	fs.DurationVar(&cfg.ScrapeTimeout, "scrape-timeout", defaultScrapeTimeout, "timeout of each shim's scrape")
	debug := fs.Bool("debug", false, "log at debug level (every failed shim scrape)")
	usage := func() {
		fmt.Fprintln(os.Stderr, "usage: containerd-shim-custom-v2 metrics-server [flags]")
		fs.SetOutput(os.Stderr)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage()
			return 0
		}
		fmt.Fprintf(os.Stderr, "metrics-server: %v\n", err)
		usage()
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "metrics-server: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if cfg.ScrapeTimeout <= 0 {
		fmt.Fprintln(os.Stderr, "metrics-server: --scrape-timeout must be positive")
		return 2
	}
	_ = log.SetFormat(log.TextFormat)
	if *debug {
		_ = log.SetLevel("debug")
	}
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stop()
	if err := Run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "metrics-server: %v\n", err)
		return 1
	}
	return 0
}
