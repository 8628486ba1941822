package daemon

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MetricsHandler serves a daemon's collectors and Go's and the process's
// own metrics, in Prometheus's text format. Both daemons build theirs
// here so the two expose the same runtime series.
func MetricsHandler(cs ...prometheus.Collector) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(append(cs, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))...)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

// Bool is a metric's value for a flag: 1 or 0.
func Bool(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
