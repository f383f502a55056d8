// Package aggregator is the node's metrics aggregator,
// containerd-shim-custom-metrics: one per node, it lists the
// shims' metrics sockets (pkg/metrics) on every scrape, scrapes them in
// parallel, folds each exited shim's final snapshot in exactly once, and
// serves the sum (aggregator.go, snapshot.go).
//
// It is a binary of its own (cmd/containerd-shim-custom-metrics): the shim,
// one process per Pod, links none of it (TestShimLinksNoAggregator).
package aggregator
