package primary

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/nbd"
	"github.com/vrep-io/vrep/replica/wire"
)

// The primary's part of a planned failover (vrep host runs the rest):
// stop taking writes, take the final point, and wait until the replica
// holds every record durable. The disks stay fenced until the host
// either hands them over (and closes this daemon) or gives them back
// (AbortHandover): nothing written is ever refused silently, nothing
// acknowledged is ever left behind.

// ErrHandingOver is the reason writes are refused while a VM is handed
// over to its replica.
var ErrHandingOver = errors.New("a planned failover is handing the VM over to its replica; this copy takes no writes")

// Prepared is a VM fenced, with every record through its final point
// durable on the replica.
type Prepared struct {
	VM       string              `json:"vm"`
	Disks    []wire.HandoverDisk `json:"disks"` // each disk's last LSN, all acknowledged
	Point    uint64              `json:"point,string"`
	Kind     string              `json:"kind"`               // app or crash: the final point's kind
	AppPoint uint64              `json:"app_point,string"`   // the app-consistent point taken before the fence, if any
	FencedAt time.Time           `json:"fenced_at"`          // when writes started being refused
	Shipped  time.Duration       `json:"shipped_in_seconds"` // from the fence to the last ack
}

// PrepareHandover fences every disk of vm (NBD clients are disconnected;
// FUSE files answer writes with EROFS), takes the final point
// (app-consistent first when the VM has quiescers) and waits until the
// replica has acknowledged every record. On error the disks are given
// back (unfenced) unless the error says otherwise.
func (d *Daemon) PrepareHandover(ctx context.Context, vm string) (Prepared, error) {
	disks, err := d.vmShippers(vm)
	if err != nil {
		return Prepared{}, err
	}
	for _, disk := range disks {
		if r := disk.superseded.Load(); r != nil {
			return Prepared{}, fmt.Errorf("%w: disk %s is superseded already (%s)", ErrUnknownTarget, disk.Name, *r)
		}
		st := d.shipper(disk.Name).Status()
		switch {
		case disk.Volume.ResyncRequired():
			return Prepared{}, fmt.Errorf("disk %s needs a resync before it can be handed over: run vrep resync %s --now, then the planned failover", disk.Name, vm)
		case st.Initial < 100:
			return Prepared{}, fmt.Errorf("the replica does not hold disk %s yet (initial copy %d%%): wait for it, then fail over", disk.Name, st.Initial)
		}
	}
	p := Prepared{VM: vm}
	group := vm
	if g, ok := d.points.vmOf[vm]; ok {
		group = g
	}
	if len(d.points.vms[group]) > 1 {
		return Prepared{}, fmt.Errorf("VM %s is in consistency group %s with other VMs: a planned failover of one VM of a group is not supported yet", vm, group)
	}
	if len(d.points.quiescers(d, group)) > 0 {
		pt, err := d.TakePoint(ctx, vm, true)
		if err != nil {
			return Prepared{}, fmt.Errorf("the app-consistent final point: %w", err)
		}
		if pt.Kind == hrl.KindApp {
			p.AppPoint = pt.ID
		}
	}
	d.FenceForHandover(ctx, vm)
	p.FencedAt = time.Now()
	faultpoint.Hit(faultpoint.HandoverFenced)
	pt, err := d.TakePoint(ctx, vm, false)
	if err != nil {
		d.AbortHandover(vm)
		return Prepared{}, fmt.Errorf("the final point: %w; the VM takes writes again", err)
	}
	p.Point, p.Kind = pt.ID, "crash"
	if p.AppPoint != 0 {
		p.Kind = "app (then crash-consistent at the fence)"
	}
	for _, disk := range disks {
		if err := disk.Volume.Sync(); err != nil {
			d.AbortHandover(vm)
			return Prepared{}, fmt.Errorf("disk %s: %w; the VM takes writes again", disk.Name, err)
		}
		p.Disks = append(p.Disks, wire.HandoverDisk{Disk: disk.Name, Size: disk.Volume.Size(), LSN: disk.Volume.Log().LastLSN()})
	}
	for i, disk := range disks {
		sh := d.shipper(disk.Name)
		sh.Resume()
		tick := time.NewTicker(10 * time.Millisecond)
		for sh.Status().Acked < p.Disks[i].LSN {
			select {
			case <-ctx.Done():
				tick.Stop()
				d.AbortHandover(vm)
				st := sh.Status()
				why := st.Reason
				if why == "" {
					why = fmt.Sprintf("acknowledged LSN %d of %d", st.Acked, p.Disks[i].LSN)
				}
				return Prepared{}, fmt.Errorf("the replica did not acknowledge every record of disk %s in time (%s); nothing was handed over and the VM takes writes again", disk.Name, why)
			case <-tick.C:
			}
		}
		tick.Stop()
	}
	p.Shipped = time.Since(p.FencedAt)
	faultpoint.Hit(faultpoint.HandoverShipped)
	d.log.Info("planned failover: the VM is fenced and the replica holds every record", "vm", vm, "point", p.Point, "shipped_in", p.Shipped)
	return p, nil
}

// FenceForHandover fences every disk of vm for a handover: writes are
// refused and NBD clients disconnected (their requests under way are
// answered first).
func (d *Daemon) FenceForHandover(ctx context.Context, vm string) {
	for _, disk := range d.Disks {
		if v, _, _ := names.Disk(disk.Name); v != vm {
			continue
		}
		disk.Volume.Fence(ErrHandingOver)
		if n, _ := d.nbd.Detach(ctx, disk.Name, true); n > 0 {
			d.log.Warn("planned failover: NBD clients disconnected; the disk takes no writes here any more", "disk", disk.Name, "connections", n)
		}
	}
}

// AbortHandover gives vm's disks back to their clients: a planned
// failover that handed nothing over.
func (d *Daemon) AbortHandover(vm string) {
	d.Unfence(vm)
	d.log.Warn("planned failover abandoned: the VM takes writes here again", "vm", vm)
}

// Unfence lets vm's disks take writes (unless superseded): a handover
// abandoned, or a VM promoted on this host, started fenced
// (Config.Fenced) until its new role was persisted.
func (d *Daemon) Unfence(vm string) {
	for _, disk := range d.Disks {
		if v, _, _ := names.Disk(disk.Name); v != vm || disk.superseded.Load() != nil {
			continue
		}
		disk.Volume.Unfence()
		d.nbd.Add(nbd.Export{Name: disk.Name, Device: disk.Volume})
	}
}
