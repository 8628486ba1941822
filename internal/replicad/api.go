package replicad

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/events"
	"github.com/vrep-io/vrep/internal/jobs"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/replica/health"
	"github.com/vrep-io/vrep/replica/store"
)

// The replica's API, on a unix socket (file permissions are its access
// control):
//
//	GET  /v1/status                         Status
//	GET  /metrics                           Prometheus
//	GET  /v1/events[?since=DUR]             []events.Event, oldest first
//	GET  /[?window=DUR&vm=VM]               the status page (HTML)
//	GET  /v1/points?vm=VM                   []VMPoint, oldest first
//	POST /v1/failover/test?vm=VM[&point=ID] TestInfo
//	POST /v1/failover/test-stop?vm=VM[&force=1] TestInfo (409 while in use)
//	POST /v1/failover/start?vm=VM[&point=ID|latest|latest-app] FailoverInfo
//	POST /v1/failover/cancel?vm=VM[&force=1] FailoverInfo (409 while in use)
//	POST /v1/failover/commit?vm=VM          FailoverInfo
//	POST /v1/seed/import                    NDJSON (seed.go)
//
// VM is "VM", or "ROOT/VM" when several primaries replicate a VM of that
// name. In the failover calls it may also name a consistency group
// (GROUP or ROOT/GROUP; a VM's name wins): they then act on every VM of
// the group and answer a GroupInfo (its "group" field tells it apart). Errors are {"error": "one sentence"} with a 4xx or 5xx status.

// Status is GET /v1/status.
type Status struct {
	Role  string       `json:"role"` // "replica"
	Disks []DiskStatus `json:"disks"`
	Tests []TestInfo   `json:"tests"`
	// Failovers are the VMs failed over to this replica.
	Failovers []FailoverInfo `json:"failovers"`
	// SeedImport is the seed import running, or the last one finished
	// since the daemon started (vrep seed import through the daemon).
	SeedImport *SeedImportStatus `json:"seed_import,omitempty"`
}

// DiskStatus is one replicated disk.
type DiskStatus struct {
	Name   string `json:"name"` // VM/DISK
	Root   string `json:"root"` // the primary's storage root
	Size   int64  `json:"size"`
	Health string `json:"health"` // Normal, Warning or Critical
	Reason string `json:"reason,omitempty"`
	Seeded bool   `json:"initial_copy_complete"`
	// Connected says whether the primary streams to the disk now; Since
	// is when its stream opened or closed (or the replica started).
	Primary   string    `json:"primary,omitempty"`
	Connected bool      `json:"connected"`
	Since     time.Time `json:"since"`
	// Frequency and PointsEvery are what the primary announced: the copy
	// frequency, and how often it takes points (seconds; 0: unknown).
	Frequency    string    `json:"frequency,omitempty"`
	PointsEvery  float64   `json:"points_every_seconds,omitempty"`
	LastApplied  time.Time `json:"last_applied"`
	AppliedLSN   uint64    `json:"applied_lsn"`
	Points       int       `json:"points"`
	LastPoint    *VMPoint  `json:"last_point,omitempty"`
	HistoryBytes int64     `json:"history_bytes"`
	// LastPointAge is how old the newest point is: how much an unplanned
	// failover to it would lose, at most.
	LastPointAge float64 `json:"last_point_age_seconds"`
	// ReceivedBytes counts what primaries sent for the disk since the
	// daemon started (decoded frames).
	ReceivedBytes int64 `json:"received_bytes"`
}

// VMPoint is a recovery point of a VM: present on every disk of the VM.
type VMPoint struct {
	ID    uint64            `json:"id,string"` // a string: 19 digits do not survive a float64 (jq, JavaScript)
	Time  time.Time         `json:"time"`
	Kind  string            `json:"kind"`
	Group string            `json:"group"`
	LSNs  map[string]uint64 `json:"lsns"` // by disk name
	// HistoryBytes is the undo data newer than the point, on all the VM's
	// disks: what keeping it readable costs.
	HistoryBytes int64 `json:"history_bytes"`
}

// TestInfo describes a test failover.
type TestInfo struct {
	VM      string   `json:"vm"`
	Point   VMPoint  `json:"point"`
	Exports []string `json:"nbd_exports"`
	Files   []string `json:"files,omitempty"`
	Started string   `json:"started"`
}

// vmDisks resolves VM or ROOT/VM to its root, VM name and disk keys.
func (d *Daemon) vmDisks(spec string) (root, vm string, keys []string, err error) {
	wantRoot, vm, hasRoot := strings.Cut(spec, "/")
	if !hasRoot {
		vm, wantRoot = wantRoot, ""
	} else if err := names.Part(wantRoot); err != nil {
		return "", "", nil, err
	}
	if err := names.Part(vm); err != nil {
		return "", "", nil, err
	}
	all, err := d.Catalog.Disks()
	if err != nil {
		return "", "", nil, err
	}
	roots := map[string][]string{}
	for _, k := range all {
		p := strings.Split(k, "/")
		if p[1] == vm && (wantRoot == "" || p[0] == wantRoot) {
			roots[p[0]] = append(roots[p[0]], k)
		}
	}
	switch len(roots) {
	case 0:
		return "", "", nil, notFound("no VM %q is replicated here", spec)
	case 1:
		for r, ks := range roots {
			return r, vm, ks, nil
		}
	}
	var rs []string
	for r := range roots {
		rs = append(rs, r)
	}
	slices.Sort(rs)
	return "", "", nil, conflict("VM %q is replicated from several primaries (%s): say which, as ROOT/%s", vm, strings.Join(rs, ", "), vm)
}

func diskName(key string) string { return key[strings.IndexByte(key, '/')+1:] }

// Points returns the points of a VM present on all its disks, oldest first.
func (d *Daemon) Points(spec string) ([]VMPoint, error) {
	_, _, keys, err := d.vmDisks(spec)
	if err != nil {
		return nil, err
	}
	return d.points(keys)
}

func (d *Daemon) points(keys []string) ([]VMPoint, error) {
	byID := map[uint64]*VMPoint{}
	count := map[uint64]int{}
	for _, k := range keys {
		h, err := d.Catalog.History(k)
		if err != nil {
			return nil, err
		}
		for i, p := range h.Points {
			vp := byID[p.ID]
			if vp == nil {
				vp = &VMPoint{ID: p.ID, Time: time.Unix(0, p.Time), Kind: hrl.KindName(p.Kind), Group: p.Group, LSNs: map[string]uint64{}}
				byID[p.ID] = vp
			}
			vp.LSNs[diskName(k)] = p.LSN
			vp.HistoryBytes += h.AfterPoint[i]
			count[p.ID]++
		}
	}
	var out []VMPoint
	for id, vp := range byID {
		if count[id] == len(keys) {
			out = append(out, *vp)
		}
	}
	slices.SortFunc(out, func(a, b VMPoint) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return cmpU64(a.ID, b.ID)
	})
	return out, nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Status reports every disk and test failover.
func (d *Daemon) Status() (Status, error) {
	st := Status{Role: "replica", Disks: []DiskStatus{}, Tests: []TestInfo{}}
	keys, err := d.Catalog.Disks()
	if err != nil {
		return st, err
	}
	for _, k := range keys {
		h, err := d.Catalog.History(k)
		if err != nil {
			return st, err
		}
		ds := DiskStatus{Name: diskName(k), Root: k[:strings.IndexByte(k, '/')], Size: h.Size, Seeded: h.Seeded,
			AppliedLSN: h.Applied, Points: len(h.Points), HistoryBytes: h.UndoBytes}
		if n := len(h.Points); n > 0 {
			p := h.Points[n-1]
			vp := VMPoint{ID: p.ID, Time: time.Unix(0, p.Time), Kind: hrl.KindName(p.Kind), Group: p.Group,
				LSNs: map[string]uint64{ds.Name: p.LSN}, HistoryBytes: h.AfterPoint[n-1]}
			ds.LastPoint = &vp
			ds.LastPointAge = time.Since(vp.Time).Seconds()
		}
		if fi, err := os.Stat(filepath.Join(d.cfg.Data, filepath.FromSlash(k), "state")); err == nil {
			ds.LastApplied = fi.ModTime()
		}
		si := d.srv.Stream(k)
		ds.Primary, ds.Connected, ds.Since, ds.ReceivedBytes = si.Primary, si.Connected, si.Since, si.Received
		if si.PointsEvery > 0 {
			ds.Frequency, ds.PointsEvery = health.FrequencyName(si.Interval), si.PointsEvery.Seconds()
		}
		in := health.ReplicaState{Seeded: h.Seeded, Connected: si.Connected, Since: si.Since,
			Interval: si.Interval, PointsEvery: si.PointsEvery, RPO: d.cfg.RPO.For(strings.Split(k, "/")[1])}
		if ds.LastPoint != nil {
			in.LastPoint = ds.LastPoint.Time
		}
		health, why := health.JudgeReplica(in, time.Now())
		ds.Health, ds.Reason = string(health), why
		st.Disks = append(st.Disks, ds)
	}
	st.Tests = d.shownTests()
	st.Failovers = d.failovers()
	st.SeedImport = d.seedImportStatus()
	return st, nil
}

func (d *Daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", d.metricsHandler())
	mux.Handle("GET /v1/events", events.Handler(d.cfg.Events))
	mux.Handle("GET /v1/jobs", jobs.Handler(d.cfg.Jobs))
	mux.Handle("GET /{$}", d.PublicHandler())
	fail := func(w http.ResponseWriter, err error) {
		var e *Error
		switch {
		case errors.As(err, &e):
			daemon.WriteErr(w, e.Status, err)
		case errors.Is(err, names.ErrBadName):
			daemon.WriteErr(w, http.StatusBadRequest, err)
		case errors.Is(err, store.ErrNoPoint):
			daemon.WriteErr(w, http.StatusNotFound, err)
		default:
			daemon.WriteErr(w, http.StatusInternalServerError, err)
		}
	}
	answer := func(w http.ResponseWriter, v any, err error) {
		if err != nil {
			fail(w, err)
			return
		}
		daemon.WriteJSON(w, http.StatusOK, v)
	}
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := d.Status()
		answer(w, st, err)
	})
	mux.HandleFunc("GET /v1/points", func(w http.ResponseWriter, r *http.Request) {
		pts, err := d.Points(r.URL.Query().Get("vm"))
		if pts == nil {
			pts = []VMPoint{}
		}
		answer(w, pts, err)
	})
	mux.HandleFunc("POST /v1/failover/test", func(w http.ResponseWriter, r *http.Request) {
		var id uint64
		if s := r.URL.Query().Get("point"); s != "" {
			var err error
			if id, err = strconv.ParseUint(s, 10, 64); err != nil || id == 0 {
				daemon.WriteErr(w, http.StatusBadRequest, errors.New("point must be a point id, as vrep points shows"))
				return
			}
		}
		spec := r.URL.Query().Get("vm")
		job := d.cfg.Jobs.Start(jobs.TestStart, spec)
		info, err := d.vmOrGroup(spec, func() (any, error) { return d.StartTest(spec, id) },
			func() (any, error) { return d.StartGroupTest(spec, id) })
		job.End(err)
		answer(w, info, err)
	})
	mux.HandleFunc("POST /v1/failover/test-stop", func(w http.ResponseWriter, r *http.Request) {
		spec, force := r.URL.Query().Get("vm"), r.URL.Query().Get("force") == "1"
		job := d.cfg.Jobs.Start(jobs.TestStop, spec)
		info, err := d.vmOrGroup(spec, func() (any, error) { return d.StopTest(spec, force) },
			func() (any, error) { return d.StopGroupTest(spec, force) })
		job.End(err)
		answer(w, info, err)
	})
	mux.HandleFunc("POST /v1/failover/start", func(w http.ResponseWriter, r *http.Request) {
		spec, point := r.URL.Query().Get("vm"), r.URL.Query().Get("point")
		job := d.cfg.Jobs.Start(jobs.FailoverStart, spec)
		info, err := d.vmOrGroup(spec, func() (any, error) { return d.StartFailover(spec, point) },
			func() (any, error) { return d.StartGroupFailover(spec, point) })
		job.End(err)
		answer(w, info, err)
	})
	mux.HandleFunc("POST /v1/failover/cancel", func(w http.ResponseWriter, r *http.Request) {
		spec, force := r.URL.Query().Get("vm"), r.URL.Query().Get("force") == "1"
		job := d.cfg.Jobs.Start(jobs.FailoverCancel, spec)
		info, err := d.vmOrGroup(spec, func() (any, error) { return d.CancelFailover(spec, force) },
			func() (any, error) { return d.CancelGroupFailover(spec, force) })
		job.End(err)
		answer(w, info, err)
	})
	mux.HandleFunc("POST /v1/seed/import", d.seedImportHandler)
	mux.HandleFunc("POST /v1/points/split-brain/drop", func(w http.ResponseWriter, r *http.Request) {
		n, err := d.DropSplitBrain(r.URL.Query().Get("vm"))
		answer(w, map[string]int{"dropped": n}, err)
	})
	mux.HandleFunc("POST /v1/failover/commit", func(w http.ResponseWriter, r *http.Request) {
		spec := r.URL.Query().Get("vm")
		job := d.cfg.Jobs.Start(jobs.FailoverCommit, spec)
		info, err := d.vmOrGroup(spec, func() (any, error) { return d.CommitFailover(spec) },
			func() (any, error) { return d.CommitGroupFailover(spec) })
		job.End(err)
		answer(w, info, err)
	})
	d.planRoutes(mux, answer)
	return mux
}

// testOverlay is the file name of a disk's test-failover overlay.
const testOverlay = "test.overlay"

func overlayPath(data, key string) string {
	return filepath.Join(data, filepath.FromSlash(key), testOverlay)
}
