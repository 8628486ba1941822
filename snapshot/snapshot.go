// Package snapshot takes recovery points across consistency groups.
//
// A crash-consistent point is a write barrier across every disk of a group:
// each disk is held (no write can be ordered while it is held; writes
// already ordered keep completing), the same marker is appended to every
// disk's change log, and the disks are released. On one disk, LSN order is
// the total order of its writes, so a write acknowledged before the point
// was requested is before the marker, and none ordered after the hold is.
// Holding every disk of the group at once before any marker is appended
// makes the cut consistent across disks: if a write to disk B was issued
// after a write to disk A was acknowledged, no point can hold the B write
// without the A write.
//
// The hold is measured; it lasts as long as appending the markers, a few
// microseconds, plus waiting for writers that are inside their ordering
// step.
package snapshot

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/vrep-io/vrep/hrl"
)

// Disk is a protected disk a point can be taken on: the tracked volume.
type Disk interface {
	// Hold stops writes from being ordered until release is called.
	Hold() (release func())
	// AppendMarkerHeld appends a marker while the disk is held.
	AppendMarkerHeld(m hrl.Marker) (lsn uint64, b *hrl.Batch, err error)
}

// Point is a recovery point as the primary took it.
type Point struct {
	ID     uint64
	Time   time.Time
	Kind   uint8 // hrl.KindCrash or hrl.KindApp
	Group  string
	LSNs   map[string]uint64 // disk name → LSN of the point's marker
	Hold   time.Duration     // how long writes were held
	Reason string            // why an app-consistent request gave a crash-consistent point
}

// ErrIncomplete is returned when a marker could not be appended to every
// disk: the point must not be used.
var ErrIncomplete = errors.New("snapshot: point incomplete")

// Group is a consistency group: disks whose points are taken at the same
// instant. It is safe for concurrent use; points are taken one at a time.
type Group struct {
	name  string
	names []string
	disks []Disk

	take sync.Mutex
	// hold summarizes recent hold times (a sliding window of holdWindow):
	// the quantiles of a Prometheus summary, as /metrics would show them.
	hold prometheus.Summary
}

// holdWindow is how far back hold statistics look.
const holdWindow = 10 * time.Minute

// NewGroup makes a group of the named disks.
func NewGroup(name string, disks map[string]Disk) (*Group, error) {
	if len(name) > hrl.MaxGroupName || name == "" {
		return nil, fmt.Errorf("snapshot: group name must be 1 to %d bytes", hrl.MaxGroupName)
	}
	if len(disks) == 0 {
		return nil, fmt.Errorf("snapshot: group %s has no disks", name)
	}
	g := &Group{name: name, hold: prometheus.NewSummary(prometheus.SummaryOpts{
		Name:        "vrep_point_hold_seconds",
		Help:        "How long a point held the group's writes.",
		ConstLabels: prometheus.Labels{"group": name},
		Objectives:  map[float64]float64{0.5: 0.05, 0.99: 0.001, 1: 0},
		MaxAge:      holdWindow,
	})}
	for n := range disks {
		g.names = append(g.names, n)
	}
	// A fixed order keeps two groups sharing a disk from deadlocking.
	sort.Strings(g.names)
	for _, n := range g.names {
		g.disks = append(g.disks, disks[n])
	}
	return g, nil
}

// Name returns the group's name.
func (g *Group) Name() string { return g.name }

// Disks returns the names of the group's disks, sorted.
func (g *Group) Disks() []string { return slices.Clone(g.names) }

func newID() uint64 {
	var b [8]byte
	rand.Read(b[:])
	// Time-ordered ids read well in listings; the low bits keep two points
	// of one nanosecond apart.
	return uint64(time.Now().UnixNano())&^0xffff | binary.LittleEndian.Uint64(b[:])&0xffff
}

// Take takes a point of the given kind and waits until its markers are in
// every log (not yet durable: the next flush or ship makes them so).
func (g *Group) Take(kind uint8, reason string) (Point, error) {
	return g.TakeDecided(func() (uint8, string) { return kind, reason })
}

// TakeDecided takes a point whose kind is decided while every disk of the
// group is held: decide is called once, after the last disk is held and
// before any marker is appended, and the kind and reason it returns are
// what the markers and the returned point say. What the point holds is
// fixed by then (no write can be ordered until the release), so a caller
// that asks there "was the application still quiesced?" gets an answer
// that is true of the point's contents. decide must be quick and must not
// write to the group's disks: writes are held while it runs.
func (g *Group) TakeDecided(decide func() (kind uint8, reason string)) (Point, error) {
	g.take.Lock()
	defer g.take.Unlock()
	id := newID()
	releases := make([]func(), 0, len(g.disks))
	start := time.Now()
	for _, d := range g.disks {
		releases = append(releases, d.Hold())
	}
	// The point's time is read inside the hold: every write acknowledged
	// before it is in the point, and none submitted after it.
	now := time.Now()
	kind, reason := decide()
	p := Point{ID: id, Time: now, Kind: kind, Group: g.name, LSNs: map[string]uint64{}, Reason: reason}
	m := hrl.Marker{ID: p.ID, Time: now.UnixNano(), Kind: kind, Group: g.name}
	batches := make([]*hrl.Batch, 0, len(g.disks))
	var err error
	for i, d := range g.disks {
		lsn, b, aerr := d.AppendMarkerHeld(m)
		if aerr != nil {
			err = fmt.Errorf("%w: disk %s: %v", ErrIncomplete, g.names[i], aerr)
			break
		}
		p.LSNs[g.names[i]] = lsn
		batches = append(batches, b)
	}
	for i := len(releases) - 1; i >= 0; i-- {
		releases[i]()
	}
	p.Hold = time.Since(start)
	g.record(p.Hold)
	for _, b := range batches {
		if werr := b.Wait(); werr != nil && err == nil {
			err = fmt.Errorf("%w: %v", ErrIncomplete, werr)
		}
	}
	return p, err
}

func (g *Group) record(d time.Duration) { g.hold.Observe(d.Seconds()) }

// HoldStats returns the p50, p99 and maximum of the hold times of the
// last ten minutes (zero when no point was taken in them).
func (g *Group) HoldStats() (p50, p99, maxHold time.Duration) {
	var m dto.Metric
	if err := g.hold.Write(&m); err != nil {
		return 0, 0, 0
	}
	for _, q := range m.GetSummary().GetQuantile() {
		v := q.GetValue()
		if math.IsNaN(v) {
			continue // no observation in the window
		}
		d := time.Duration(v * float64(time.Second))
		switch q.GetQuantile() {
		case 0.5:
			p50 = d
		case 0.99:
			p99 = d
		case 1:
			maxHold = d
		}
	}
	return p50, p99, maxHold
}
