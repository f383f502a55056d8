// Package shim is the containerd-shim-custom-v2 binary's modes, as
// containerd's shim manager sees them: "start" (the bootstrap handshake
// with every containerd line, shim grouping), the server (Task API v2 and
// v3 over ttrpc, the reaper, the metrics socket), "delete" (cleanup after a
// dead shim), "-info", "-version" and "check" (the node aggregator is a
// binary of its own, cmd/containerd-shim-custom-metrics). The Task API
// itself is pkg/task; the runtimes are pkg/runtime's backends, listed in
// backends.go.
package shim

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/nsholder"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/runsc"
)

// Name is the runtime name containerd uses for this shim.
const Name = "io.containerd.custom.v2"

// Version is set at build time (-ldflags "-X ...shim.Version=v0.1.0").
var (
	Version  = "dev"
	Revision = ""
)

// flags are what containerd passes on the command line (every line since
// 1.x passes the same ones; 2.3+ sends BootstrapParams on stdin as well).
type flags struct {
	namespace string
	id        string
	address   string // containerd's gRPC address
	bundle    string // only with "delete"
	socket    string // serve: our socket path, for cleanup
	// pool, group: serve: the shared shims' pool and slot this server
	// is (pods_per_shim); empty for one shim per Pod.
	pool, group string
	debug       bool
	version     bool
	info        bool
	action      string
	args        []string // after the action

	// publishBinary is containerd's own executable (every line passes it;
	// "start" reads which containerd it is from it).
	publishBinary string
}

func parseFlags(args []string) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet("containerd-shim-custom-v2", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&f.namespace, "namespace", "", "namespace that owns the shim")
	fs.StringVar(&f.id, "id", "", "id of the task")
	fs.StringVar(&f.address, "address", "", "grpc address back to containerd")
	fs.StringVar(&f.bundle, "bundle", "", "path to the bundle if not the working directory")
	fs.StringVar(&f.socket, "socket", "", "socket path to serve")
	fs.StringVar(&f.pool, "pool", "", "serve: the shared shims' pool directory (pods_per_shim)")
	fs.StringVar(&f.group, "group", "", "serve: this shim's slot in -pool")
	fs.StringVar(&f.publishBinary, "publish-binary", "", "containerd's binary (events go to $TTRPC_ADDRESS)")
	fs.BoolVar(&f.debug, "debug", false, "enable debug output in logs")
	fs.BoolVar(&f.version, "v", false, "show the shim version and exit")
	fs.BoolVar(&f.version, "version", false, "show the shim version and exit")
	fs.BoolVar(&f.info, "info", false, "read runtime options on stdin, print RuntimeInfo and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	f.action = fs.Arg(0)
	if fs.NArg() > 1 {
		f.args = fs.Args()[1:]
	}
	return f, nil
}

// Main runs the binary and exits.
func Main() {
	os.Exit(Run(context.Background(), os.Args[1:]))
}

// Run runs one invocation and returns the exit code.
func Run(ctx context.Context, args []string) int {
	f, err := parseFlags(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", Name, err)
		return 2
	}
	if f.version {
		fmt.Printf("containerd-shim-custom-v2:\n  Version:  %s\n  Revision: %s\n  Runtime:  %s\n", Version, Revision, Name)
		return 0
	}
	if f.info {
		if err := runInfo(ctx, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", Name, err)
			return 1
		}
		return 0
	}
	switch f.action {
	case nsholder.Mode:
		// holder.c takes this mode over before the Go runtime starts.
		fmt.Fprintf(os.Stderr, "%s: %s: the holder did not run (a build without cgo?)\n", Name, nsholder.Mode)
		return 1
	case runsc.PauseMode:
		return runPause()
	case "check":
		return runCheck(os.Stdout)
	case "metrics-server":
		// Since the aggregator left the shim's binary (the shim runs
		// once per Pod and links none of its stack).
		fmt.Fprintf(os.Stderr, "%s: metrics-server is a binary of its own now: containerd-shim-custom-metrics (same flags)\n", Name)
		return 2
	}
	if f.namespace == "" {
		fmt.Fprintf(os.Stderr, "%s: shim namespace cannot be empty\n", Name)
		return 2
	}
	ctx = namespaces.WithNamespace(ctx, f.namespace)
	_ = log.SetFormat(log.TextFormat)
	if f.debug {
		_ = log.SetLevel("debug")
	}
	ctx = log.WithLogger(ctx, log.G(ctx).WithFields(log.Fields{"runtime": Name, "namespace": f.namespace}))

	switch f.action {
	case "start":
		// containerd reads start's stdout and stderr together as its
		// reply, so logs must not go to stderr: they go to the bundle's
		// log fifo, which containerd already reads (or nowhere).
		log.L.Logger.SetOutput(startLog())
		err = runStart(ctx, f, os.Stdin, os.Stdout)
	case "delete":
		err = runDelete(ctx, f, backends(), os.Stdout)
	case "":
		err = runServe(ctx, f)
	default:
		err = fmt.Errorf("unknown action %q", f.action)
	}
	if err != nil {
		// containerd reads stdout and stderr together for "start": the
		// error is all it gets, so it must say everything.
		fmt.Fprintf(os.Stderr, "%s: %v\n", Name, err)
		return 1
	}
	return 0
}

// startLog opens the bundle's log fifo without blocking; containerd opened
// its read end before running "start".
func startLog() io.Writer {
	f, err := os.OpenFile("log", os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return io.Discard
	}
	return f
}

// trimUnix turns a unix:// address into a path.
func trimUnix(address string) string {
	return strings.TrimPrefix(address, "unix://")
}

// runPause is a gVisor pod sandbox's first process: it holds the sandbox
// until it is told to end, as the pause image's does.
func runPause() int {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
	return 0
}
