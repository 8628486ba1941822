package primary

import (
	"time"

	"github.com/vrep-io/vrep/internal/events"
	"github.com/vrep-io/vrep/internal/names"
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
