package jobs

import "github.com/prometheus/client_golang/prometheus"

var (
	descProgress = prometheus.NewDesc("vrep_job_progress_ratio",
		"Progress of each running job (initial copy, resync, seed export, ...), 0 to 1.", []string{"kind", "target"}, nil)
	descRunning = prometheus.NewDesc("vrep_jobs_running",
		"Jobs running, by kind.", []string{"kind"}, nil)
	descEnded = prometheus.NewDesc("vrep_jobs_ended_total",
		"Jobs that ended since the daemon started, by kind and state (ok, failed, interrupted).", []string{"kind", "state"}, nil)
)

// Collector exports the jobs: the progress of the running ones, and
// counts by kind and result. Every kind and state is present from the
// start (at 0).
func (l *Log) Collector() prometheus.Collector { return collector{l} }

type collector struct{ l *Log }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descProgress
	ch <- descRunning
	ch <- descEnded
}

// kinds are every kind of job, for the series present from the start.
var kinds = []Kind{InitialCopy, Resync, SeedExport, SeedImport, FailoverStart, FailoverCommit, FailoverCancel, TestStart, TestStop}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	running := map[Kind]int{}
	for _, j := range c.l.List() {
		if j.State == Running {
			running[j.Kind]++
			ch <- prometheus.MustNewConstMetric(descProgress, prometheus.GaugeValue, j.Percent/100, string(j.Kind), j.Target)
		}
	}
	ended := c.l.ended()
	for _, k := range kinds {
		ch <- prometheus.MustNewConstMetric(descRunning, prometheus.GaugeValue, float64(running[k]), string(k))
		for _, s := range []string{OK, Failed, Interrupted} {
			ch <- prometheus.MustNewConstMetric(descEnded, prometheus.CounterValue, float64(ended[[2]string{string(k), s}]), string(k), s)
		}
	}
}
