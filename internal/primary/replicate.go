package primary

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/internal/pki"
	"github.com/vrep-io/vrep/replica/health"
	"github.com/vrep-io/vrep/replica/ship"
	"github.com/vrep-io/vrep/replica/wire"
)

// ReplicaConfig says where and how the disks are replicated.
type ReplicaConfig struct {
	Addr        string // host:port
	TLSDir      string // ca.crt, NAME.crt, NAME.key
	Name        string // this primary's certificate name
	ReplicaName string // the name the replica's certificate must carry
	Codec       wire.Codec
	Backoff     []time.Duration // nil: Hyper-V's schedule
	// Interval is the copy frequency: 0 is continuous (every durable
	// record, as soon as it is durable); otherwise a crash-consistent
	// point is taken every Interval (unless Points.Every says otherwise)
	// and each disk ships up to its newest point, with overwritten
	// records coalesced away, while new writes go to the next segment.
	Interval time.Duration
	// Timeout is how long a connection to the replica may stand still
	// mid-exchange before it is given up and retried (default one minute).
	Timeout time.Duration
	// RPO is the recovery point objective of each VM (zero: judge the lag
	// by the copy frequency).
	RPO health.RPOPolicy
	// ResyncWindow is when automatic resyncs run (zero: 18:00-06:00).
	ResyncWindow health.ResyncWindow
}

// DefaultContinuousPoints is how often a replicating primary takes a
// crash-consistent point in continuous mode when nothing else is set.
const DefaultContinuousPoints = 5 * time.Second

// ErrNotReplicating is returned for a replication command on a daemon
// started without a replica.
var ErrNotReplicating = errors.New("this primary does not replicate (it was started without --replica)")

// ErrDaemonWide is returned when a setting asked for one VM would change
// others too.
var ErrDaemonWide = errors.New("the copy frequency is set for the whole primary")

// interval is the copy frequency now (0: continuous).
func (d *Daemon) interval() time.Duration { return time.Duration(d.freq.Load()) }

// pointsEvery is how often crash-consistent points are taken now: as
// --points-every says, else at every copy-frequency tick, else (continuous)
// every DefaultContinuousPoints.
func (d *Daemon) pointsEvery() time.Duration {
	switch {
	case d.cfg.Points.Every > 0:
		return d.cfg.Points.Every
	case d.interval() > 0:
		return d.interval()
	}
	return DefaultContinuousPoints
}

// shipMode sets a disk's shipper to the copy frequency now.
func (d *Daemon) shipMode(disk *Disk, sh *ship.Shipper) {
	if iv := d.interval(); iv > 0 {
		sh.SetMode(disk.shipThrough.Load, true, iv, d.pointsEvery())
		return
	}
	sh.SetMode(nil, false, 0, d.pointsEvery())
}

// shipper returns a disk's shipper, nil when the daemon does not
// replicate.
func (d *Daemon) shipper(name string) *ship.Shipper {
	d.shipMu.RLock()
	defer d.shipMu.RUnlock()
	return d.shippers[name]
}

// replicating reports whether the daemon replicates its disks.
func (d *Daemon) replicating() bool {
	d.shipMu.RLock()
	defer d.shipMu.RUnlock()
	return d.shippers != nil
}

// replicaConfig returns where the disks replicate to, nil if nowhere.
func (d *Daemon) replicaConfig() *ReplicaConfig {
	d.shipMu.RLock()
	defer d.shipMu.RUnlock()
	return d.cfg.Replica
}

// ErrAlreadyReplicating is returned when replication is enabled on a
// daemon that replicates already.
var ErrAlreadyReplicating = errors.New("this primary replicates already; another replica needs a restart")

// EnableReplication starts replicating every disk of a running daemon to
// rc, as --replica would have at start: each volume keeps its log from
// its checkpoint on, the initial copy starts, and points are taken on the
// copy frequency's schedule unless --points-every set one. The VMs keep
// running throughout.
func (d *Daemon) EnableReplication(rc *ReplicaConfig) error {
	if d.replicating() {
		return ErrAlreadyReplicating
	}
	// The certificates first: volumes that retained their log for a
	// shipper that never starts would only fill the disk.
	if _, err := pki.ClientConfig(rc.TLSDir, rc.Name, rc.ReplicaName); err != nil {
		return err
	}
	for _, disk := range d.Disks {
		disk.Volume.StartRetaining()
	}
	if err := d.startShipping(rc); err != nil {
		return err
	}
	d.freqMu.Lock()
	defer d.freqMu.Unlock()
	d.points.startCrashSchedule(d, d.pointsEvery())
	d.log.Info("replication enabled on the running daemon", "replica", rc.Addr, "frequency", health.FrequencyName(rc.Interval))
	return nil
}

// startShipping starts a shipper per disk towards rc (nil: none).
func (d *Daemon) startShipping(rc *ReplicaConfig) error {
	if rc == nil {
		return nil
	}
	d.shipMu.Lock()
	defer d.shipMu.Unlock()
	if d.shippers != nil {
		return ErrAlreadyReplicating
	}
	tc, err := pki.ClientConfig(rc.TLSDir, rc.Name, rc.ReplicaName)
	if err != nil {
		return err
	}
	d.freq.Store(int64(rc.Interval))
	ctx, cancel := context.WithCancel(context.Background())
	d.cfg.Replica = rc
	d.stopShip = cancel
	d.shippers = map[string]*ship.Shipper{}
	for _, disk := range d.Disks {
		vm, _, _ := names.Disk(disk.Name)
		sc := ship.ShipperConfig{Addr: rc.Addr, TLS: tc, Codec: rc.Codec, Backoff: rc.Backoff, Timeout: rc.Timeout,
			VM: vm, RPO: rc.RPO.For(vm), OnBatch: d.batches.adder(disk.Name), Log: d.log, Jobs: d.cfg.Jobs,
			OnSuperseded: func(msg string) { d.supersede(vm, msg) }, ResyncWindow: rc.ResyncWindow,
			OnBase: d.points.onBase(disk.Name)}
		sh := ship.NewShipper(disk.Name, disk.Volume, sc)
		d.shipMode(disk, sh)
		d.shippers[disk.Name] = sh
		d.shipWG.Add(1)
		go func() {
			defer d.shipWG.Done()
			sh.Run(ctx)
		}()
	}
	return nil
}

// vmShippers returns the disks of a VM and their shippers.
func (d *Daemon) vmShippers(vm string) ([]*Disk, error) {
	if err := names.Part(vm); err != nil {
		return nil, err
	}
	var disks []*Disk
	for _, disk := range d.Disks {
		if v, _, _ := names.Disk(disk.Name); v == vm {
			disks = append(disks, disk)
		}
	}
	switch {
	case len(disks) == 0:
		return nil, fmt.Errorf("%w: %s", ErrUnknownTarget, vm)
	case !d.replicating():
		return nil, ErrNotReplicating
	}
	return disks, nil
}

// ResumeInfo answers a resume: what each disk's shipper was doing.
type ResumeInfo struct {
	VM    string            `json:"vm"`
	Disks map[string]string `json:"disks"` // connected, retrying or stopped
}

// Resume makes every disk of a VM retry replication now: a backoff wait
// ends, and a disk stopped in Critical by an error the operator has since
// fixed starts again.
func (d *Daemon) Resume(vm string) (ResumeInfo, error) {
	disks, err := d.vmShippers(vm)
	if err != nil {
		return ResumeInfo{}, err
	}
	info := ResumeInfo{VM: vm, Disks: map[string]string{}}
	for _, disk := range disks {
		was := d.shipper(disk.Name).Resume()
		info.Disks[disk.Name] = was
		d.log.Info(disk.Name+": replication resume asked for by the operator", "disk", disk.Name, "was", was)
	}
	return info, nil
}

// ReplicationSettings answers a settings change.
type ReplicationSettings struct {
	Frequency   string   `json:"frequency"`
	PointsEvery float64  `json:"points_every_seconds"`
	VMs         []string `json:"vms"`
}

// SetFrequency changes the copy frequency (0: continuous) of a running
// primary: the point schedule follows it (unless --points-every fixed it),
// and every stream ships by it from its next batch and tells the replica.
// The frequency is the primary's, not a VM's: vm "" changes it for all,
// and naming a VM when others are protected too is refused.
func (d *Daemon) SetFrequency(vm string, interval time.Duration) (ReplicationSettings, error) {
	var vms []string
	for _, disk := range d.Disks {
		if v, _, _ := names.Disk(disk.Name); !slices.Contains(vms, v) {
			vms = append(vms, v)
		}
	}
	if vm != "" {
		if _, err := d.vmShippers(vm); err != nil {
			return ReplicationSettings{}, err
		}
		if len(vms) > 1 {
			return ReplicationSettings{}, fmt.Errorf("%w: it would change %s too; give --all to change it for every VM",
				ErrDaemonWide, strings.Join(slices.DeleteFunc(slices.Clone(vms), func(v string) bool { return v == vm }), ", "))
		}
	} else if !d.replicating() {
		return ReplicationSettings{}, ErrNotReplicating
	}
	if interval < 0 {
		return ReplicationSettings{}, fmt.Errorf("%w %v", ErrBadFrequency, interval)
	}
	d.freqMu.Lock()
	defer d.freqMu.Unlock()
	old := d.interval()
	d.freq.Store(int64(interval))
	every := d.pointsEvery()
	d.points.setEvery(every)
	for _, disk := range d.Disks {
		d.shipMode(disk, d.shipper(disk.Name))
	}
	d.log.Info("copy frequency changed", "from", health.FrequencyName(old), "to", health.FrequencyName(interval), "points_every", every)
	return ReplicationSettings{Frequency: health.FrequencyName(interval), PointsEvery: every.Seconds(), VMs: vms}, nil
}
