// Package metrics is a shim's Prometheus instrumentation: what a shim
// links to record its tasks and serve them to the node aggregator
// (pkg/aggregator), and nothing of the aggregator itself.
//
//   - Recorder (recorder.go): what the task service calls at its lifecycle
//     points. Counters and histograms are client_golang's lock-free atomics,
//     resolved once per label set and cached, so a call costs tens of
//     nanoseconds, never allocates and never blocks on a scrape. Per-task
//     gauges live in a small map under the recorder's own mutex and are
//     turned into metrics only at scrape time.
//   - Serve and WriteFinal (serve.go, final.go): each shim serves /metrics
//     on a unix socket (dir 0700, socket 0600, peers checked with
//     SO_PEERCRED) and, when it exits, leaves its counters and histograms in
//     a final snapshot file so that nothing it counted is lost.
//   - The layout both sides share: Dirs, SocketPath/SocketName,
//     FinalFileName/ParseFinalName, InstanceHeader, EnsureDir. Its file
//     names and formats are a contract with aggregators of other builds
//     (a node upgraded while shims run): they do not change.
//
// Nothing here costs anything at package init: descriptions and
// registries are built by New.
//
// Wiring a shim (serve mode):
//
//	rec := metrics.New(metrics.Options{Version: Version, Revision: Revision})
//	name := metrics.Name(namespace, shimID) // the id the shim's socket is named after
//	sockets, finals := metrics.Dirs()
//	stop, err := metrics.Serve(ctx, metrics.SocketPath(sockets, name), rec)
//	// err: log and carry on, metrics never stop a shim
//	... the service calls rec.TaskCreated, rec.RPC … (nil-safe) ...
//	// at exit, after the task API server is shut down (no more recording):
//	err = rec.WriteFinal(finals, name) // fs.ErrNotExist: no aggregator
//	stop()                              // final first, then the socket
//
// and in "delete" (cleanup after a dead shim): metrics.CleanupSocket.
//
// Names follow Prometheus conventions: one prefix (containerd_shim_custom_),
// base units, _total on counters, low-cardinality labels on counters and
// histograms, per-task identity only on a gauge that vanishes with the task.
// Resource usage (CPU, memory) is deliberately absent: containerd already
// exports it from the Task API's Stats.
package metrics
