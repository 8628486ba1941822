package primary

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/events"
	"github.com/vrep-io/vrep/replica/health"
	"github.com/vrep-io/vrep/replica/ship"
)

// batchLog keeps each disk's acknowledged batches for a day (and at most
// maxBatches), for vrep measure. The zero value is ready; safe for
// concurrent use.
type batchLog struct {
	mu sync.Mutex
	by map[string][]ship.Batch
}

const (
	batchKeep  = 24 * time.Hour
	maxBatches = 100_000
)

// adder returns the shipper's OnBatch for disk.
func (l *batchLog) adder(disk string) func(ship.Batch) {
	return func(b ship.Batch) {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.by == nil {
			l.by = map[string][]ship.Batch{}
		}
		bs := append(l.by[disk], b)
		cut := 0
		for cut < len(bs) && (len(bs)-cut > maxBatches || b.At.Sub(bs[cut].At) > batchKeep) {
			cut++
		}
		l.by[disk] = bs[cut:]
	}
}

// since returns disk's batches acknowledged at or after t.
func (l *batchLog) since(disk string, t time.Time) []ship.Batch {
	l.mu.Lock()
	defer l.mu.Unlock()
	bs := l.by[disk]
	i, _ := slices.BinarySearchFunc(bs, t, func(b ship.Batch, t time.Time) int { return b.At.Compare(t) })
	return slices.Clone(bs[i:])
}

// Measure is a VM's replication statistics over a window, as Hyper-V's
// Measure-VMReplication reports them.
type Measure struct {
	VM     string   `json:"vm"`
	Disks  []string `json:"disks"`
	Window string   `json:"window"`
	// State is Replicating, Not connected, Initial replication,
	// Resynchronization required or Stopped; Mode is Primary.
	State  string   `json:"state"`
	Mode   string   `json:"mode"`
	Health string   `json:"health"`
	Reason []string `json:"reasons,omitempty"`
	// LastReplication is the newest ack of any of the VM's disks.
	LastReplication time.Time `json:"last_replication_time,omitzero"`
	// PendingBytes is the log the replica has not acknowledged.
	PendingBytes int64 `json:"pending_bytes"`
	// Cycles are the batches acknowledged in the window; sizes are record
	// payload bytes per batch (WireBytes after compression), latencies
	// from sending a batch to its ack.
	Cycles         int     `json:"successful_cycles"`
	Bytes          int64   `json:"bytes"`
	WireBytes      int64   `json:"wire_bytes"`
	AverageSize    int64   `json:"average_size_bytes"`
	MaximumSize    int64   `json:"maximum_size_bytes"`
	AverageLatency float64 `json:"average_latency_seconds"`
	MaximumLatency float64 `json:"maximum_latency_seconds"`
	// Errors counts interruptions of the VM's streams in the window (from
	// the events log; 0 when the daemon keeps none).
	Errors int `json:"errors"`
}

// ErrBadWindow is returned for a measuring window that is not a positive
// duration.
var ErrBadWindow = errors.New("primary: bad window")

// Measure returns a VM's replication statistics over the window before
// now (a day at most: what the daemon keeps).
func (d *Daemon) Measure(vm string, window time.Duration) (Measure, error) {
	if window <= 0 || window > batchKeep {
		return Measure{}, fmt.Errorf("%w: the window must be a duration up to %s", ErrBadWindow, health.FrequencyName(batchKeep))
	}
	disks, err := d.vmShippers(vm)
	if err != nil {
		return Measure{}, err
	}
	now := time.Now()
	from := now.Add(-window)
	m := Measure{VM: vm, Window: health.FrequencyName(window), Mode: "Primary", Health: string(health.Normal), State: "Replicating"}
	rank := map[health.Health]int{health.Normal: 0, health.Warning: 1, health.Critical: 2}
	var latency time.Duration
	for _, disk := range disks {
		m.Disks = append(m.Disks, disk.Name)
		st := d.shipper(disk.Name).Status()
		if rank[st.Health] > rank[health.Health(m.Health)] {
			m.Health = string(st.Health)
		}
		if st.Reason != "" {
			m.Reason = append(m.Reason, disk.Name+": "+st.Reason)
		}
		if st.LastAck.After(m.LastReplication) {
			m.LastReplication = st.LastAck
		}
		m.PendingBytes += st.LagBytes
		switch {
		case disk.Volume.ResyncRequired():
			m.State = "Resynchronization required"
		case st.Health == health.Critical && !st.Connected && m.State != "Resynchronization required":
			m.State = "Stopped"
		case !st.Connected && m.State == "Replicating":
			m.State = "Not connected"
		case st.Initial < 100 && m.State == "Replicating":
			m.State = "Initial replication"
		}
		for _, b := range d.batches.since(disk.Name, from) {
			m.Cycles++
			m.Bytes += b.Bytes
			m.WireBytes += b.Wire
			m.MaximumSize = max(m.MaximumSize, b.Bytes)
			latency += b.Latency
			m.MaximumLatency = max(m.MaximumLatency, b.Latency.Seconds())
		}
	}
	if m.Cycles > 0 {
		m.AverageSize = m.Bytes / int64(m.Cycles)
		m.AverageLatency = (latency / time.Duration(m.Cycles)).Seconds()
	}
	if rec := d.cfg.Events; rec != nil {
		evs, err := rec.Events(from)
		if err != nil {
			return m, err
		}
		for _, e := range evs {
			if e.Kind == events.Interrupted && slices.Contains(m.Disks, e.Disk) {
				m.Errors++
			}
		}
	}
	return m, nil
}

// measureHandler serves GET /v1/measure?vm=VM[&window=DUR] (default one
// hour).
func (d *Daemon) measureHandler() http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		window := time.Hour
		if s := q.Get("window"); q.Has("window") {
			var err error
			if window, err = time.ParseDuration(s); err != nil || window <= 0 {
				daemon.WriteErr(w, http.StatusBadRequest, fmt.Errorf("%w %q: give a duration up to %s, such as 1h or 30m", ErrBadWindow, s, health.FrequencyName(batchKeep)))
				return
			}
		}
		m, err := d.Measure(q.Get("vm"), window)
		switch {
		case errors.Is(err, ErrBadWindow):
			daemon.WriteErr(w, http.StatusBadRequest, err)
		case err != nil:
			replicationErr(w, err)
		default:
			daemon.WriteJSON(w, http.StatusOK, m)
		}
	}
}
