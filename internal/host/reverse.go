package host

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/replica/receive"
	"github.com/vrep-io/vrep/replica/ship"
	"github.com/vrep-io/vrep/replica/store"
	"github.com/vrep-io/vrep/replica/wire"
)

// Reverse replication after an unplanned failover. The VM failed over to
// this host (vrep failover start, then commit) while the peer, its old
// primary, was gone; the peer is back, superseded, its disks read-only.
// Reverse asks the peer to keep the VM's replica: the peer closes its
// copy, makes its images the replica copy and keeps them, as they are,
// as a split-brain point (its writes after the failover point, which
// this host never had: kept, not thrown away), marked for a resync. Then
// this host serves the VM as a primary replicating to the peer, and the
// resync sends only the chunks that differ; every chunk it rewrites
// there keeps its old content as history, so the split-brain point
// reads back what the old primary held.

// Reversed is the outcome of vrep replication reverse.
type Reversed struct {
	VM         string   `json:"vm"`
	To         string   `json:"to"`
	Generation uint64   `json:"generation"`
	Disks      []string `json:"disks"`
	// SplitBrainPoint is the group of the point that keeps the old
	// primary's own writes on the peer (vrep points VM there).
	SplitBrainPoint string `json:"split_brain_point"`
	// Report says, per disk, how what diverged was found and sent.
	Report []ReversedDisk `json:"report"`
}

// ReversedDisk is how reverse replication brought a disk back in step.
type ReversedDisk struct {
	Disk string `json:"disk"`
	Size int64  `json:"size"`
	// Method is "logs": the blocks that diverged were known from both
	// sides' logs and history and sent before the VM was served again
	// (DivergedBytes of them, SentBytes sent, WireBytes on the wire); or
	// "checksums": a log could not tell (overflowed, a restart lost the
	// set), and a checksum resync finds and sends what differs (vrep
	// status shows it).
	Method        string `json:"method"`
	DivergedBytes int64  `json:"diverged_bytes"`
	SentBytes     int64  `json:"sent_bytes"`
	WireBytes     int64  `json:"wire_bytes"`
}

// blockSize is the granularity of what reverse replication sends.
const blockSize = 4096

// Reverse makes the peer keep the replica of vm, which failed over to
// this host and was committed, and starts replicating it there.
func (h *Host) Reverse(ctx context.Context, vm string) (Reversed, error) {
	if err := names.Part(vm); err != nil {
		return Reversed{}, &Error{Status: 400, Msg: err.Error()}
	}
	release, err := h.claim(vm)
	if err != nil {
		return Reversed{}, err
	}
	defer release()
	if r, ok := h.role(vm); ok && r.Role == RolePrimary && r.Step == stepPromoting {
		// Asked again after a reverse that failed half-way: finish it (a
		// checksum resync sends what differs).
		if err := h.finishPromote(vm, nil); err != nil {
			return Reversed{}, &Error{Status: 500, Msg: fmt.Sprintf("VM %s: %v; restart the host daemon to finish", vm, err)}
		}
		return Reversed{VM: vm, To: h.cfg.Peer, Generation: r.Generation, SplitBrainPoint: store.SplitBrainGroup + vm}, nil
	}
	if r, ok := h.role(vm); ok && r.Role == RolePrimary && r.Step == "" {
		h.mu.Lock()
		p := h.prims[vm]
		h.mu.Unlock()
		if p != nil && p.Superseded(vm) != "" {
			return Reversed{}, &Error{Status: 409, Msg: fmt.Sprintf("VM %s is superseded here: it failed over to %s; run vrep replication reverse %s there", vm, h.cfg.Peer, vm)}
		}
		return Reversed{}, &Error{Status: 409, Msg: fmt.Sprintf("VM %s runs on this host and replicates to %s already", vm, h.cfg.Peer)}
	}
	gen, point, disks, why := h.rep.Committed(h.cfg.Peer, vm)
	if why != "" {
		return Reversed{}, &Error{Status: 409, Msg: why}
	}
	rev, err := ship.AskReverse(ctx, h.cfg.PeerAddr, h.ctls, wire.Reverse{VM: vm, Generation: gen, Point: point, Disks: disks}, time.Minute)
	var re *wire.RemoteError
	switch {
	case errors.As(err, &re):
		return Reversed{}, &Error{Status: 409, Msg: fmt.Sprintf("%s refused to keep the replica of VM %s (%s); nothing changed", h.cfg.Peer, vm, re.Msg)}
	case err != nil:
		return Reversed{}, &Error{Status: 503, Msg: fmt.Sprintf("%s did not answer (%v); VM %s runs here as before: ask again once %s is back", h.cfg.Peer, err, vm, h.cfg.Peer)}
	}
	faultpoint.Hit(faultpoint.ReverseAnswered)
	theirs := map[string]wire.ReversedDisk{}
	for _, d := range rev.Disks {
		theirs[d.Disk] = d
	}
	nr := vmRole{Role: RolePrimary, Generation: gen, Step: stepPromoting, Since: time.Now()}
	out := Reversed{VM: vm, To: h.cfg.Peer, Generation: gen, SplitBrainPoint: store.SplitBrainGroup + vm}
	for _, d := range disks {
		nr.Disks = append(nr.Disks, roleDisk{Disk: d.Disk, Home: h.home(d.Disk)})
		out.Disks = append(out.Disks, d.Disk)
	}
	if err := h.setRole(vm, func(r *vmRole) { *r = nr }); err != nil {
		return Reversed{}, err
	}
	ours, err := h.rep.ReleaseCommitted(h.cfg.Peer, vm)
	if err != nil {
		return Reversed{}, &Error{Status: 500, Msg: fmt.Sprintf("VM %s: %v; restart the host daemon to finish", vm, err)}
	}
	// Before the VM is served again (its image holds still): send what
	// diverged, where both sides' logs can tell; a disk they cannot is
	// resynced by checksums once it replicates.
	send := func() error {
		for _, d := range disks {
			mine, known := ours[d.Disk]
			t, ok := theirs[d.Disk]
			rd := ReversedDisk{Disk: d.Disk, Size: d.Size, Method: "checksums"}
			if known && mine != nil && ok && t.Known {
				all := append(store.Extents(nil), mine...)
				for _, e := range wire.UnpackExtents(t.Extents) {
					all.Add(e[0], e[1])
				}
				// A write of a few bytes still moves its whole block.
				d4 := all.Normalize(blockSize, d.Size)
				rd.Method, rd.DivergedBytes = "logs", d4.Bytes()
				img, err := os.Open(h.home(d.Disk))
				if err != nil {
					return err
				}
				ext := make([][2]int64, len(d4))
				for i, e := range d4 {
					ext[i] = [2]int64{e.Off, e.Len}
				}
				sent, err := ship.SendDiverged(ctx, h.cfg.PeerAddr, h.ctls, d.Disk, img, d.Size, blockSize, ext, time.Minute)
				img.Close()
				if err != nil {
					// The old primary's disk stays in its resync: the
					// checksum compare takes over once the VM replicates.
					h.log.Warn("reverse replication: sending the diverged blocks failed; a checksum resync takes over", "disk", d.Disk, "err", err)
					rd.Method = "checksums"
				} else {
					rd.SentBytes, rd.WireBytes = sent.Bytes, sent.WireBytes
				}
			}
			out.Report = append(out.Report, rd)
		}
		return nil
	}
	if err := h.finishPromote(vm, send); err != nil {
		return Reversed{}, &Error{Status: 500, Msg: fmt.Sprintf("VM %s: %v; restart the host daemon to finish", vm, err)}
	}
	h.log.Info("reverse replication: the VM replicates to its old primary, which keeps its own writes as a split-brain point", "vm", vm, "to", h.cfg.Peer, "generation", gen)
	return out, nil
}

// onReverse is the peer, where vm failed over to, asking this host (its
// old primary) to keep the VM's replica.
func (h *Host) onReverse(ctx context.Context, peer, root string, req wire.Reverse) (wire.Reversed, error) {
	<-h.ready
	refuse := func(code uint16, format string, args ...any) error {
		return &receive.PromoteError{Code: code, Err: fmt.Errorf(format, args...)}
	}
	if peer != h.cfg.Peer {
		return wire.Reversed{}, refuse(wire.CodeUnauthorized, "only %s may ask %s to keep a replica", h.cfg.Peer, h.cfg.Name)
	}
	release, err := h.claim(req.VM)
	if err != nil {
		return wire.Reversed{}, refuse(wire.CodeRetry, "%v", err)
	}
	defer release()
	r, ok := h.role(req.VM)
	switch {
	case !ok:
		return wire.Reversed{}, refuse(wire.CodeBadRequest, "%s does not hold VM %s: reverse replication goes to the host the VM failed over from", h.cfg.Name, req.VM)
	case r.Role == RoleReplica && r.Generation == req.Generation && r.Step == "":
		return reversedOf(r), nil // asked again
	case r.Role == RoleReplica && r.Generation == req.Generation && r.Step == stepDemoting:
		// Asked again after a demotion that failed half-way: finish it
		// (the diverged set is not known any more: a checksum resync).
		if err := h.finishDemote(req.VM); err != nil {
			return wire.Reversed{}, refuse(wire.CodeRetry, "VM %s: %v", req.VM, err)
		}
		r, _ = h.role(req.VM)
		return reversedOf(r), nil
	case r.Role == RoleReplica:
		return wire.Reversed{}, refuse(wire.CodeBadRequest, "VM %s is a replica on %s already (generation %d)", req.VM, h.cfg.Name, r.Generation)
	case r.Generation >= req.Generation:
		return wire.Reversed{}, refuse(wire.CodeSuperseded, "VM %s runs on %s at generation %d, not older than %s's %d", req.VM, h.cfg.Name, r.Generation, peer, req.Generation)
	}
	have := map[string]bool{}
	for _, d := range r.Disks {
		have[d.Disk] = true
	}
	for _, d := range req.Disks {
		if !have[d.Disk] {
			return wire.Reversed{}, refuse(wire.CodeBadRequest, "VM %s has no disk %s on %s", req.VM, d.Disk, h.cfg.Name)
		}
	}
	// Its streams wait until the images are the replica copy.
	h.rep.FenceRetry(h.cfg.Peer, req.VM, "this host is making its image of VM "+req.VM+" the replica copy; retry")
	if err := h.setRole(req.VM, func(r *vmRole) {
		r.Role, r.Step, r.Generation, r.Since, r.SplitBrain, r.Prepared = RoleReplica, stepDemoting, req.Generation, time.Now(), true, nil
		for i := range r.Disks {
			r.Disks[i].Base = 0
		}
	}); err != nil {
		return wire.Reversed{}, refuse(wire.CodeRetry, "%v", err)
	}
	faultpoint.Hit(faultpoint.ReverseDemoting)
	// What this host wrote after the failover point that the peer never
	// applied: the records its log still holds after the point (those it
	// released, the peer had acknowledged, and its history knows them).
	mine := map[string]wire.ReversedDisk{}
	h.mu.Lock()
	p := h.prims[req.VM]
	h.mu.Unlock()
	budget := wire.MaxReversedExtents // for the whole answer: it must fit one frame
	for _, want := range req.Disks {
		rd := wire.ReversedDisk{Disk: want.Disk}
		if p != nil {
			for _, disk := range p.Disks {
				if disk.Name != want.Disk {
					continue
				}
				var ext [][2]int64
				_, known, err := disk.Volume.ChangedSince(want.LSN, func(off, n int64) { ext = append(ext, [2]int64{off, n}) })
				if err == nil && known && len(ext) <= budget {
					rd.Known, rd.Extents = true, wire.PackExtents(ext)
					budget -= len(ext)
				}
			}
		}
		mine[want.Disk] = rd
	}
	if err := h.finishDemote(req.VM); err != nil {
		return wire.Reversed{}, refuse(wire.CodeRetry, "VM %s: %v", req.VM, err)
	}
	r, _ = h.role(req.VM)
	h.log.Warn("reverse replication: VM "+req.VM+" runs on "+peer+"; this host keeps its replica, and what it wrote after the failover point as a split-brain point", "vm", req.VM, "generation", req.Generation)
	out := reversedOf(r)
	for i := range out.Disks {
		if rd, ok := mine[out.Disks[i].Disk]; ok {
			out.Disks[i] = rd
		}
	}
	return out, nil
}

// reversedOf answers a Reverse asked again: the extents are not kept, so
// the peer resyncs by checksums.
func reversedOf(r vmRole) wire.Reversed {
	var out wire.Reversed
	for _, d := range r.Disks {
		out.Disks = append(out.Disks, wire.ReversedDisk{Disk: d.Disk, LSN: d.Base})
	}
	return out
}
