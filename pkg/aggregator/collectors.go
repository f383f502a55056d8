package aggregator

import "github.com/prometheus/client_golang/prometheus"

// The aggregator's own namespace is the shims': one prefix for the node.
const namespace = "containerd_shim_custom"

// The Go and process collectors come from package prometheus rather than
// prometheus/collectors, whose other collectors (database/sql, expvar)
// would add their packages to the binary, which is also every shim's. They
// are the same collectors; the prometheus package only marks its
// constructors deprecated in favour of the other package's.

func newProcessCollector() prometheus.Collector {
	return prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}) //nolint:staticcheck // see above
}

func newGoCollector() prometheus.Collector {
	return prometheus.NewGoCollector() //nolint:staticcheck // see above
}
