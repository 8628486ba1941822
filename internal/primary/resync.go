package primary

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/replica/ship"
)

// The resync and verify API (added to the list in api.go):
//
//	POST /v1/resync?vm=VM[&disk=D][&now=1]      ResyncInfo
//	GET  /v1/resync/progress?vm=VM[&disk=D]     NDJSON ResyncEvent lines
//	POST /v1/verify?vm=VM[&disk=D][&point=ID]   NDJSON VerifyEvent lines
//
// The progress stream sends a line whenever a disk's resync changes state
// or percentage, and ends once every selected disk's resync is done, or
// failed with replication stopped for the operator (a session cut short
// otherwise resumes by itself): a CLI waiting on it learns the end at
// once, with no request timeout however long the resync takes. A verify answers the same way,
// with its progress and then each disk's result.
//
// A resync asked for while one runs is a conflict (409); an unknown VM or
// disk is 404.

// ResyncInfo answers a resync request.
type ResyncInfo struct {
	VM    string   `json:"vm"`
	Disks []string `json:"disks"`
	Now   bool     `json:"now"`
}

// ErrUnknownPoint is returned for a point ID the primary does not know.
var ErrUnknownPoint = errors.New("no such point on this primary (see vrep points)")

// selectDisks returns the disks of vm, or the one named disk of it.
func (d *Daemon) selectDisks(vm, disk string) ([]*Disk, error) {
	disks, err := d.vmShippers(vm)
	if err != nil || disk == "" {
		return disks, err
	}
	for _, dk := range disks {
		if dk.Name == vm+"/"+disk || dk.Name == disk {
			return []*Disk{dk}, nil
		}
	}
	return nil, fmt.Errorf("%w: %s has no disk %s", ErrUnknownTarget, vm, disk)
}

// Resync asks for a resync of a VM's disks (or one of them): at once with
// now, else in the resync window. Nothing is asked for if any of them is
// already resyncing.
func (d *Daemon) Resync(vm, disk string, now bool) (ResyncInfo, error) {
	disks, err := d.selectDisks(vm, disk)
	if err != nil {
		return ResyncInfo{}, err
	}
	for _, dk := range disks {
		if p := d.shippers[dk.Name].ResyncStatus(); p != nil && p.State == "running" {
			return ResyncInfo{}, fmt.Errorf("%w: %s (%d%% done; see vrep status)", ship.ErrResyncRunning, dk.Name, p.Percent)
		}
	}
	info := ResyncInfo{VM: vm, Now: now}
	for _, dk := range disks {
		if err := d.shippers[dk.Name].Resync(now); err != nil {
			return info, fmt.Errorf("%s: %w", dk.Name, err)
		}
		info.Disks = append(info.Disks, dk.Name)
		d.log.Info(dk.Name+": resync asked for by the operator", "disk", dk.Name, "now", now)
	}
	return info, nil
}

// verifyPlan is what a verify will compare: each disk and its LSN (0:
// the replica's latest state).
type verifyPlan struct {
	disks []*Disk
	lsns  []uint64
}

// planVerify checks a verify request: the VM, the disk and the point.
func (d *Daemon) planVerify(vm, disk string, id uint64) (verifyPlan, error) {
	disks, err := d.selectDisks(vm, disk)
	if err != nil {
		return verifyPlan{}, err
	}
	plan := verifyPlan{disks: disks, lsns: make([]uint64, len(disks))}
	if id == 0 {
		return plan, nil
	}
	var lsns map[string]uint64
	if p := d.points; p != nil {
		p.mu.Lock()
		for _, pt := range p.recent {
			if pt.ID == id {
				lsns = pt.LSNs
			}
		}
		p.mu.Unlock()
	}
	if lsns == nil {
		return plan, fmt.Errorf("%w: point %d", ErrUnknownPoint, id)
	}
	for i, dk := range disks {
		lsn, ok := lsns[dk.Name]
		if !ok {
			return plan, fmt.Errorf("%w: point %d does not cover %s", ErrUnknownPoint, id, dk.Name)
		}
		plan.lsns[i] = lsn
	}
	return plan, nil
}

// Verify compares each selected disk of vm with its replica by chunk
// checksums, at the point id (0: the replica's latest state); progress,
// if set, hears how far each disk's comparison got.
func (d *Daemon) Verify(ctx context.Context, vm, disk string, id uint64, progress func(disk string, compared, chunks uint64)) ([]ship.VerifyResult, error) {
	plan, err := d.planVerify(vm, disk, id)
	if err != nil {
		return nil, err
	}
	return d.runVerify(ctx, plan, progress, nil)
}

func (d *Daemon) runVerify(ctx context.Context, plan verifyPlan, progress func(disk string, compared, chunks uint64), done func(ship.VerifyResult)) ([]ship.VerifyResult, error) {
	var out []ship.VerifyResult
	for i, dk := range plan.disks {
		var prog func(compared, chunks uint64)
		if progress != nil {
			prog = func(compared, chunks uint64) { progress(dk.Name, compared, chunks) }
		}
		res, err := d.shippers[dk.Name].Verify(ctx, plan.lsns[i], prog)
		if err != nil {
			return out, fmt.Errorf("%s: %w", dk.Name, err)
		}
		if done != nil {
			done(res)
		}
		out = append(out, res)
	}
	return out, nil
}

// VerifyEvent is one line of a verify's answer: a disk's progress, its
// result, or the error that ended the verify (with the HTTP status it
// would have had).
type VerifyEvent struct {
	Disk     string             `json:"disk,omitempty"`
	Compared uint64             `json:"chunks_compared,omitempty"`
	Chunks   uint64             `json:"chunks,omitempty"`
	Result   *ship.VerifyResult `json:"result,omitempty"`
	Error    string             `json:"error,omitempty"`
	Status   int                `json:"status,omitempty"`
}

// ResyncEvent is one line of the resync progress stream.
type ResyncEvent struct {
	Disk     string               `json:"disk"`
	Progress *ship.ResyncProgress `json:"progress"`
}

// resyncPoll is how often the progress stream looks at the resyncs: in
// process, cheap, and the delay a waiting CLI adds to a resync's end.
const resyncPoll = 5 * time.Millisecond

// streamResync writes the resync progress of the disks until each is
// done or failed, or the client goes away.
func (d *Daemon) streamResync(w http.ResponseWriter, r *http.Request, disks []*Disk) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	shown := map[string]string{}
	tick := time.NewTicker(resyncPoll)
	defer tick.Stop()
	for {
		ended := 0
		for _, dk := range disks {
			p := d.shippers[dk.Name].ResyncStatus()
			if p == nil {
				continue
			}
			if key := fmt.Sprint(p.State, p.Percent); shown[dk.Name] != key {
				shown[dk.Name] = key
				enc.Encode(ResyncEvent{Disk: dk.Name, Progress: p})
				if flusher != nil {
					flusher.Flush()
				}
			}
			// A failed session resumes on the next connection, unless
			// replication stopped for the operator.
			if p.State == "done" || p.State == "failed" && d.shippers[dk.Name].Stopped() {
				ended++
			}
		}
		if ended == len(disks) {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
	}
}

func (d *Daemon) resyncRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/resync/progress", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		disks, err := d.selectDisks(q.Get("vm"), q.Get("disk"))
		if err != nil {
			resyncErr(w, err)
			return
		}
		d.streamResync(w, r, disks)
	})
	mux.HandleFunc("POST /v1/resync", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		info, err := d.Resync(q.Get("vm"), q.Get("disk"), q.Get("now") == "1")
		if err != nil {
			resyncErr(w, err)
			return
		}
		daemon.WriteJSON(w, http.StatusOK, info)
	})
	mux.HandleFunc("POST /v1/verify", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var id uint64
		if s := q.Get("point"); s != "" {
			var err error
			if id, err = strconv.ParseUint(s, 10, 64); err != nil || id == 0 {
				daemon.WriteErr(w, http.StatusBadRequest, fmt.Errorf("%w: %q is not a point ID", ErrUnknownPoint, s))
				return
			}
		}
		plan, err := d.planVerify(q.Get("vm"), q.Get("disk"), id)
		if err != nil {
			resyncErr(w, err)
			return
		}
		// A verify of a large disk takes long: its progress and results
		// stream, so no request timeout cuts it.
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		enc := json.NewEncoder(w)
		flusher, _ := w.(http.Flusher)
		send := func(ev VerifyEvent) {
			enc.Encode(ev)
			if flusher != nil {
				flusher.Flush()
			}
		}
		_, err = d.runVerify(r.Context(), plan, func(disk string, compared, chunks uint64) {
			send(VerifyEvent{Disk: disk, Compared: compared, Chunks: chunks})
		}, func(res ship.VerifyResult) { send(VerifyEvent{Disk: res.Disk, Result: &res}) })
		if err != nil {
			var rec statusRecorder
			resyncErr(&rec, err)
			send(VerifyEvent{Error: err.Error(), Status: rec.code})
		}
	})
}

func resyncErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ship.ErrResyncRunning):
		daemon.WriteErr(w, http.StatusConflict, err)
	case errors.Is(err, ErrUnknownPoint):
		daemon.WriteErr(w, http.StatusNotFound, err)
	case errors.Is(err, ship.ErrNotConnected):
		daemon.WriteErr(w, http.StatusServiceUnavailable, err)
	case errors.Is(err, names.ErrBadName):
		daemon.WriteErr(w, http.StatusBadRequest, err)
	default:
		replicationErr(w, err)
	}
}

// statusRecorder keeps the status an error answer would have had, for an
// error told inside a stream that has answered 200 already.
type statusRecorder struct{ code int }

func (r *statusRecorder) Header() http.Header         { return http.Header{} }
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(code int)        { r.code = code }
