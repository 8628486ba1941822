package primary

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/replica/health"
)

// collector exports the daemon's state at scrape time: the same figures
// as /v1/status, so the two never disagree.
type collector struct{ d *Daemon }

var (
	descLastLSN    = prometheus.NewDesc("vrep_disk_last_lsn", "LSN of the newest record in the disk's change log.", []string{"disk"}, nil)
	descSyncedLSN  = prometheus.NewDesc("vrep_disk_synced_lsn", "LSN up to which the change log is durable.", []string{"disk"}, nil)
	descCheckpoint = prometheus.NewDesc("vrep_disk_merged_lsn", "LSN merged into the disk's image.", []string{"disk"}, nil)
	descSegments   = prometheus.NewDesc("vrep_disk_log_segments", "Change-log segment files kept.", []string{"disk"}, nil)
	descResync     = prometheus.NewDesc("vrep_disk_resync_required", "1 when the disk left log mode and needs a resync.", []string{"disk"}, nil)
	descHold       = prometheus.NewDesc("vrep_point_hold_seconds", "Recent write-hold times of a group's points, by quantile.", []string{"group", "quantile"}, nil)
	descLastPoint  = prometheus.NewDesc("vrep_last_point_timestamp_seconds", "Time of the newest point taken.", nil, nil)
	descConnected  = prometheus.NewDesc("vrep_replication_connected", "1 while a stream to the replica is open.", []string{"disk"}, nil)
	descHealth     = prometheus.NewDesc("vrep_replication_health", "Replication health: 0 Normal, 1 Warning, 2 Critical (the reason is in vrep status).", []string{"disk"}, nil)
	descLag        = prometheus.NewDesc("vrep_replication_lag_seconds", "How long the replica has not had everything logged; absent while unknown.", []string{"disk"}, nil)
	descFrequency  = prometheus.NewDesc("vrep_replication_frequency_seconds", "Copy frequency; 0 is continuous.", []string{"disk"}, nil)
	descAcked      = prometheus.NewDesc("vrep_replication_acked_lsn", "LSN up to which the replica acknowledged the log.", []string{"disk"}, nil)
	descLagBytes   = prometheus.NewDesc("vrep_replication_lag_bytes", "Log bytes the replica has not acknowledged.", []string{"disk"}, nil)
	descWire       = prometheus.NewDesc("vrep_replication_wire_bytes_total", "Frame bytes sent to the replica, headers included, after compression.", []string{"disk"}, nil)
	descShipped    = prometheus.NewDesc("vrep_replication_record_bytes_total", "Record payload bytes the replica acknowledged (before compression).", []string{"disk"}, nil)
	descInitial    = prometheus.NewDesc("vrep_replication_initial_copy_ratio", "Initial copy progress, 0 to 1.", []string{"disk"}, nil)
	descHealthSet  = prometheus.NewDesc("vrep_replication_health_state", "1 for the disk's replication health, 0 for the other two.", []string{"disk", "health"}, nil)
	descResyncPct  = prometheus.NewDesc("vrep_replication_resync_ratio", "Progress of the disk's newest resync, 0 to 1 (1 once done); absent when none was needed since the start.", []string{"disk"}, nil)
	descResyncSt   = prometheus.NewDesc("vrep_replication_resync_state", "1 for the state of the disk's newest resync (waiting, running, done, failed), 0 for the others; absent when none was needed since the start.", []string{"disk", "state"}, nil)
	descSeedWait   = prometheus.NewDesc("vrep_replication_awaiting_seed", "1 while the disk waits for the replica to import its seed.", []string{"disk"}, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLastLSN, descSyncedLSN, descCheckpoint, descSegments, descResync, descHold, descLastPoint,
		descConnected, descHealth, descLag, descFrequency, descAcked, descLagBytes, descWire, descShipped, descInitial, descHealthSet,
		descResyncPct, descResyncSt, descSeedWait} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := c.d.Status()
	for _, d := range st.Disks {
		ch <- prometheus.MustNewConstMetric(descLastLSN, prometheus.CounterValue, float64(d.LastLSN), d.Name)
		ch <- prometheus.MustNewConstMetric(descSyncedLSN, prometheus.CounterValue, float64(d.SyncedLSN), d.Name)
		ch <- prometheus.MustNewConstMetric(descCheckpoint, prometheus.CounterValue, float64(d.Checkpoint), d.Name)
		ch <- prometheus.MustNewConstMetric(descSegments, prometheus.GaugeValue, float64(d.Segments), d.Name)
		resync := 0.0
		if d.ResyncRequired {
			resync = 1
		}
		ch <- prometheus.MustNewConstMetric(descResync, prometheus.GaugeValue, resync, d.Name)
		if r := d.Replication; r != nil {
			connected := 0.0
			if r.Connected {
				connected = 1
			}
			ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, connected, d.Name)
			level := map[health.Health]float64{health.Normal: 0, health.Warning: 1, health.Critical: 2}[r.Health]
			ch <- prometheus.MustNewConstMetric(descHealth, prometheus.GaugeValue, level, d.Name)
			if r.LagKnown {
				ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, r.LagSeconds, d.Name)
			}
			freq, _ := ParseFrequency(r.Frequency)
			ch <- prometheus.MustNewConstMetric(descFrequency, prometheus.GaugeValue, freq.Seconds(), d.Name)
			ch <- prometheus.MustNewConstMetric(descAcked, prometheus.CounterValue, float64(r.Acked), d.Name)
			ch <- prometheus.MustNewConstMetric(descLagBytes, prometheus.GaugeValue, float64(r.LagBytes), d.Name)
			ch <- prometheus.MustNewConstMetric(descWire, prometheus.CounterValue, float64(r.WireSent), d.Name)
			ch <- prometheus.MustNewConstMetric(descShipped, prometheus.CounterValue, float64(r.Shipped), d.Name)
			ch <- prometheus.MustNewConstMetric(descInitial, prometheus.GaugeValue, float64(r.Initial)/100, d.Name)
			for _, h := range []health.Health{health.Normal, health.Warning, health.Critical} {
				ch <- prometheus.MustNewConstMetric(descHealthSet, prometheus.GaugeValue, daemon.Bool(r.Health == h), d.Name, string(h))
			}
			ch <- prometheus.MustNewConstMetric(descSeedWait, prometheus.GaugeValue, daemon.Bool(r.AwaitingSeed != 0), d.Name)
			if rs := r.Resync; rs != nil {
				ch <- prometheus.MustNewConstMetric(descResyncPct, prometheus.GaugeValue, float64(rs.Percent)/100, d.Name)
				for _, s := range []string{"waiting", "running", "done", "failed"} {
					ch <- prometheus.MustNewConstMetric(descResyncSt, prometheus.GaugeValue, daemon.Bool(rs.State == s), d.Name, s)
				}
			}
		}
	}
	for _, g := range st.Groups {
		ch <- prometheus.MustNewConstMetric(descHold, prometheus.GaugeValue, float64(g.HoldP50us)/1e6, g.Name, "0.5")
		ch <- prometheus.MustNewConstMetric(descHold, prometheus.GaugeValue, float64(g.HoldP99us)/1e6, g.Name, "0.99")
		ch <- prometheus.MustNewConstMetric(descHold, prometheus.GaugeValue, float64(g.HoldMaxus)/1e6, g.Name, "1")
	}
	if p := st.LastPoint; p != nil {
		ch <- prometheus.MustNewConstMetric(descLastPoint, prometheus.GaugeValue, float64(p.Time.UnixNano())/1e9)
	}
}

// metricsHandler serves the daemon's metrics and Go's own.
func (d *Daemon) metricsHandler() http.Handler {
	return daemon.MetricsHandler(collector{d}, d.cfg.Events.ErrorsCollector("vrep_replication_errors_total"), d.cfg.Jobs.Collector())
}

// Collector is the daemon's own metrics (a host daemon gathers those of
// its primaries and its replica into one /metrics).
func (d *Daemon) Collector() prometheus.Collector { return collector{d} }
