package replicad

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/replica/health"
)

// collector exports the replica's state at scrape time from Status, so
// /metrics and vrep status never disagree. Every series is labelled with
// the primary's root, the VM and the disk (VM/DISK, as on the primary).
type collector struct{ d *Daemon }

var diskLabels = []string{"root", "vm", "disk"}

var (
	descHealth = prometheus.NewDesc("vrep_replica_health",
		"1 for the disk's replication health (Normal, Warning or Critical), 0 for the others; the reason is in vrep status.",
		append(diskLabels, "health"), nil)
	descPointAge = prometheus.NewDesc("vrep_replica_last_point_age_seconds",
		"Age of the newest recovery point: at most what an unplanned failover to it loses; absent while there is none.", diskLabels, nil)
	descLastPoint = prometheus.NewDesc("vrep_replica_last_point_timestamp_seconds",
		"Time of the newest recovery point; absent while there is none.", diskLabels, nil)
	descPoints = prometheus.NewDesc("vrep_replica_points",
		"Recovery points kept.", diskLabels, nil)
	descHistory = prometheus.NewDesc("vrep_replica_history_bytes",
		"Undo data kept to make older points readable.", diskLabels, nil)
	descApplied = prometheus.NewDesc("vrep_replica_applied_lsn",
		"LSN up to which the primary's change log is applied (durably) to the replica.", diskLabels, nil)
	descConnected = prometheus.NewDesc("vrep_replica_primary_connected",
		"1 while the primary streams to the disk.", diskLabels, nil)
	descSeeded = prometheus.NewDesc("vrep_replica_initial_copy_complete",
		"1 once the disk's initial copy is complete.", diskLabels, nil)
	descReceived = prometheus.NewDesc("vrep_replica_received_bytes_total",
		"Frame bytes (decoded) received from the primary for the disk since the daemon started.", diskLabels, nil)
	descTests = prometheus.NewDesc("vrep_replica_test_failovers",
		"Test failovers running.", nil, nil)
	descFailover = prometheus.NewDesc("vrep_replica_failover_state",
		"1 for the VM's failover state (Replicating, FailedOver, Committing, Committed), 0 for the others.", []string{"root", "vm", "state"}, nil)
	descTestVM = prometheus.NewDesc("vrep_replica_test_failover",
		"1 while a test failover of the VM runs.", []string{"root", "vm"}, nil)

	seedLabels      = []string{"root", "vm", "seed"}
	descSeedRunning = prometheus.NewDesc("vrep_replica_seed_import_running", "1 while a seed import runs (vrep seed import through the daemon), 0 once it ended; absent before the first.", seedLabels, nil)
	descSeedDone    = prometheus.NewDesc("vrep_replica_seed_import_bytes_done", "Bytes of the seed's disks imported so far.", seedLabels, nil)
	descSeedTotal   = prometheus.NewDesc("vrep_replica_seed_import_bytes_total", "Bytes of the seed's disks in all.", seedLabels, nil)
	descSeedRatio   = prometheus.NewDesc("vrep_replica_seed_import_progress_ratio", "Share of the seed's bytes imported, 0 to 1.", seedLabels, nil)
	descSeedRebuilt = prometheus.NewDesc("vrep_replica_seed_import_drives_rebuilt", "Directories (drives) of the seed found missing or damaged and rebuilt from parity.", seedLabels, nil)
	descSeedFailed  = prometheus.NewDesc("vrep_replica_seed_import_failed", "1 if the last seed import failed.", seedLabels, nil)
	descUp          = prometheus.NewDesc("vrep_replica_status_ok",
		"1 when the replica could read its catalog at this scrape.", nil, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHealth, descPointAge, descLastPoint, descPoints, descHistory, descApplied,
		descConnected, descSeeded, descReceived, descTests, descFailover, descTestVM, descUp,
		descSeedRunning, descSeedDone, descSeedTotal, descSeedRatio, descSeedRebuilt, descSeedFailed} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.d.Status()
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, daemon.Bool(err == nil))
	if err != nil {
		return
	}
	g := func(desc *prometheus.Desc, t prometheus.ValueType, v float64, l []string, more ...string) {
		ch <- prometheus.MustNewConstMetric(desc, t, v, append(l, more...)...)
	}
	for _, ds := range st.Disks {
		vm, _, _ := strings.Cut(ds.Name, "/")
		l := []string{ds.Root, vm, ds.Name}
		for _, h := range []health.Health{health.Normal, health.Warning, health.Critical} {
			g(descHealth, prometheus.GaugeValue, daemon.Bool(ds.Health == string(h)), l, string(h))
		}
		if p := ds.LastPoint; p != nil {
			g(descPointAge, prometheus.GaugeValue, ds.LastPointAge, l)
			g(descLastPoint, prometheus.GaugeValue, float64(p.Time.UnixNano())/1e9, l)
		}
		g(descPoints, prometheus.GaugeValue, float64(ds.Points), l)
		g(descHistory, prometheus.GaugeValue, float64(ds.HistoryBytes), l)
		g(descApplied, prometheus.CounterValue, float64(ds.AppliedLSN), l)
		g(descConnected, prometheus.GaugeValue, daemon.Bool(ds.Connected), l)
		g(descSeeded, prometheus.GaugeValue, daemon.Bool(ds.Seeded), l)
		g(descReceived, prometheus.CounterValue, float64(ds.ReceivedBytes), l)
	}
	ch <- prometheus.MustNewConstMetric(descTests, prometheus.GaugeValue, float64(len(st.Tests)))
	// Per VM (ROOT/VM): its failover state and whether a test runs. A VM
	// is known by its disks, or by a failover that outlived them.
	state, testing := map[string]string{}, map[string]bool{}
	for _, ds := range st.Disks {
		vm, _, _ := strings.Cut(ds.Name, "/")
		state[ds.Root+"/"+vm] = stReplicating
	}
	for _, f := range st.Failovers {
		state[f.VM] = f.State
	}
	for _, t := range st.Tests {
		testing[t.VM] = true
	}
	for key, s := range state {
		root, vm, _ := strings.Cut(key, "/")
		for _, name := range []string{stReplicating, stFailedOver, stCommitting, stCommitted} {
			ch <- prometheus.MustNewConstMetric(descFailover, prometheus.GaugeValue, daemon.Bool(s == name), root, vm, name)
		}
		ch <- prometheus.MustNewConstMetric(descTestVM, prometheus.GaugeValue, daemon.Bool(testing[key]), root, vm)
	}
	if si := st.SeedImport; si != nil {
		l := []string{si.Root, si.VM, si.SeedID}
		g(descSeedRunning, prometheus.GaugeValue, daemon.Bool(si.State == "running"), l)
		g(descSeedDone, prometheus.GaugeValue, float64(si.BytesDone), l)
		g(descSeedTotal, prometheus.GaugeValue, float64(si.BytesTotal), l)
		g(descSeedRatio, prometheus.GaugeValue, float64(si.BytesDone)/float64(max(si.BytesTotal, 1)), l)
		g(descSeedRebuilt, prometheus.GaugeValue, float64(si.DrivesRebuilt), l)
		g(descSeedFailed, prometheus.GaugeValue, daemon.Bool(si.State == "failed"), l)
	}
}

// metricsHandler serves the replica's metrics and Go's own.
func (d *Daemon) metricsHandler() http.Handler {
	return daemon.MetricsHandler(collector{d}, d.cfg.Events.ErrorsCollector("vrep_replica_errors_total"), d.cfg.Jobs.Collector())
}

// Collector is the daemon's own metrics (a host daemon gathers those of
// its primaries and its replica into one /metrics).
func (d *Daemon) Collector() prometheus.Collector { return collector{d} }
