package metrics

import (
	"fmt"
	"os"
)

// Transitional: pkg/shim still runs "metrics-server" as
//
//	metrics.Version, metrics.Revision = Version, Revision
//	return metrics.Main(f.args)
//
// The aggregator moved to pkg/aggregator, which imports this package, so
// this package cannot call it; cmd/containerd-shim-custom-v2 sets Main to
// aggregator.Main instead. Once pkg/shim calls
// aggregator.Main(f.args, Version, Revision) itself, this file and the
// assignment in cmd/ go.

// Version and Revision are what pkg/shim hands the aggregator through Main.
//
// Deprecated: pass them to aggregator.Main.
var Version, Revision string

// Main runs "containerd-shim-custom-v2 metrics-server"; the binary's main
// sets it.
//
// Deprecated: call aggregator.Main.
var Main = func(args []string) int {
	fmt.Fprintln(os.Stderr, "metrics-server: the aggregator is not linked into this binary")
	return 2
}
