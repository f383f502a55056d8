// Command containerd-shim-custom-metrics is the node's metrics aggregator
// for containerd-shim-custom-v2: it scrapes every shim's metrics socket,
// folds in the final figures of shims that exited, and serves the sum
// (TLS and auth through exporter-toolkit). A binary of its own, so that
// its HTTP/TLS, YAML and file-watching stack is never linked into the shim
// that runs once per Pod.
package main

import (
	"os"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/aggregator"
)

// Set by the Makefile (-X), as the shim's.
var (
	version  = "dev"
	revision = ""
)

func main() {
	os.Exit(aggregator.Main(os.Args[1:], version, revision))
}
