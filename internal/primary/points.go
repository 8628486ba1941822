package primary

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/snapshot"
	"github.com/vrep-io/vrep/vss"
)

// PointsConfig says how points are taken.
type PointsConfig struct {
	// Groups maps a consistency group to its VMs; a VM in no group is a
	// group of its own, named after it.
	Groups map[string][]string
	// Every and AppEvery schedule crash- and app-consistent points; zero
	// means by hand only (vrep point create).
	Every, AppEvery time.Duration
	// Freeze, PreFreeze, PostThaw and GuestAgent configure each VM's
	// quiescers: mount points to fsfreeze, hook commands, qemu-ga socket.
	Freeze     map[string][]string
	PreFreeze  map[string]string
	PostThaw   map[string]string
	GuestAgent map[string]string
	// FreezeTimeout bounds a quiesce; past it the point is crash-consistent.
	FreezeTimeout time.Duration
}

// ErrUnknownTarget is returned for a point on a VM or group that is not here.
var ErrUnknownTarget = errors.New("no such VM or consistency group")

// points holds the daemon's groups, their quiescers and recent points.
type points struct {
	cfg    PointsConfig
	groups map[string]*snapshot.Group
	vmOf   map[string]string // group of each VM
	vms    map[string][]string
	mu     sync.Mutex
	recent []snapshot.Point // newest last, bounded
	stop   chan struct{}
	wg     sync.WaitGroup
	// keep lists the paths whose file systems are never frozen: the state
	// directory, every change log and image, and /.
	keep  []string
	crash *time.Ticker // the crash-point schedule; nil: by hand only
	// The replica's new copies of disks (ShipperConfig.OnBase): the
	// crash schedule takes a point of a disk's group at once, once every
	// disk of the group has a copy there, so the replica has a point of
	// its new copy to fail over to without waiting for the next tick.
	// baseReqs (under p.mu) are the copies not looked at yet, based
	// signals them; waiting (the schedule's own) holds the groups with a
	// new copy whose other disks had none yet.
	baseReqs []baseReq
	based    chan struct{}
	waiting  map[string]bool
}

// baseReq is a disk the replica holds a copy of, at lsn: new (fresh),
// or one it already held when the disk's stream connected.
type baseReq struct {
	disk  string
	lsn   uint64
	fresh bool
}

// setEvery changes how often scheduled crash points are taken.
func (p *points) setEvery(every time.Duration) {
	if p.crash != nil {
		p.crash.Reset(every)
	}
}

const keepRecent = 256

func (d *Daemon) setupPoints(cfg PointsConfig) error {
	p := &points{cfg: cfg, groups: map[string]*snapshot.Group{}, vmOf: map[string]string{}, vms: map[string][]string{}, stop: make(chan struct{}),
		based: make(chan struct{}, 1), waiting: map[string]bool{}}
	disksOf := map[string]map[string]snapshot.Disk{}
	for _, disk := range d.Disks {
		vm, _, _ := names.Disk(disk.Name)
		if disksOf[vm] == nil {
			disksOf[vm] = map[string]snapshot.Disk{}
		}
		disksOf[vm][disk.Name] = disk.Volume
	}
	for g, vms := range cfg.Groups {
		if err := names.Part(g); err != nil {
			return fmt.Errorf("group: %w", err)
		}
		for _, vm := range vms {
			if disksOf[vm] == nil {
				return fmt.Errorf("%w: group %s names VM %s, which has no --disk", names.ErrBadName, g, vm)
			}
			if other, ok := p.vmOf[vm]; ok {
				return fmt.Errorf("%w: VM %s is in groups %s and %s", names.ErrBadName, vm, other, g)
			}
			p.vmOf[vm] = g
		}
	}
	for vm := range disksOf {
		if _, ok := p.vmOf[vm]; !ok {
			if _, clash := cfg.Groups[vm]; clash {
				return fmt.Errorf("%w: group %s has the name of a VM outside it", names.ErrBadName, vm)
			}
			p.vmOf[vm] = vm
		}
	}
	for vm, g := range p.vmOf {
		p.vms[g] = append(p.vms[g], vm)
	}
	for g, vms := range p.vms {
		sort.Strings(vms)
		members := map[string]snapshot.Disk{}
		for _, vm := range vms {
			for n, disk := range disksOf[vm] {
				members[n] = disk
			}
		}
		grp, err := snapshot.NewGroup(g, members)
		if err != nil {
			return err
		}
		p.groups[g] = grp
	}
	// Freezing the file system of vrep's own state, logs or images would
	// stop the barrier that the freeze is for (and the host, for /).
	p.keep = []string{"/", d.cfg.State}
	for _, disk := range d.Disks {
		vm, name, _ := names.Disk(disk.Name)
		p.keep = append(p.keep, filepath.Join(d.cfg.State, "disks", vm, name), disk.Path)
	}
	for vm, paths := range cfg.Freeze {
		if disksOf[vm] == nil {
			return fmt.Errorf("%w: --freeze names VM %s, which has no --disk", names.ErrBadName, vm)
		}
		for _, path := range paths {
			err := vss.CheckFreezeTarget(path, p.keep)
			if errors.Is(err, vss.ErrNotMountPoint) {
				// Not refused: a file system on one of this daemon's own
				// disks can only be mounted once the daemon serves them.
				// Each freeze checks again, and refuses until then.
				d.log.Warn("--freeze names a directory where nothing is mounted yet; app-consistent points of the VM are crash-consistent until a file system is mounted there", "vm", vm, "path", path)
				continue
			}
			if err != nil {
				return fmt.Errorf("%w: --freeze %s=%s: %w", names.ErrBadName, vm, path, err)
			}
		}
	}
	d.points = p
	if rc := d.cfg.Replica; rc != nil && cfg.Every == 0 {
		// Points at every copy-frequency tick; every few seconds when
		// continuous.
		cfg.Every = rc.Interval
		if cfg.Every == 0 {
			cfg.Every = DefaultContinuousPoints
		}
	}
	if cfg.Every > 0 {
		p.schedule(d, cfg.Every, false)
	}
	if cfg.AppEvery > 0 {
		p.schedule(d, cfg.AppEvery, true)
	}
	return nil
}

func (p *points) schedule(d *Daemon, every time.Duration, app bool) {
	t := time.NewTicker(every)
	if !app {
		p.crash = t
	}
	p.wg.Add(1)
	var based <-chan struct{}
	if !app {
		based = p.based
	}
	go func() {
		defer p.wg.Done()
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-based:
				p.pointsOfNewCopies(d)
				continue
			case <-t.C:
			}
			for g := range p.groups {
				if _, err := d.TakePoint(context.Background(), g, app); err != nil {
					d.log.Error("scheduled point failed", "group", g, "err", err)
				}
			}
		}
	}()
}

// onBase is ShipperConfig.OnBase for disk: it queues the copy for the
// crash schedule and never blocks the shipper.
func (p *points) onBase(disk string) func(uint64, bool) {
	return func(lsn uint64, fresh bool) {
		p.mu.Lock()
		p.baseReqs = append(p.baseReqs, baseReq{disk, lsn, fresh})
		p.mu.Unlock()
		select {
		case p.based <- struct{}{}:
		default:
		}
	}
}

// pointsOfNewCopies takes a point of each group that the queued copies
// make whole on the replica: one point per group, none for a copy that a
// point already taken after it covers (the disks of a group copied at
// once ask for one each).
func (p *points) pointsOfNewCopies(d *Daemon) {
	p.mu.Lock()
	reqs := p.baseReqs
	p.baseReqs = nil
	p.mu.Unlock()
	take := map[string]string{} // group: the disk that made it whole
	for _, r := range reqs {
		vm, _, err := names.Disk(r.disk)
		if err != nil {
			continue
		}
		g, ok := p.vmOf[vm]
		switch {
		case !ok:
			continue
		case !r.fresh && !p.waiting[g]:
			continue // a copy of an earlier run: nothing asked for
		case r.fresh && p.covered(r.disk, r.lsn):
			// That point is after this copy, and after the copies of the
			// group's other disks that came before it.
			delete(p.waiting, g)
			continue
		}
		p.waiting[g] = true
		if p.copied(d, g) {
			take[g] = r.disk
		}
	}
	for g, disk := range take {
		delete(p.waiting, g)
		if _, err := d.TakePoint(context.Background(), g, false); err != nil {
			d.log.Error("point after the replica's new copy failed", "group", g, "disk", disk, "err", err)
		}
	}
}

// covered reports whether a point taken since holds disk past lsn.
func (p *points) covered(disk string, lsn uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.recent) - 1; i >= 0; i-- {
		if p.recent[i].LSNs[disk] > lsn {
			return true
		}
	}
	return false
}

// copied reports whether every disk of group g has a copy on the replica
// (its stream says so): a point taken then is a point of the whole group
// there, where one disk still in its initial copy would hold the point
// inside that copy, not as a point.
func (p *points) copied(d *Daemon, g string) bool {
	for _, member := range d.Disks {
		vm, _, _ := names.Disk(member.Name)
		if p.vmOf[vm] != g {
			continue
		}
		sh := d.shipper(member.Name)
		if sh == nil || sh.Status().Initial < 100 {
			return false
		}
	}
	return true
}

// startCrashSchedule starts taking crash-consistent points every every,
// or changes how often if a schedule runs. The caller holds d.freqMu.
func (p *points) startCrashSchedule(d *Daemon, every time.Duration) {
	if p.crash != nil {
		p.crash.Reset(every)
		return
	}
	p.schedule(d, every, false)
}

func (p *points) close() {
	close(p.stop)
	p.wg.Wait()
}

// quiescers returns the quiescers of a group's VMs, in VM order.
func (p *points) quiescers(d *Daemon, group string) []vss.Quiescer {
	var qs []vss.Quiescer
	for _, vm := range p.vms[group] {
		if p.cfg.PreFreeze[vm] != "" || p.cfg.PostThaw[vm] != "" {
			qs = append(qs, vss.Hooks{Pre: p.cfg.PreFreeze[vm], Post: p.cfg.PostThaw[vm], Log: d.log})
		}
		if s := p.cfg.GuestAgent[vm]; s != "" {
			qs = append(qs, vss.GuestAgent{Socket: s})
		}
		for _, m := range p.cfg.Freeze[vm] {
			qs = append(qs, vss.FSFreeze{Path: m, Keep: p.keep})
		}
	}
	return qs
}

// TakePoint takes a point of a consistency group, or of the group a VM
// belongs to. An app-consistent request with nothing to quiesce, or whose
// quiesce fails, gives a crash-consistent point with the reason.
func (d *Daemon) TakePoint(ctx context.Context, target string, app bool) (snapshot.Point, error) {
	p := d.points
	group := target
	if g, ok := p.vmOf[target]; ok {
		group = g
	}
	grp := p.groups[group]
	if grp == nil {
		return snapshot.Point{}, fmt.Errorf("%w: %s", ErrUnknownTarget, target)
	}
	var pt snapshot.Point
	var err error
	if app {
		timeout := p.cfg.FreezeTimeout
		if timeout <= 0 {
			timeout = 10 * time.Second
		}
		pt, err = vss.AppPoint(ctx, grp, p.quiescers(d, group), timeout, d.log)
	} else {
		pt, err = grp.Take(hrl.KindCrash, "")
	}
	if err != nil {
		return pt, err
	}
	// A point is only worth having if it survives a crash. With an
	// interval copy frequency it closes the interval: the segment is
	// sealed (new writes go to the next one) and shipped up to the point.
	for n, lsn := range pt.LSNs {
		if disk := d.disk(n); disk != nil {
			if serr := disk.Volume.Log().Sync(); serr != nil {
				return pt, fmt.Errorf("point %d: %w", pt.ID, serr)
			}
			if d.replicating() && d.interval() > 0 {
				if _, serr := disk.Volume.Log().Seal(); serr != nil {
					return pt, fmt.Errorf("point %d: %w", pt.ID, serr)
				}
				for cur := disk.shipThrough.Load(); lsn > cur && !disk.shipThrough.CompareAndSwap(cur, lsn); cur = disk.shipThrough.Load() {
				}
			}
		}
	}
	p.mu.Lock()
	p.recent = append(p.recent, pt)
	if len(p.recent) > keepRecent {
		p.recent = p.recent[len(p.recent)-keepRecent:]
	}
	p.mu.Unlock()
	d.log.Info("point taken", "group", group, "id", pt.ID, "kind", hrl.KindName(pt.Kind), "hold", pt.Hold, "reason", pt.Reason)
	return pt, nil
}

func (d *Daemon) disk(name string) *Disk {
	for _, disk := range d.Disks {
		if disk.Name == name {
			return disk
		}
	}
	return nil
}

// ParseGroups parses --group NAME=VM,VM.
func ParseGroups(specs []string) (map[string][]string, error) {
	out := map[string][]string{}
	for _, s := range specs {
		name, vms, ok := strings.Cut(s, "=")
		if !ok || vms == "" {
			return nil, fmt.Errorf("%w: --group %q must be NAME=VM[,VM...]", names.ErrBadName, s)
		}
		for _, vm := range strings.Split(vms, ",") {
			if err := names.Part(vm); err != nil {
				return nil, err
			}
			out[name] = append(out[name], vm)
		}
	}
	return out, nil
}

// ParseVMValues parses repeated VM=VALUE flags.
func ParseVMValues(flag string, specs []string) (map[string][]string, error) {
	out := map[string][]string{}
	for _, s := range specs {
		vm, v, ok := strings.Cut(s, "=")
		if !ok || v == "" {
			return nil, fmt.Errorf("%w: --%s %q must be VM=VALUE", names.ErrBadName, flag, s)
		}
		if err := names.Part(vm); err != nil {
			return nil, err
		}
		out[vm] = append(out[vm], v)
	}
	return out, nil
}
