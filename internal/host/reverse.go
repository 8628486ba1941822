package host

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/replica/receive"
	"github.com/vrep-io/vrep/replica/ship"
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
}

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
	if r, ok := h.role(vm); ok && r.Role == RolePrimary && r.Step == "" {
		return Reversed{}, &Error{Status: 409, Msg: fmt.Sprintf("VM %s runs on this host and replicates to %s already", vm, h.cfg.Peer)}
	}
	gen, point, disks, why := h.rep.Committed(h.cfg.Peer, vm)
	if why != "" {
		return Reversed{}, &Error{Status: 409, Msg: why}
	}
	_, err = ship.AskReverse(ctx, h.cfg.PeerAddr, h.ctls, wire.Reverse{VM: vm, Generation: gen, Point: point, Disks: disks}, time.Minute)
	var re *wire.RemoteError
	switch {
	case errors.As(err, &re):
		return Reversed{}, &Error{Status: 409, Msg: fmt.Sprintf("%s refused to keep the replica of VM %s (%s); nothing changed", h.cfg.Peer, vm, re.Msg)}
	case err != nil:
		return Reversed{}, &Error{Status: 503, Msg: fmt.Sprintf("%s did not answer (%v); VM %s runs here as before: ask again once %s is back", h.cfg.Peer, err, vm, h.cfg.Peer)}
	}
	faultpoint.Hit(faultpoint.ReverseAnswered)
	nr := vmRole{Role: RolePrimary, Generation: gen, Step: stepPromoting, Since: time.Now()}
	out := Reversed{VM: vm, To: h.cfg.Peer, Generation: gen, SplitBrainPoint: "split-brain-" + vm}
	for _, d := range disks {
		nr.Disks = append(nr.Disks, roleDisk{Disk: d.Disk, Home: h.home(d.Disk)})
		out.Disks = append(out.Disks, d.Disk)
	}
	if err := h.setRole(vm, func(r *vmRole) { *r = nr }); err != nil {
		return Reversed{}, err
	}
	if err := h.rep.ReleaseCommitted(h.cfg.Peer, vm); err != nil {
		return Reversed{}, &Error{Status: 500, Msg: fmt.Sprintf("VM %s: %v; restart the host daemon to finish", vm, err)}
	}
	if err := h.finishPromote(vm); err != nil {
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
	if err := h.finishDemote(req.VM); err != nil {
		return wire.Reversed{}, refuse(wire.CodeRetry, "VM %s: %v", req.VM, err)
	}
	r, _ = h.role(req.VM)
	h.log.Warn("reverse replication: VM "+req.VM+" runs on "+peer+"; this host keeps its replica, and what it wrote after the failover point as a split-brain point", "vm", req.VM, "generation", req.Generation)
	return reversedOf(r), nil
}

func reversedOf(r vmRole) wire.Reversed {
	var out wire.Reversed
	for _, d := range r.Disks {
		out.Disks = append(out.Disks, wire.HandoverDisk{Disk: d.Disk, LSN: d.Base})
	}
	return out
}
