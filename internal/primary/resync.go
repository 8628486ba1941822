package primary

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/replica/ship"
)

// The resync and verify API (added to the list in api.go):
//
//	POST /v1/resync?vm=VM[&disk=D][&now=1]      ResyncInfo
//	POST /v1/verify?vm=VM[&disk=D][&point=ID]   []ship.VerifyResult
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

// Verify compares each selected disk of vm with its replica by chunk
// checksums, at the point id (0: the replica's latest state).
func (d *Daemon) Verify(ctx context.Context, vm, disk string, id uint64) ([]ship.VerifyResult, error) {
	disks, err := d.selectDisks(vm, disk)
	if err != nil {
		return nil, err
	}
	lsns := map[string]uint64{}
	if id != 0 {
		found := false
		if p := d.points; p != nil {
			p.mu.Lock()
			for _, pt := range p.recent {
				if pt.ID == id {
					lsns, found = pt.LSNs, true
				}
			}
			p.mu.Unlock()
		}
		if !found {
			return nil, fmt.Errorf("%w: point %d", ErrUnknownPoint, id)
		}
	}
	var out []ship.VerifyResult
	for _, dk := range disks {
		lsn := uint64(0)
		if id != 0 {
			var ok bool
			if lsn, ok = lsns[dk.Name]; !ok {
				return out, fmt.Errorf("%w: point %d does not cover %s", ErrUnknownPoint, id, dk.Name)
			}
		}
		res, err := d.shippers[dk.Name].Verify(ctx, lsn)
		if err != nil {
			return out, fmt.Errorf("%s: %w", dk.Name, err)
		}
		out = append(out, res)
	}
	return out, nil
}

func (d *Daemon) resyncRoutes(mux *http.ServeMux) {
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
		res, err := d.Verify(r.Context(), q.Get("vm"), q.Get("disk"), id)
		if err != nil {
			resyncErr(w, err)
			return
		}
		daemon.WriteJSON(w, http.StatusOK, res)
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
