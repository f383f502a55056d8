package shim

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	goruntime "runtime"
	"runtime/debug"
	"sync"
	"time"

	sandboxapi "github.com/containerd/containerd/api/runtime/sandbox/v1"
	runcshim "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/runc"
	"github.com/containerd/fifo"
	gorunc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/events"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/reaper"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/sandbox"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/shim/recovery"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/task"
)

// runServe is the long-running shim server. containerd's "start" call
// started it with the listening socket as fd 3, in the bundle of the first
// task it hosts.
func runServe(ctx context.Context, f *flags) error {
	// Few goroutines and a tight heap: a node runs one shim per pod.
	debug.SetGCPercent(40)
	if err := openLogFifo(ctx); err != nil {
		return err
	}
	if f.pool != "" {
		if err := serveShared(f); err != nil {
			return err
		}
	}
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("pid", os.Getpid()))

	// Containers' processes are reparented to us; we reap them all.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("become subreaper: %w", err)
	}
	signals := make(chan os.Signal, 128)
	signal.Notify(signals, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT, unix.SIGPIPE, unix.SIGUSR1)
	// Every child goes through the reaper: go-runc must wait through it, or
	// its wait4 races the reaper's and loses exits. The reaper is also the
	// gate the backends hold while libcontainer waits for its own children.
	gate := reaper.New()
	gorunc.Monitor = gate
	exits := gate.Subscribe()

	platform, err := runcshim.NewPlatform()
	if err != nil {
		return err
	}
	defer platform.Close()

	// Task metrics on a unix socket of their own, for the node aggregator.
	rec := metrics.New(metrics.Options{Version: Version, Revision: Revision})
	metricsName := metrics.Name(f.namespace, filepath.Base(f.socket))
	metricsSockets, metricsFinals := metrics.Dirs()
	stopMetrics, err := metrics.Serve(ctx, metrics.SocketPath(metricsSockets, metricsName), rec)
	if err != nil {
		log.G(ctx).WithError(err).Warn("metrics endpoint disabled")
		stopMetrics = func() error { return nil }
	}

	shutdown := make(chan struct{})
	var once sync.Once
	reg := backends().WithReaper(gate)
	// The task service asks the sandbox service before it lets the shim
	// go, and the sandbox service asks the task service after a pod's
	// ShutdownSandbox; svc is set before either can be called.
	var svc *task.Service
	// Only a shared server's Pods have a place in a pool to leave; other
	// servers skip the pool's index on every delete.
	var leave func(id string)
	if f.pool != "" {
		leave = func(id string) { leavePool(ctx, f.namespace, id) }
	}
	sandboxes := sandbox.NewService(ctx, sandbox.Config{
		Backends: reg,
		Reaper:   gate,
		Metrics:  rec,
		Shutdown: func() { svc.ShutdownIfIdle() },
		Leave:    leave,
	})
	hold := sandboxes.Holds
	if f.pool != "" {
		hold = sharedHold(ctx, f, sandboxes.Holds)
	}
	svc = task.NewService(ctx, task.Config{
		Namespace: f.namespace,
		Events:    events.NewTTRPCSender(os.Getenv("TTRPC_ADDRESS")),
		Platform:  platform,
		Backends:  reg,
		Metrics:   rec,
		Shutdown:  func() { once.Do(func() { close(shutdown) }) },
		Hold:      hold,
		Created:   sandboxes.ContainerCreated,
		Deleted:   leave,
	})
	go func() {
		for e := range exits {
			x := runtime.Exit{Pid: e.Pid, Status: e.Status, Timestamp: e.Timestamp}
			svc.HandleExit(x)
			sandboxes.HandleExit(x)
		}
	}()

	server, err := ttrpc.NewServer(serverOptions(rec, newMemoryTrimmer(ctx), recovery.Markers{svc, sandboxes})...)
	if err != nil {
		return fmt.Errorf("create ttrpc server: %w", err)
	}
	Register(server, svc)
	sandboxapi.RegisterTTRPCSandboxService(server, sandboxes)
	l, err := net.FileListener(os.NewFile(3, "socket"))
	if err != nil {
		return fmt.Errorf("inherit listening socket: %w", err)
	}
	serveErr := make(chan error, 1)
	go func() {
		serveErr <- server.Serve(ctx, l)
	}()
	log.G(ctx).WithField("socket", f.socket).Debug("serving task api")

	reason := waitForShutdown(ctx, signals, shutdown, serveErr, gate)
	log.G(ctx).WithField("reason", reason).Debug("shim shutting down")

	// Flush events before anything else goes: containerd may be waiting
	// for the TaskDelete of the task it just deleted.
	if err := svc.Close(); err != nil {
		log.G(ctx).WithError(err).Error("flush events")
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if err := server.Shutdown(sctx); err != nil {
		_ = server.Close() // forced after the timeout; the shim exits next
	}
	cancel()
	if f.socket != "" {
		if err := os.Remove(f.socket); err != nil && !os.IsNotExist(err) {
			log.G(ctx).WithError(err).Warn("remove shim socket")
		}
	}
	// The final figures go to the aggregator before the metrics socket
	// goes: it relies on that order to count them once.
	if err := rec.WriteFinal(metricsFinals, metricsName); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.G(ctx).WithError(err).Warn("leave final metrics")
	}
	if err := stopMetrics(); err != nil {
		log.G(ctx).WithError(err).Warn("stop metrics endpoint")
	}
	return nil
}

// waitForShutdown is the signal loop. Reap never waits for a gate holder,
// so a SIGTERM is handled at once even while a create waits on a hook.
func waitForShutdown(ctx context.Context, signals chan os.Signal, shutdown chan struct{}, serveErr chan error, gate *reaper.Reaper) string {
	for {
		select {
		case <-shutdown:
			return "shutdown requested"
		case err := <-serveErr:
			if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, ttrpc.ErrServerClosed) {
				log.G(ctx).WithError(err).Error("ttrpc server failed")
			}
			return "server stopped"
		case s := <-signals:
			switch s {
			case unix.SIGCHLD:
				if err := gate.Reap(); err != nil {
					log.G(ctx).WithError(err).Error("reap exited children")
				}
			case unix.SIGUSR1:
				dumpStacks(ctx)
			case unix.SIGTERM, unix.SIGINT:
				return "signal " + s.String()
			}
		}
	}
}

// openLogFifo sends our logs (and, through stderr, panics) into the
// bundle's "log" fifo, which containerd copies into its own log.
func openLogFifo(ctx context.Context) error {
	// The fifo handle stays open for the life of the process; fd 2 is the
	// copy everything writes to.
	if _, err := fifo.OpenFifoDup2(ctx, "log", unix.O_WRONLY, 0o700, int(os.Stderr.Fd())); err != nil {
		return fmt.Errorf("open shim log fifo: %w", err)
	}
	log.L.Logger.SetOutput(os.Stderr)
	return nil
}

func dumpStacks(ctx context.Context) {
	buf := make([]byte, 1<<20)
	n := goruntime.Stack(buf, true)
	log.G(ctx).Infof("=== goroutine stack dump ===\n%s\n=== end ===", buf[:n])
}
