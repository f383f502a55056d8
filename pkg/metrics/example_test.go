package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
)

// A shim's life as the integration sees it: serve, record, leave the
// final snapshot, then remove the socket.
func Example() {
	run, _ := os.MkdirTemp("", "m")
	defer os.RemoveAll(run)
	socketDir, stateDir := filepath.Join(run, "metrics"), filepath.Join(run, "metrics-final")
	if err := os.Mkdir(stateDir, 0o700); err != nil { // the aggregator's job
		fmt.Println(err)
	}

	rec := metrics.New(metrics.Options{Version: "v0.1.0"})
	name := metrics.Name("k8s.io", "sandbox-id")
	stop, err := metrics.Serve(context.Background(), metrics.SocketPath(socketDir, name), rec)
	if err != nil {
		fmt.Println("metrics disabled:", err) // never fatal to the shim
	}

	// The task service, at its lifecycle points:
	l := metrics.Labels{Backend: "runc", Handler: "custom-runc"}
	t := metrics.TaskFromAnnotations("k8s.io", "c1", map[string]string{
		"io.kubernetes.cri.sandbox-name":      "web-0",
		"io.kubernetes.cri.sandbox-namespace": "prod",
		"io.kubernetes.cri.container-name":    "app",
	})
	created := time.Now()
	rec.TaskCreated(l, t)
	rec.RPC("/containerd.task.v3.Task/Create", metrics.Result(nil), time.Since(created))
	rec.TaskStarted(l, t, time.Since(created))
	rec.TaskExited(l, t, metrics.ExitReasonOf(137, true), 90*time.Second)
	rec.TaskDeleted(l, t)

	// Exit: the final snapshot first, then the socket.
	if err := rec.WriteFinal(stateDir, name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		fmt.Println("final snapshot:", err)
	}
	if err := stop(); err != nil {
		fmt.Println("stop serving:", err)
	}

	finals, _ := filepath.Glob(filepath.Join(stateDir, "*.prom"))
	sockets, _ := filepath.Glob(filepath.Join(socketDir, "*.sock"))
	fmt.Println(len(finals), "final snapshot,", len(sockets), "sockets")
	// Output: 1 final snapshot, 0 sockets
}
