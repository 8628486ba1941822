package primary

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/events"
	"github.com/vrep-io/vrep/internal/jobs"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/replica/ship"
	"github.com/vrep-io/vrep/snapshot"
)

// The daemon's API, on a unix socket (file permissions are its access
// control):
//
//	GET  /v1/status                             Status
//	GET  /v1/points                             []PointInfo
//	POST /v1/points?target=X[&app=1]            PointInfo
//	POST /v1/replication/resume?vm=VM           ResumeInfo
//	POST /v1/seed/export                        NDJSON progress (seed.go)
//	POST /v1/replication?[vm=VM&]frequency=F    ReplicationSettings
//	POST /v1/resync, POST /v1/verify             see resync.go
//	GET  /metrics                               Prometheus
//	GET  /v1/events[?since=DUR]                 []events.Event, oldest first
//	GET  /v1/measure?vm=VM[&window=DUR]         Measure
//	GET  /[?window=DUR&vm=VM]                   the status page (HTML)
//
// F is "continuous" or a duration (30s, 5m, 15m); without vm the
// frequency changes for every VM.
// Errors are {"error": "one sentence"} with a 4xx or 5xx status.

// DiskStatus is one disk in /v1/status.
type DiskStatus struct {
	Name           string `json:"name"`
	Image          string `json:"image"`
	Size           int64  `json:"size"`
	Health         string `json:"health"`
	LastLSN        uint64 `json:"last_lsn"`
	SyncedLSN      uint64 `json:"synced_lsn"`
	Checkpoint     uint64 `json:"checkpoint"`
	Segments       int    `json:"log_segments"`
	ResyncRequired bool   `json:"resync_required"`
	// Replication is present when the disk is replicated.
	Replication *ship.ShipStatus `json:"replication,omitempty"`
}

// GroupStatus is one consistency group in /v1/status.
type GroupStatus struct {
	Name      string   `json:"name"`
	Disks     []string `json:"disks"`
	HoldP50us int64    `json:"hold_p50_us"`
	HoldP99us int64    `json:"hold_p99_us"`
	HoldMaxus int64    `json:"hold_max_us"`
}

// PointInfo is a point as the API shows it.
type PointInfo struct {
	ID     uint64            `json:"id,string"` // a string: 19 digits do not survive a float64 (jq, JavaScript)
	Time   time.Time         `json:"time"`
	Kind   string            `json:"kind"`
	Group  string            `json:"group"`
	LSNs   map[string]uint64 `json:"lsns"`
	HoldUS int64             `json:"hold_us"`
	Reason string            `json:"reason,omitempty"`
}

// Status is /v1/status.
type Status struct {
	Disks     []DiskStatus  `json:"disks"`
	Groups    []GroupStatus `json:"groups"`
	LastPoint *PointInfo    `json:"last_point,omitempty"`
}

func pointInfo(p snapshot.Point) PointInfo {
	return PointInfo{ID: p.ID, Time: p.Time, Kind: hrl.KindName(p.Kind), Group: p.Group, LSNs: p.LSNs,
		HoldUS: p.Hold.Microseconds(), Reason: p.Reason}
}

// Status reports the daemon's disks, groups and newest point.
func (d *Daemon) Status() Status {
	var st Status
	for _, disk := range d.Disks {
		v := disk.Volume
		ds := DiskStatus{Name: disk.Name, Image: disk.Path, Size: v.Size(), Health: "Normal",
			LastLSN: v.Log().LastLSN(), SyncedLSN: v.Log().SyncedLSN(), Checkpoint: v.Checkpoint(),
			Segments: len(v.Log().Segments()), ResyncRequired: v.ResyncRequired()}
		switch {
		case ds.ResyncRequired:
			ds.Health = "Critical: resync required (change log overflowed)"
		case v.Err() != nil:
			ds.Health = "Warning: " + v.Err().Error()
		}
		if r := disk.superseded.Load(); r != nil {
			ds.Health = *r
		}
		if h := d.stoppingHealth(disk.Name); h != "" {
			ds.Health = h
		}
		if sh := d.shipper(disk.Name); sh != nil {
			rs := sh.Status()
			ds.Replication = &rs
		}
		st.Disks = append(st.Disks, ds)
	}
	if p := d.points; p != nil {
		for _, name := range slices.Sorted(maps.Keys(p.groups)) {
			g := p.groups[name]
			p50, p99, mx := g.HoldStats()
			st.Groups = append(st.Groups, GroupStatus{Name: name, Disks: g.Disks(), HoldP50us: p50.Microseconds(),
				HoldP99us: p99.Microseconds(), HoldMaxus: mx.Microseconds()})
		}
		p.mu.Lock()
		if n := len(p.recent); n > 0 {
			pi := pointInfo(p.recent[n-1])
			st.LastPoint = &pi
		}
		p.mu.Unlock()
	}
	return st
}

func (d *Daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", d.metricsHandler())
	mux.Handle("GET /{$}", d.PublicHandler())
	mux.Handle("GET /v1/events", events.Handler(d.cfg.Events))
	mux.Handle("GET /v1/jobs", jobs.Handler(d.cfg.Jobs))
	mux.Handle("GET /v1/measure", d.measureHandler())
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		daemon.WriteJSON(w, http.StatusOK, d.Status())
	})
	mux.HandleFunc("GET /v1/points", func(w http.ResponseWriter, r *http.Request) {
		d.points.mu.Lock()
		out := make([]PointInfo, 0, len(d.points.recent))
		for _, p := range d.points.recent {
			out = append(out, pointInfo(p))
		}
		d.points.mu.Unlock()
		daemon.WriteJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST /v1/points", func(w http.ResponseWriter, r *http.Request) {
		target := r.URL.Query().Get("target")
		app := r.URL.Query().Get("app") == "1"
		p, err := d.TakePoint(r.Context(), target, app)
		switch {
		case errors.Is(err, ErrUnknownTarget):
			daemon.WriteErr(w, http.StatusNotFound, err)
		case err != nil:
			daemon.WriteErr(w, http.StatusInternalServerError, err)
		default:
			daemon.WriteJSON(w, http.StatusOK, pointInfo(p))
		}
	})
	mux.HandleFunc("POST /v1/seed/export", d.seedHandler)
	mux.HandleFunc("POST /v1/replication/resume", func(w http.ResponseWriter, r *http.Request) {
		info, err := d.Resume(r.URL.Query().Get("vm"))
		if err != nil {
			replicationErr(w, err)
			return
		}
		daemon.WriteJSON(w, http.StatusOK, info)
	})
	mux.HandleFunc("POST /v1/replication", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f := q.Get("frequency")
		interval, err := ParseFrequency(f)
		if err != nil {
			daemon.WriteErr(w, http.StatusBadRequest, err)
			return
		}
		st, err := d.SetFrequency(q.Get("vm"), interval)
		if err != nil {
			replicationErr(w, err)
			return
		}
		daemon.WriteJSON(w, http.StatusOK, st)
	})
	d.resyncRoutes(mux)
	return mux
}

// ErrBadFrequency is returned for a copy frequency that is neither
// continuous nor a positive duration.
var ErrBadFrequency = errors.New("bad copy frequency")

// ParseFrequency parses a copy frequency: "continuous" or a positive
// duration such as 30s, 5m or 15m.
func ParseFrequency(s string) (time.Duration, error) {
	if s == "continuous" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%w %q: give continuous or a duration such as 30s, 5m or 15m", ErrBadFrequency, s)
	}
	return d, nil
}

func replicationErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, names.ErrBadName):
		daemon.WriteErr(w, http.StatusBadRequest, err)
	case errors.Is(err, ErrUnknownTarget):
		daemon.WriteErr(w, http.StatusNotFound, err)
	case errors.Is(err, ErrNotReplicating), errors.Is(err, ErrDaemonWide):
		daemon.WriteErr(w, http.StatusConflict, err)
	default:
		daemon.WriteErr(w, http.StatusInternalServerError, err)
	}
}

// Handler is the API, for a host daemon that serves it (Config.NoAPI).
func (d *Daemon) Handler() http.Handler { return daemon.CheckQuery(routes, d.handler()) }
