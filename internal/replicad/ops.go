package replicad

import (
	"strings"
	"time"

	"github.com/vrep-io/vrep/internal/events"
)

// HealthSamples is each replicated disk's health and the newest point's
// age now, for the events recorder (health changes, the status page's
// chart). A disk is named VM/DISK, or ROOT/VM/DISK when another
// primary's root holds a disk of the same name.
func (d *Daemon) HealthSamples() []events.Sample {
	st, err := d.Status()
	if err != nil {
		d.log.Warn("replica: health not sampled", "err", err)
		return nil
	}
	count := map[string]int{}
	for _, ds := range st.Disks {
		count[ds.Name]++
	}
	now := time.Now()
	var out []events.Sample
	for _, ds := range st.Disks {
		vm, _, _ := strings.Cut(ds.Name, "/")
		name := ds.Name
		if count[name] > 1 {
			name = ds.Root + "/" + name
		}
		out = append(out, events.Sample{Time: now, VM: vm, Disk: name, Health: ds.Health, Reason: ds.Reason,
			Lag: ds.LastPointAge, LagKnown: ds.LastPoint != nil})
	}
	return out
}
