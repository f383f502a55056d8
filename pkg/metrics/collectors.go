package metrics

import "github.com/prometheus/client_golang/prometheus"

// The Go and process collectors come from package prometheus rather than
// prometheus/collectors, whose other collectors (database/sql, expvar)
// would add their packages to every shim binary. They are the same
// collectors; the prometheus package only marks its constructors
// deprecated in favour of the other package's.

func newProcessCollector() prometheus.Collector {
	return prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}) //nolint:staticcheck // see above
}

func newGoCollector() prometheus.Collector {
	return prometheus.NewGoCollector() //nolint:staticcheck // see above
}
