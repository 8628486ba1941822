package primary

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/vrep-io/vrep/internal/events"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/internal/statuspage"
	"github.com/vrep-io/vrep/internal/units"
)

// HealthSamples is each replicated disk's replication health and lag
// now, for the events recorder (health changes, the status page's chart).
func (d *Daemon) HealthSamples() []events.Sample {
	var out []events.Sample
	now := time.Now()
	for _, ds := range d.Status().Disks {
		r := ds.Replication
		if r == nil {
			continue
		}
		vm, _, _ := names.Disk(ds.Name)
		out = append(out, events.Sample{Time: now, VM: vm, Disk: ds.Name, Health: string(r.Health), Reason: r.Reason,
			Lag: r.LagSeconds, LagKnown: r.LagKnown})
	}
	return out
}

// StatusView is the primary's status page: each disk with its
// replication health and reason, lag, copy frequency and LSNs.
func (d *Daemon) StatusView() (statuspage.View, error) {
	v := statuspage.View{Role: "primary", LagName: "how long the replica has not had everything logged"}
	for _, ds := range d.Status().Disks {
		row := statuspage.Disk{Name: ds.Name, Health: "Normal"}
		if h, why, ok := strings.Cut(ds.Health, ": "); ok {
			row.Health, row.Reason = h, why
		}
		fact := func(name, value string) { row.Facts = append(row.Facts, statuspage.Fact{Name: name, Value: value}) }
		if r := ds.Replication; r != nil {
			if row.Reason == "" {
				row.Health, row.Reason = string(r.Health), r.Reason
			}
			lag := "unknown"
			if r.LagKnown {
				lag = time.Duration(r.LagSeconds * float64(time.Second)).Round(100 * time.Millisecond).String()
			}
			fact("Replica", map[bool]string{true: "connected", false: "not connected"}[r.Connected])
			fact("Lag", lag)
			fact("Behind", units.Bytes(r.LagBytes))
			fact("Frequency", r.Frequency)
			fact("Initial copy", fmt.Sprintf("%d%%", r.Initial))
			fact("Acked / last LSN", fmt.Sprintf("%d / %d", r.Acked, ds.LastLSN))
		} else {
			fact("Replica", "not replicated")
			fact("Last LSN", fmt.Sprint(ds.LastLSN))
		}
		v.Disks = append(v.Disks, row)
	}
	return v, nil
}

// PublicHandler is what the primary serves over --http as well as on
// its API socket: the status page and the metrics, read-only.
func (d *Daemon) PublicHandler() http.Handler {
	return statuspage.Public(statuspage.Config{View: d.StatusView, Recorder: d.cfg.Events, Jobs: d.cfg.Jobs}, d.metricsHandler())
}
