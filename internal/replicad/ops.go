package replicad

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/vrep-io/vrep/internal/events"
	"github.com/vrep-io/vrep/internal/statuspage"
	"github.com/vrep-io/vrep/internal/units"
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

// StatusView is the replica's status page: each disk with its health and
// reason, the newest point's age and the history kept, the points
// timeline of each VM, and the test failovers running.
func (d *Daemon) StatusView() (statuspage.View, error) {
	v := statuspage.View{Role: "replica", LagName: "age of the newest recovery point"}
	st, err := d.Status()
	if err != nil {
		return v, err
	}
	roots := map[string]bool{}
	for _, ds := range st.Disks {
		roots[ds.Root] = true
	}
	vms := map[string]bool{}
	for _, ds := range st.Disks {
		row := statuspage.Disk{Name: ds.Name, Health: ds.Health, Reason: ds.Reason}
		fact := func(name, value string) { row.Facts = append(row.Facts, statuspage.Fact{Name: name, Value: value}) }
		primary := ds.Primary
		if primary == "" {
			primary = ds.Root
		}
		fact("Primary", primary+map[bool]string{true: " (connected)", false: " (not connected)"}[ds.Connected])
		age := "none yet"
		if ds.LastPoint != nil {
			age = time.Duration(ds.LastPointAge * float64(time.Second)).Round(100 * time.Millisecond).String()
		}
		fact("Newest point", age)
		fact("Points", fmt.Sprint(ds.Points))
		fact("History", units.Bytes(ds.HistoryBytes))
		fact("Applied LSN", fmt.Sprint(ds.AppliedLSN))
		fact("Received", units.Bytes(ds.ReceivedBytes))
		v.Disks = append(v.Disks, row)
		vm, _, _ := strings.Cut(ds.Name, "/")
		spec := vm
		if len(roots) > 1 {
			spec = ds.Root + "/" + vm
		}
		if vms[spec] {
			continue
		}
		vms[spec] = true
		pts, err := d.Points(spec)
		if err != nil {
			return v, err
		}
		vp := statuspage.VMPoints{VM: spec}
		for _, p := range pts {
			vp.Points = append(vp.Points, statuspage.Point{ID: p.ID, Time: p.Time, Kind: p.Kind})
		}
		v.Points = append(v.Points, vp)
	}
	for _, t := range st.Tests {
		v.Notes = append(v.Notes, fmt.Sprintf("Test failover of %s running at point %d (%s), since %s.", t.VM, t.Point.ID, t.Point.Kind, t.Started))
	}
	return v, nil
}

// PublicHandler is what the replica serves over --http as well as on
// its API socket: the status page and the metrics, read-only.
func (d *Daemon) PublicHandler() http.Handler {
	return statuspage.Public(statuspage.Config{View: d.StatusView, Recorder: d.cfg.Events, Jobs: d.cfg.Jobs}, d.metricsHandler())
}
