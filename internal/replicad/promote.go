package replicad

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/blockdev/tracked"
	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/statefile"
	"github.com/vrep-io/vrep/internal/vfs"
	"github.com/vrep-io/vrep/nbd"
	"github.com/vrep-io/vrep/replica/store"
)

// Unplanned failover: the primary is gone, and the replica serves a
// chosen point as the VM's writable, tracked disks, under their own
// names (NBD export VM/DISK, FUSE file VM/DISK.img). Nothing is copied
// before serving: each disk is a tracked volume over a persistent
// copy-on-write overlay over the point's view. While failed over, the
// VM's streams are refused (fencing: the primary that comes back learns
// it is superseded and stops taking writes) and retention leaves its
// history alone, so that a cancel brings back exactly what was there.
// A commit makes the running disk the VM's disk for good: it rolls the
// replica image back to the point, folds the overlay into it, switches
// the volume's base to the image under its clients, and drops the VM's
// points and history.
//
// Every step is persisted before it is acted on, in the VM's directory
// (DATA/ROOT/VM/failover.state): a state file (statefile framing, magic
// "VREPFOVR") whose body is the JSON of foState. A restart reads it and
// serves again (FailedOver, Committed) or finishes the commit
// (Committing, from its step). The generation only goes up: it outlives
// a cancel (the file then says Replicating). Each disk's failover files
// are in DATA/ROOT/VM/DISK/failover/: the tracked volume's log and
// checkpoint, and the overlay (overlay, overlay.map).

// Failover states. Part of the format; do not change.
const (
	stReplicating = "Replicating"
	stFailedOver  = "FailedOver"
	stCommitting  = "Committing"
	stCommitted   = "Committed"
)

// Commit steps: the step a Committing VM is at. Part of the format.
const (
	stepRollBack = "rollback" // roll the image back to the point
	stepFold     = "fold"     // fold the overlay into the image
	stepSwitched = "switched" // the volume's base is the image; drop the history
)

const foMagic = "VREPFOVR"

// foState is the persisted failover state of a VM.
type foState struct {
	State      string            `json:"state"`
	Step       string            `json:"step,omitempty"`
	Generation uint64            `json:"generation"`
	Point      VMPoint           `json:"point"`   // LSNs: each disk's point LSN
	Disks      []string          `json:"disks"`   // ROOT/VM/DISK
	Started    time.Time         `json:"started"` // when the failover started
	Committed  time.Time         `json:"committed,omitzero"`
	Extra      map[string]string `json:"extra,omitempty"` // room for the next steps (planned, reverse)
}

// FailoverInfo describes a VM's failover, in the API and status.
type FailoverInfo struct {
	VM         string    `json:"vm"`    // ROOT/VM
	State      string    `json:"state"` // FailedOver, Committing or Committed
	Step       string    `json:"step,omitempty"`
	Generation uint64    `json:"generation"`
	Point      VMPoint   `json:"point"`
	Started    time.Time `json:"started"`
	Committed  time.Time `json:"committed,omitzero"`
	Exports    []string  `json:"nbd_exports"`
	Files      []string  `json:"files,omitempty"`
	// Summary is the state in plain words.
	Summary string `json:"summary"`
	// Error, if set, is why the failover could not be resumed at start.
	Error string `json:"error,omitempty"`
	// ServingSeconds is how long the start took to serve (API answer to
	// a start only).
	ServingSeconds float64 `json:"serving_seconds,omitempty"`
}

// failover is a VM's failover in the daemon.
type failover struct {
	key   string // ROOT/VM
	root  string
	vm    string
	st    foState
	disks []*foDisk
	err   string
}

// foDisk is one served disk of a failed-over VM.
type foDisk struct {
	key    string // ROOT/VM/DISK
	export string // VM/DISK
	dir    string // its failover directory
	view   *store.View
	ov     *store.Overlay
	img    *store.ImageDevice
	sw     *swapDev
	vol    *tracked.Volume
	hold   func() // releases the catalog's hold on the disk's history
}

// swapDev is a device whose backing device can be switched under its
// users: the tracked volume of a failed-over disk sits on it, over the
// overlay until a commit switches it to the replica image. A switch
// waits for the I/O under way. Safe for concurrent use.
type swapDev struct {
	mu  sync.RWMutex
	dev blockdev.Device
}

var _ blockdev.Device = (*swapDev)(nil)

func (s *swapDev) Size() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.dev.Size()
}

func (s *swapDev) ReadAt(p []byte, off int64) (int, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.dev.ReadAt(p, off)
}

func (s *swapDev) WriteAt(p []byte, off int64) (int, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.dev.WriteAt(p, off)
}

func (s *swapDev) Sync() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.dev.Sync()
}

// swap switches to dev, which must read the same as the device before.
func (s *swapDev) swap(dev blockdev.Device) {
	s.mu.Lock()
	s.dev = dev
	s.mu.Unlock()
}

func foStatePath(data, root, vm string) string {
	return filepath.Join(data, root, vm, "failover.state")
}

func readFoState(data, root, vm string) (foState, error) {
	body, err := statefile.Read(vfs.OS{}, foStatePath(data, root, vm), foMagic, -1)
	if errors.Is(err, fs.ErrNotExist) {
		return foState{State: stReplicating, Generation: 1}, nil
	}
	if err != nil {
		return foState{}, fmt.Errorf("replica: the failover state of %s/%s: %w", root, vm, err)
	}
	var st foState
	if err := json.Unmarshal(body, &st); err != nil {
		return foState{}, fmt.Errorf("replica: the failover state of %s/%s: %w", root, vm, statefile.ErrBad)
	}
	return st, nil
}

func (d *Daemon) saveFoState(f *failover) error {
	body, err := json.Marshal(f.st)
	if err != nil {
		return err
	}
	if err := statefile.Write(vfs.OS{}, foStatePath(d.cfg.Data, f.root, f.vm), foMagic, body); err != nil {
		return fmt.Errorf("replica: persisting the failover state of %s: %w", f.key, err)
	}
	d.publishLocked()
	return nil
}

// fenceReason is what a superseded primary is told.
func (d *Daemon) fenceReason(f *failover) string {
	to := "the replica"
	if d.cfg.Name != "" {
		to = d.cfg.Name
	}
	return fmt.Sprintf("VM %s failed over to %s at %s (generation %d)", f.vm, to,
		f.st.Started.UTC().Format(time.RFC3339), f.st.Generation)
}

// choosePoint picks a VM's point by "latest", "latest-app" or an id.
func choosePoint(pts []VMPoint, spec, vm string) (VMPoint, error) {
	if len(pts) == 0 {
		return VMPoint{}, notFound("VM %s has no recovery point on this replica yet", vm)
	}
	switch spec {
	case "", "latest":
		return pts[len(pts)-1], nil
	case "latest-app":
		for i := len(pts) - 1; i >= 0; i-- {
			if pts[i].Kind == "app-consistent" {
				return pts[i], nil
			}
		}
		return VMPoint{}, notFound("VM %s has no app-consistent point on this replica (vrep points %s --kind app lists them)", vm, vm)
	}
	id, err := strconv.ParseUint(spec, 10, 64)
	if err != nil || id == 0 {
		return VMPoint{}, &Error{Status: 400, Msg: "point must be a point id, latest or latest-app"}
	}
	i := slices.IndexFunc(pts, func(p VMPoint) bool { return p.ID == id })
	if i < 0 {
		return VMPoint{}, notFound("VM %s has no point %d: it never existed or was pruned (vrep points %s lists them)", vm, id, vm)
	}
	return pts[i], nil
}

// StartFailover fails VM over to a point ("latest", "latest-app" or an
// id): its disks are served writable, tracked, under their own names.
// A consistency group's name fails every VM of the group over (group.go).
func (d *Daemon) StartFailover(spec, point string) (FailoverInfo, error) {
	t0 := time.Now()
	root, vm, keys, err := d.vmDisks(spec)
	if err != nil {
		return FailoverInfo{}, err
	}
	slices.Sort(keys)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.canFailOverLocked(root, vm, spec); err != nil {
		return FailoverInfo{}, err
	}
	pts, err := d.points(keys)
	if err != nil {
		return FailoverInfo{}, err
	}
	p, err := choosePoint(pts, point, spec)
	if err != nil {
		return FailoverInfo{}, err
	}
	f, err := d.failOverLocked(root, vm, keys, p, nil)
	if err != nil {
		return FailoverInfo{}, err
	}
	info := d.foInfo(f)
	info.ServingSeconds = time.Since(t0).Seconds()
	d.log.Info("replica: failed over: the VM's disks are served writable at the point; commit or cancel", "vm", f.key,
		"point", p.ID, "kind", p.Kind, "point_time", p.Time.Format(time.RFC3339), "generation", f.st.Generation,
		"exports", strings.Join(info.Exports, ","), "took", time.Since(t0))
	return info, nil
}

// canFailOverLocked says why VM cannot fail over now (a test failover of
// it runs, or a failover of it is under way or committed), or nil.
func (d *Daemon) canFailOverLocked(root, vm, spec string) error {
	key := root + "/" + vm
	if _, ok := d.tests[key]; ok {
		return conflict("a test failover of VM %s runs; stop it first: vrep failover test-stop %s", vm, spec)
	}
	if f := d.fos[key]; f != nil {
		if f.st.State == stCommitted {
			return conflict("VM %s is already failed over and committed (generation %d); it runs here now", vm, f.st.Generation)
		}
		return conflict("a failover of VM %s is already in progress (%s at point %d); commit or cancel it first", vm, f.st.State, f.st.Point.ID)
	}
	return nil
}

// failOverLocked fails VM over to p: the state and the raised generation
// are persisted (with extra, if any), then its disks served. On error
// nothing is left served and the state says Replicating again.
func (d *Daemon) failOverLocked(root, vm string, keys []string, p VMPoint, extra map[string]string) (*failover, error) {
	key := root + "/" + vm
	prev, err := readFoState(d.cfg.Data, root, vm)
	if err != nil {
		return nil, err
	}
	gen := prev.Generation
	if d.cfg.Generation != nil {
		// NB: a planned failover and its failback raise the generation
		// on the hosts, not in this file (dropped with the VM's store
		// when it was promoted).
		gen = max(gen, d.cfg.Generation(root, vm))
	}
	f := &failover{key: key, root: root, vm: vm, st: foState{State: stFailedOver, Generation: gen + 1,
		Point: p, Disks: keys, Started: time.Now(), Extra: extra}}
	for _, k := range keys {
		if err := os.RemoveAll(filepath.Join(d.cfg.Data, filepath.FromSlash(k), "failover")); err != nil {
			return nil, fmt.Errorf("replica: %w", err)
		}
	}
	// The state and the generation first: a restart serves what it says.
	if err := d.saveFoState(f); err != nil {
		return nil, err
	}
	faultpoint.Hit(faultpoint.FailoverStateSaved)
	if err := d.serveFailover(f, true); err != nil {
		d.stopServing(f)
		f.st.State = stReplicating
		if serr := d.saveFoState(f); serr != nil {
			d.log.Error("replica: a failed failover could not be rolled back; the VM stays fenced until a restart", "vm", key, "err", serr)
		} else {
			d.srv.Unfence(root, vm)
		}
		return nil, err
	}
	d.fos[key] = f
	d.publishLocked()
	return f, nil
}

// serveFailover fences the VM's streams and serves its disks as its state
// says: over the overlay (FailedOver, Committing before the switch) or
// the image (after it). fresh makes new overlays.
func (d *Daemon) serveFailover(f *failover, fresh bool) error {
	d.srv.Fence(f.root, f.vm, d.fenceReason(f))
	onImage := f.st.State == stCommitted || f.st.State == stCommitting && f.st.Step == stepSwitched
	for _, k := range f.st.Disks {
		fd := &foDisk{key: k, export: diskName(k), dir: filepath.Join(d.cfg.Data, filepath.FromSlash(k), "failover")}
		f.disks = append(f.disks, fd)
		if err := d.openFoDisk(f, fd, fresh, onImage); err != nil {
			return fmt.Errorf("replica: failing %s over: %w", fd.export, err)
		}
		d.nbd.Add(nbd.Export{Name: fd.export, Device: fd.vol})
		if d.fuse != nil {
			if err := d.fuse.Add(fd.export, fd.vol); err != nil {
				d.nbd.Remove(fd.export)
				return err
			}
		}
	}
	return nil
}

func (d *Daemon) openFoDisk(f *failover, fd *foDisk, fresh, onImage bool) (err error) {
	ovPath := filepath.Join(fd.dir, "overlay")
	if onImage {
		if fd.img, err = d.Catalog.OpenImage(fd.key); err != nil {
			return err
		}
		fd.sw = &swapDev{dev: fd.img}
	} else {
		fd.hold = d.Catalog.Hold(fd.key)
		if fd.view, err = d.Catalog.OpenView(fd.key, f.st.Point.LSNs[fd.export]); err != nil {
			return err
		}
		if err := os.MkdirAll(fd.dir, 0o700); err != nil {
			return err
		}
		if _, err := os.Stat(ovPath + ".map"); errors.Is(err, fs.ErrNotExist) {
			// Killed after the state was saved, before the disk was
			// first served: nothing was written yet.
			fresh = true
		}
		if fresh {
			fd.ov, err = store.CreateOverlay(vfs.OS{}, ovPath, fd.view)
		} else {
			fd.ov, err = store.OpenOverlay(vfs.OS{}, ovPath, fd.view)
		}
		if err != nil {
			return err
		}
		fd.sw = &swapDev{dev: fd.ov}
	}
	// The log is kept (no replica releases it), so that reverse
	// replication knows every block written since the failover; past half
	// the disk it overflows, and a checksum compare takes over.
	fd.vol, err = tracked.Open(fd.dir, fd.sw, tracked.Options{Retain: true})
	return err
}

// stopServing detaches a failover's disks by force and closes them,
// keeping their files.
func (d *Daemon) stopServing(f *failover) {
	for _, fd := range f.disks {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if n, _ := d.nbd.Detach(ctx, fd.export, true); n > 0 {
			d.log.Warn("replica: failed-over disk stopped under its NBD clients", "disk", fd.export, "connections", n)
		}
		if d.fuse != nil {
			d.fuse.Detach(ctx, fd.export, true)
		}
		cancel()
		d.closeFoDisk(fd)
	}
}

// closeFoDisk closes a disk's volume (making its writes durable in the
// base), overlay, view and image.
func (d *Daemon) closeFoDisk(fd *foDisk) {
	if fd.vol != nil {
		if err := fd.vol.Close(); err != nil {
			d.log.Error("replica: closing a failed-over disk", "disk", fd.export, "err", err)
		}
	}
	if fd.ov != nil {
		if err := fd.ov.Sync(); err != nil {
			d.log.Error("replica: syncing a failover overlay", "disk", fd.export, "err", err)
		}
		fd.ov.Close()
	}
	if fd.view != nil {
		fd.view.Close()
	}
	if fd.img != nil {
		fd.img.Close()
	}
	if fd.hold != nil {
		fd.hold()
	}
}

// findFailover returns the failover of VM (or ROOT/VM), or a not-found
// error naming what was asked.
func (d *Daemon) findFailover(spec, verb string) (*failover, error) {
	root, vm, _, err := d.vmDisks(spec)
	if err != nil {
		return nil, err
	}
	if f := d.fos[root+"/"+vm]; f != nil {
		return f, nil
	}
	return nil, notFound("VM %s is not failed over: there is no failover to %s", spec, verb)
}

// CancelFailover ends VM's failover and goes back to replicating: what
// was written to the failed-over disks is discarded; the replica image
// and every point are as before the failover. While a client holds a
// disk it refuses, unless force.
func (d *Daemon) CancelFailover(spec string, force bool) (FailoverInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f, err := d.findFailover(spec, "cancel")
	if err != nil {
		return FailoverInfo{}, err
	}
	return d.cancelLocked(f, spec, force)
}

// cancelLocked cancels failover f (see CancelFailover).
func (d *Daemon) cancelLocked(f *failover, spec string, force bool) (FailoverInfo, error) {
	if f.err != "" {
		// The state could not be read at start: nothing is served, the
		// VM's streams are refused. Only the operator knows whether the
		// image may take replication again.
		if !force {
			return FailoverInfo{}, conflict("the failover state of VM %s could not be read (%s); vrep failover cancel %s --force sets it aside (as failover.state.broken) and lets the primary replicate into the image again", spec, f.err, spec)
		}
		path := foStatePath(d.cfg.Data, f.root, f.vm)
		if err := os.Rename(path, path+".broken"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return FailoverInfo{}, fmt.Errorf("replica: setting the damaged failover state aside: %w", err)
		}
		delete(d.fos, f.key)
		d.publishLocked()
		d.srv.Unfence(f.root, f.vm)
		d.log.Warn("replica: a damaged failover state was set aside by the operator; the VM replicates again", "vm", f.key, "kept", path+".broken")
		return FailoverInfo{VM: f.key, State: stReplicating, Summary: "Replicating: the damaged failover state was set aside", Exports: []string{}}, nil
	}
	if f.st.State != stFailedOver {
		return FailoverInfo{}, conflict("VM %s is %s: a commit cannot be cancelled", spec, strings.ToLower(f.st.State))
	}
	if !force {
		if err := d.detachIdle(f.served()); err != nil {
			return FailoverInfo{}, err
		}
	}
	info := d.foInfo(f)
	d.stopServing(f)
	f.st.State, f.st.Step = stReplicating, ""
	if err := d.saveFoState(f); err != nil {
		return FailoverInfo{}, err
	}
	for _, fd := range f.disks {
		if fd.ov != nil {
			fd.ov.Discard()
		}
		if err := os.RemoveAll(fd.dir); err != nil {
			d.log.Warn("replica: removing a cancelled failover's files", "dir", fd.dir, "err", err)
		}
	}
	delete(d.fos, f.key)
	d.publishLocked()
	d.srv.Unfence(f.root, f.vm)
	d.log.Info("replica: failover cancelled: its writes are discarded; the VM replicates again from where it was", "vm", f.key,
		"point", f.st.Point.ID, "generation", f.st.Generation, "forced", force)
	info.State, info.Summary = stReplicating, "Replicating: the failover was cancelled"
	return info, nil
}

// served lists a failover's exports and devices.
func (f *failover) served() []served {
	var out []served
	for _, fd := range f.disks {
		out = append(out, served{fd.export, fd.vol, nbd.Export{Name: fd.export, Device: fd.vol}})
	}
	return out
}

// CommitFailover keeps what the failed-over VM runs as its disks for
// good: the image is rolled back to the point, the overlay folded in,
// the volumes switched onto the image under their clients, and the VM's
// points and history dropped.
func (d *Daemon) CommitFailover(spec string) (FailoverInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f, err := d.findFailover(spec, "commit")
	if err != nil {
		return FailoverInfo{}, err
	}
	switch {
	case f.err != "":
		return FailoverInfo{}, conflict("the failover of VM %s could not be resumed at start: %s", spec, f.err)
	case f.st.State == stCommitted:
		return FailoverInfo{}, conflict("VM %s is already committed", spec)
	}
	if err := d.commit(f); err != nil {
		return FailoverInfo{}, err
	}
	return d.foInfo(f), nil
}

// commit runs (or finishes) a commit from its persisted step. Called
// with d.mu held.
func (d *Daemon) commit(f *failover) error {
	if f.st.State == stFailedOver {
		f.st.State, f.st.Step, f.st.Committed = stCommitting, stepRollBack, time.Now()
		if err := d.saveFoState(f); err != nil {
			return err
		}
	}
	if f.st.Step == stepRollBack {
		var n int64
		for _, fd := range f.disks {
			// What the rollback undoes diverged from the point: reverse
			// replication sends those blocks back (recorded once, before
			// the first rollback, so that a restart keeps the whole set).
			rb := filepath.Join(fd.dir, rolledBackFile)
			if _, err := os.Stat(rb); errors.Is(err, fs.ErrNotExist) {
				ext, err := d.Catalog.ChangedAfter(fd.key, fd.view.LSN())
				if err == nil {
					err = store.WriteExtents(rb, ext.Normalize(1, fd.vol.Size()))
				}
				if err != nil {
					return fmt.Errorf("replica: committing %s: %w", fd.export, err)
				}
			}
			b, err := d.Catalog.RollBack(fd.key, fd.view.LSN())
			if err != nil {
				return fmt.Errorf("replica: committing %s: %w", fd.export, err)
			}
			n += b
		}
		faultpoint.Hit(faultpoint.CommitRolledBack)
		f.st.Step = stepFold
		if err := d.saveFoState(f); err != nil {
			return err
		}
		d.log.Info("replica: commit: the image is back at the point", "vm", f.key, "rolled_back_bytes", n)
	}
	if f.st.Step == stepFold {
		// Merges stop, so the overlay holds still while it is folded;
		// writes go on into the volumes' logs.
		for _, fd := range f.disks {
			fd.vol.PauseMerge()
		}
		resumed := false
		resume := func() {
			if !resumed {
				resumed = true
				for _, fd := range f.disks {
					fd.vol.ResumeMerge()
				}
			}
		}
		defer resume()
		var n int64
		for _, fd := range f.disks {
			b, err := d.Catalog.Fold(fd.key, fd.ov)
			if err != nil {
				return fmt.Errorf("replica: committing %s: %w", fd.export, err)
			}
			n += b
		}
		imgs := make([]*store.ImageDevice, len(f.disks))
		for i, fd := range f.disks {
			img, err := d.Catalog.OpenImage(fd.key)
			if err != nil {
				for _, im := range imgs[:i] {
					im.Close()
				}
				return err
			}
			imgs[i] = img
		}
		faultpoint.Hit(faultpoint.CommitFolded)
		// Persisted before the switch: once merges reach the image, a
		// restart must open the volumes over it.
		f.st.Step = stepSwitched
		if err := d.saveFoState(f); err != nil {
			for _, im := range imgs {
				im.Close()
			}
			return err
		}
		for i, fd := range f.disks {
			fd.img = imgs[i]
			fd.sw.swap(fd.img)
		}
		resume()
		faultpoint.Hit(faultpoint.CommitSwitched)
		d.log.Info("replica: commit: the failed-over writes are in the image, which the disks run on now", "vm", f.key, "folded_bytes", n)
	}
	for _, fd := range f.disks {
		if fd.view != nil {
			fd.view.Close()
			fd.view = nil
		}
		if fd.ov != nil {
			fd.ov.Discard()
			fd.ov = nil
		}
		os.Remove(filepath.Join(fd.dir, "overlay"))
		os.Remove(filepath.Join(fd.dir, "overlay.map"))
		if err := d.Catalog.DropHistory(fd.key); err != nil {
			return fmt.Errorf("replica: committing %s: %w", fd.export, err)
		}
		if fd.hold != nil {
			fd.hold()
			fd.hold = nil
		}
	}
	faultpoint.Hit(faultpoint.CommitHistoryDropped)
	f.st.State, f.st.Step = stCommitted, ""
	if err := d.saveFoState(f); err != nil {
		return err
	}
	d.log.Info("replica: failover committed: the VM runs here for good; its points and history are dropped", "vm", f.key,
		"point", f.st.Point.ID, "generation", f.st.Generation)
	return nil
}

// resumeFailovers reads every VM's failover state at start and serves
// again (FailedOver, Committed) or finishes a commit; a cancelled
// failover's leftover files go.
//
// Commits a restart interrupted are returned, to be finished by
// finishCommits once the daemon serves: a commit rolls back and folds
// whole disks, and the API must answer meanwhile.
func (d *Daemon) resumeFailovers() (committing []*failover) {
	states, _ := filepath.Glob(filepath.Join(d.cfg.Data, "*", "*", "failover.state"))
	for _, path := range states {
		vmDir := filepath.Dir(path)
		root, vm := filepath.Base(filepath.Dir(vmDir)), filepath.Base(vmDir)
		st, err := readFoState(d.cfg.Data, root, vm)
		f := &failover{key: root + "/" + vm, root: root, vm: vm, st: st}
		if err != nil {
			d.log.Error("replica: cannot read a failover state; the VM's streams are refused until it is repaired", "vm", f.key, "err", err)
			d.srv.Fence(root, vm, fmt.Sprintf("VM %s failed over to the replica (its failover state is damaged)", vm))
			f.err = err.Error()
			d.fos[f.key] = f
			continue
		}
		if st.State == stReplicating {
			for _, k := range st.Disks {
				os.RemoveAll(filepath.Join(d.cfg.Data, filepath.FromSlash(k), "failover"))
			}
			continue
		}
		d.fos[f.key] = f
		if err := d.serveFailover(f, false); err != nil {
			d.log.Error("replica: could not serve a failed-over VM again; its streams stay refused", "vm", f.key, "err", err)
			d.stopServing(f)
			f.err = err.Error()
			continue
		}
		if st.State == stCommitting {
			committing = append(committing, f)
		}
		d.log.Info("replica: failed-over VM served again", "vm", f.key, "state", f.st.State, "point", f.st.Point.ID)
	}
	d.publishLocked()
	return committing
}

// finishCommits finishes, in the background, the commits a restart
// interrupted (their disks are served meanwhile); Close waits for them.
func (d *Daemon) finishCommits(fos []*failover) {
	for _, f := range fos {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.mu.Lock()
			defer d.mu.Unlock()
			d.log.Info("replica: finishing a commit a restart interrupted", "vm", f.key, "step", f.st.Step)
			if err := d.commit(f); err != nil {
				d.log.Error("replica: could not finish the commit; vrep failover commit retries", "vm", f.key, "err", err)
			}
		}()
	}
}

// closeFailovers closes the failed-over disks at daemon stop.
func (d *Daemon) closeFailovers() {
	for _, f := range d.fos {
		for _, fd := range f.disks {
			d.closeFoDisk(fd)
		}
	}
}

// foInfo describes a failover.
func (d *Daemon) foInfo(f *failover) FailoverInfo {
	fi := FailoverInfo{VM: f.key, State: f.st.State, Step: f.st.Step, Generation: f.st.Generation, Point: f.st.Point,
		Started: f.st.Started, Committed: f.st.Committed, Error: f.err, Exports: []string{}}
	for _, k := range f.st.Disks {
		fi.Exports = append(fi.Exports, diskName(k))
		if d.fuse != nil {
			fi.Files = append(fi.Files, d.fuse.Path(diskName(k)))
		}
	}
	p := f.st.Point
	at := fmt.Sprintf("point %d (%s, %s)", p.ID, p.Time.Local().Format(time.DateTime), p.Kind)
	switch {
	case f.err != "":
		fi.Summary = "Failover state could not be resumed: " + f.err
	case f.st.State == stFailedOver:
		fi.Summary = "Failed over to " + at + ", waiting for commit or cancel"
	case f.st.State == stCommitting:
		fi.Summary = "Committing " + at + " (step " + f.st.Step + ")"
	case f.st.State == stCommitted:
		fi.Summary = "Committed at " + f.st.Committed.Local().Format(time.DateTime) + ": serving " + strings.Join(fi.Exports, ", ")
	}
	return fi
}

// failovers lists the daemon's failovers for status.
func (d *Daemon) failovers() []FailoverInfo {
	d.shownMu.Lock()
	defer d.shownMu.Unlock()
	return slices.Clone(d.shown.fos)
}

// shownTests lists the running test failovers for status.
func (d *Daemon) shownTests() []TestInfo {
	d.shownMu.Lock()
	defer d.shownMu.Unlock()
	return slices.Clone(d.shown.tests)
}

// publishLocked publishes the tests and failovers as status shows them.
// The caller holds d.mu, or is alone (at start).
func (d *Daemon) publishLocked() {
	fos := []FailoverInfo{}
	for _, f := range d.fos {
		fos = append(fos, d.foInfo(f))
	}
	slices.SortFunc(fos, func(a, b FailoverInfo) int { return strings.Compare(a.VM, b.VM) })
	tests := []TestInfo{}
	for _, t := range d.tests {
		tests = append(tests, t.info)
	}
	slices.SortFunc(tests, func(a, b TestInfo) int { return strings.Compare(a.VM, b.VM) })
	d.shownMu.Lock()
	d.shown.fos, d.shown.tests = fos, tests
	d.shownMu.Unlock()
}
