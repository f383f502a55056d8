// Package aggregator is the node's metrics aggregator,
// "containerd-shim-custom-v2 metrics-server": one per node, it lists the
// shims' metrics sockets (pkg/metrics) on every scrape, scrapes them in
// parallel, folds each exited shim's final snapshot in exactly once, and
// serves the sum (aggregator.go, snapshot.go).
//
// The shim side never initialises any of it: a shim links this package
// (one binary) but only Main, run for the "metrics-server" action, builds
// an aggregator.
package aggregator
