// Command containerd-shim-custom-v2 is a containerd shim v2 runtime
// (runtime_type "io.containerd.custom.v2") with runc and gVisor backends.
package main

import (
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/aggregator"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/shim"
)

func main() {
	// "metrics-server": until pkg/shim calls aggregator.Main itself (see
	// pkg/metrics/forward.go).
	metrics.Main = func(args []string) int { return aggregator.Main(args, metrics.Version, metrics.Revision) }
	shim.Main()
}
