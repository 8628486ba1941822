package host

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/replica/ship"
	"github.com/vrep-io/vrep/replica/wire"
)

// Planned is the outcome of a planned failover, as the API answers it.
type Planned struct {
	VM         string `json:"vm"`
	To         string `json:"to"`
	Generation uint64 `json:"generation"`
	// Point is the final point, Kind what it is.
	Point uint64 `json:"point,string"`
	Kind  string `json:"kind"`
	// Disks: each disk's last LSN here, and where the reverse stream
	// starts (the new primary's base).
	Disks []PlannedDisk `json:"disks"`
	// WritesRefused is how long the VM's disks refused writes here
	// before it ran on the peer.
	WritesRefused float64   `json:"writes_refused_seconds"`
	Finished      time.Time `json:"finished"`
	// ReverseConnected says whether the peer's reverse stream reached
	// this host's replica before the answer; ResyncBytes is what it sent
	// of a copy (an initial copy or a resync): 0 when nothing diverged.
	ReverseConnected bool  `json:"reverse_connected"`
	ResyncBytes      int64 `json:"resync_bytes"`
}

// PlannedDisk is a disk of a planned failover.
type PlannedDisk struct {
	Disk  string `json:"disk"`
	Final uint64 `json:"final_lsn"`
	Base  uint64 `json:"reverse_base_lsn"`
	Image string `json:"image"`
}

// PlannedFailover moves vm, which this host runs, to the peer, losing
// nothing: fence, final point, every record acknowledged, the peer asked
// to promote it; then this host keeps the replica copy, which the peer
// replicates to. Asked again after an answer was lost (the step persisted
// says so), it asks the peer again. abort gives a VM whose handover the
// peer never confirmed back to its clients: only when the operator knows
// the peer did not promote it.
func (h *Host) PlannedFailover(ctx context.Context, vm string, abort bool) (Planned, error) {
	if err := names.Part(vm); err != nil {
		return Planned{}, &Error{Status: 400, Msg: err.Error()}
	}
	release, err := h.claim(vm)
	if err != nil {
		return Planned{}, err
	}
	defer release()
	r, ok := h.role(vm)
	switch {
	case !ok:
		return Planned{}, &Error{Status: 404, Msg: fmt.Sprintf("no VM %q is known on this host", vm)}
	case r.Role == RoleReplica:
		return Planned{}, &Error{Status: 409, Msg: fmt.Sprintf("VM %s runs on %s, not here: run the planned failover there (this host keeps its replica)", vm, h.cfg.Peer)}
	case r.Step == stepPromoting:
		return Planned{}, &Error{Status: 409, Msg: fmt.Sprintf("VM %s is being promoted on this host; wait for it", vm)}
	}
	h.mu.Lock()
	p := h.prims[vm]
	h.mu.Unlock()
	if p == nil {
		return Planned{}, &Error{Status: 409, Msg: fmt.Sprintf("VM %s is not served on this host", vm)}
	}
	if abort {
		if r.Step != stepHandingOver {
			return Planned{}, &Error{Status: 409, Msg: fmt.Sprintf("no planned failover of VM %s is waiting to be confirmed", vm)}
		}
		h.fenceRunning(vm, r.Generation)
		p.AbortHandover(vm)
		if err := h.setRole(vm, func(r *vmRole) { r.Step, r.Prepared = "", nil }); err != nil {
			return Planned{}, err
		}
		return Planned{}, &Error{Status: 200, Msg: fmt.Sprintf("planned failover of VM %s abandoned: it takes writes on this host again", vm)}
	}
	var prep primary.Prepared
	if r.Step == stepHandingOver && r.Prepared != nil {
		prep = *r.Prepared
		p.FenceForHandover(ctx, vm) // a restart served it fenced already
		h.log.Warn("planned failover: asking the peer again whether it took the VM over", "vm", vm)
	} else {
		if prep, err = p.PrepareHandover(ctx, vm); err != nil {
			return Planned{}, &Error{Status: 409, Msg: err.Error()}
		}
		if err := h.setRole(vm, func(r *vmRole) { r.Step, r.Prepared = stepHandingOver, &prep }); err != nil {
			p.AbortHandover(vm)
			return Planned{}, err
		}
	}
	faultpoint.Hit(faultpoint.HandoverAsked)
	// Once the peer promotes the VM its reverse streams come here at
	// once: they wait (retry) until this host's image is the replica
	// copy. Should the peer refuse, stale streams are told again that
	// the VM runs here.
	h.rep.FenceRetry(h.cfg.Peer, vm, "this host is handing VM "+vm+" over and making its image the replica copy; retry")
	req := wire.Promote{VM: vm, Generation: r.Generation, Disks: prep.Disks, Reverse: h.Addr(), Point: prep.Point}
	ans, adopted, err := ship.Promote(ctx, h.cfg.PeerAddr, h.ctls, req, time.Minute)
	var re *wire.RemoteError
	switch {
	case errors.As(err, &re) && re.Code != wire.CodeSuperseded:
		// The peer refused: it promoted nothing. The VM goes on here.
		h.fenceRunning(vm, r.Generation)
		p.AbortHandover(vm)
		if serr := h.setRole(vm, func(r *vmRole) { r.Step, r.Prepared = "", nil }); serr != nil {
			return Planned{}, serr
		}
		return Planned{}, &Error{Status: 409, Msg: fmt.Sprintf("%s refused to take VM %s over (%s); nothing changed and the VM takes writes here again", h.cfg.Peer, vm, re.Msg)}
	case err != nil:
		return Planned{}, &Error{Status: 503, Msg: fmt.Sprintf("%s did not confirm that it took VM %s over (%v); the VM stays read-only here so that it never runs on both hosts: run vrep failover planned %s again to ask once more, or, only if %s surely did not take it over, vrep failover planned %s --abort", h.cfg.Peer, vm, err, vm, h.cfg.Peer, vm)}
	}
	bases := map[string]uint64{}
	for _, d := range ans.Disks {
		bases[d.Disk] = d.LSN
	}
	out := Planned{VM: vm, To: h.cfg.Peer, Generation: ans.Generation, Point: prep.Point, Kind: prep.Kind}
	for _, d := range prep.Disks {
		base, ok := bases[d.Disk]
		if !ok {
			adopted(false)
			return Planned{}, &Error{Status: 502, Msg: fmt.Sprintf("%s answered without disk %s; the VM stays read-only here: run vrep failover planned %s again", h.cfg.Peer, d.Disk, vm)}
		}
		out.Disks = append(out.Disks, PlannedDisk{Disk: d.Disk, Final: d.LSN, Base: base, Image: h.home(d.Disk)})
	}
	if err := h.setRole(vm, func(r *vmRole) {
		r.Role, r.Step, r.Generation, r.Since = RoleReplica, stepDemoting, ans.Generation, time.Now()
		for i := range r.Disks {
			r.Disks[i].Base = bases[r.Disks[i].Disk]
		}
	}); err != nil {
		adopted(false)
		return Planned{}, err
	}
	faultpoint.Hit(faultpoint.DemoteConfirmed)
	err = h.finishDemote(vm)
	adopted(err == nil)
	if err != nil {
		return Planned{}, &Error{Status: 500, Msg: fmt.Sprintf("VM %s runs on %s now, but this host could not make its image the replica copy (%v); restart the host daemon to finish", vm, h.cfg.Peer, err)}
	}
	out.WritesRefused = time.Since(prep.FencedAt).Seconds()
	out.Finished = time.Now()
	out.ReverseConnected, out.ResyncBytes = h.awaitReverse(ctx, vm, out.Disks)
	h.setRole(vm, func(r *vmRole) { r.Last = &out })
	h.log.Info("planned failover: the VM runs on the peer now; this host keeps its replica", "vm", vm, "to", h.cfg.Peer,
		"generation", ans.Generation, "writes_refused", out.WritesRefused, "resync_bytes", out.ResyncBytes)
	return out, nil
}

// awaitReverse waits (a little) for the peer's reverse streams of vm's
// disks, and says whether they came and how many bytes of copy they
// sent.
func (h *Host) awaitReverse(ctx context.Context, vm string, disks []PlannedDisk) (bool, int64) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		all, copied := true, int64(0)
		for _, d := range disks {
			_, name, _ := names.Disk(d.Disk)
			si := h.rep.Stream(h.cfg.Peer + "/" + vm + "/" + name)
			all = all && si.Connected
			copied += si.CopyBytes
		}
		if all {
			return true, copied
		}
		select {
		case <-ctx.Done():
			return false, copied
		case <-tick.C:
		}
	}
}
