package events

import "github.com/prometheus/client_golang/prometheus"

// ErrorKinds are the kinds of events that are errors: a daemon's
// errors_total metric counts them by kind.
var ErrorKinds = []Kind{Refused, Interrupted, Overflow}

// Errors returns how many error events of each of ErrorKinds were
// recorded since the daemon started (zero for a nil Recorder).
func (r *Recorder) Errors() map[Kind]uint64 {
	out := map[Kind]uint64{}
	for _, k := range ErrorKinds {
		out[k] = 0
	}
	if r == nil {
		return out
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, n := range r.errs {
		out[k] = n
	}
	return out
}

// ErrorsCollector exports Errors as the counter NAME{kind}, every kind
// present from the start (at 0), so that rate() and increase() see the
// first error.
func (r *Recorder) ErrorsCollector(name string) prometheus.Collector {
	return errorsCollector{r, prometheus.NewDesc(name,
		"Errors since the daemon started, by kind: refused (a peer's connection), interrupted (a replication stream failed), overflow (a change log overflowed).",
		[]string{"kind"}, nil)}
}

type errorsCollector struct {
	r    *Recorder
	desc *prometheus.Desc
}

func (c errorsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c errorsCollector) Collect(ch chan<- prometheus.Metric) {
	for k, n := range c.r.Errors() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n), string(k))
	}
}
