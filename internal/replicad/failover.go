package replicad

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/internal/vfs"
	"github.com/vrep-io/vrep/nbd"
	"github.com/vrep-io/vrep/replica/store"
)

// A test failover (Hyper-V's "<vm> - Test"): every disk of a VM, at one
// point, as a writable copy-on-write overlay over the point's view,
// served as NBD export VM/DISK-test and FUSE file VM/DISK-test.img.
// Replication goes on applying underneath; the overlay's writes go to a
// scratch file and never reach the replica image; the point stays pinned
// (never pruned) until the test stops, which discards the overlays.
type test struct {
	info  TestInfo
	disks []testDisk
}

type testDisk struct {
	export string
	view   *store.View
	ov     *store.Overlay
	exp    nbd.Export // as served, with its changed-block contexts
}

// StartTest starts a test failover of VM at point id (0: the newest).
func (d *Daemon) StartTest(spec string, id uint64) (TestInfo, error) {
	root, vm, keys, err := d.vmDisks(spec)
	if err != nil {
		return TestInfo{}, err
	}
	slices.Sort(keys)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.canTestLocked(root, vm, spec); err != nil {
		return TestInfo{}, err
	}
	pts, err := d.points(keys)
	if err != nil {
		return TestInfo{}, err
	}
	if len(pts) == 0 {
		return TestInfo{}, notFound("VM %s has no recovery point on this replica yet", spec)
	}
	p := pts[len(pts)-1]
	if id != 0 {
		i := slices.IndexFunc(pts, func(p VMPoint) bool { return p.ID == id })
		if i < 0 {
			return TestInfo{}, notFound("VM %s has no point %d (vrep points %s lists them)", spec, id, spec)
		}
		p = pts[i]
	}
	return d.startTestLocked(root, vm, keys, p)
}

// canTestLocked says why VM cannot start a test failover now (it is
// failed over, or a test of it runs), or nil.
func (d *Daemon) canTestLocked(root, vm, spec string) error {
	if f := d.fos[root+"/"+vm]; f != nil {
		return conflict("VM %s is failed over (%s); a test failover waits until it is cancelled", vm, strings.ToLower(f.st.State))
	}
	for k := range d.tests {
		if strings.HasSuffix(k, "/"+vm) {
			return conflict("a test failover of VM %s is already running; stop it first with vrep failover test-stop %s", vm, spec)
		}
	}
	return nil
}

// startTestLocked starts a test failover of VM at p.
func (d *Daemon) startTestLocked(root, vm string, keys []string, p VMPoint) (TestInfo, error) {
	t := &test{info: TestInfo{VM: root + "/" + vm, Point: p, Started: time.Now().Format(time.RFC3339)}}
	for _, k := range keys {
		td, err := d.startTestDisk(k, p.LSNs[diskName(k)])
		if err != nil {
			d.stopTestLocked("", t)
			return TestInfo{}, err
		}
		t.disks = append(t.disks, td)
		t.info.Exports = append(t.info.Exports, td.export)
		if d.fuse != nil {
			t.info.Files = append(t.info.Files, d.fuse.Path(td.export))
		}
	}
	d.tests[t.info.VM] = t
	d.publishLocked()
	d.log.Info("replica: test failover started", "vm", t.info.VM, "point", p.ID, "kind", p.Kind,
		"point_time", p.Time.Format(time.RFC3339), "exports", strings.Join(t.info.Exports, ","))
	return t.info, nil
}

func (d *Daemon) startTestDisk(key string, lsn uint64) (td testDisk, err error) {
	td.export = diskName(key) + "-test"
	if _, _, err := names.Disk(td.export); err != nil {
		return td, err
	}
	if td.view, err = d.Catalog.OpenView(key, lsn); err != nil {
		return td, err
	}
	if td.ov, err = store.NewOverlay(vfs.OS{}, overlayPath(d.cfg.Data, key), td.view); err != nil {
		td.view.Close()
		return td, err
	}
	td.exp = d.export(key, td)
	d.nbd.Add(td.exp)
	if d.fuse != nil {
		if err := d.fuse.Add(td.export, td.ov); err != nil {
			d.nbd.Remove(td.export)
			td.ov.Discard()
			td.view.Close()
			return td, err
		}
	}
	return td, nil
}

// StopTest stops VM's test failover: its exports go, its overlays are
// discarded and its point is unpinned. While a client holds a test disk
// (an NBD connection to its export, or its FUSE file open: a guest's
// file system would lose its disk under it) it refuses with a conflict
// naming the holders and changes nothing, unless force: then the NBD
// clients are disconnected and the open files answer EIO.
func (d *Daemon) StopTest(spec string, force bool) (TestInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	key := ""
	for k := range d.tests {
		if k == spec || strings.HasSuffix(k, "/"+spec) {
			key = k
		}
	}
	if key == "" {
		return TestInfo{}, notFound("no test failover of VM %s is running", spec)
	}
	t := d.tests[key]
	if !force {
		if err := d.detachIdle(t.served()); err != nil {
			return TestInfo{}, err
		}
	}
	d.stopTestLocked(key, t)
	d.log.Info("replica: test failover stopped; its writes are discarded", "vm", key, "point", t.info.Point.ID, "forced", force)
	return t.info, nil
}

// served is an export and the device it serves.
type served struct {
	export string
	dev    blockdev.Device
	exp    nbd.Export // as served over NBD (with its block-status contexts)
}

func (t *test) served() []served {
	var out []served
	for _, td := range t.disks {
		out = append(out, served{td.export, td.ov, td.exp})
	}
	return out
}

// detachIdle detaches every export and file given (a test's, a
// failover's) unless a client holds one; then it puts back what it
// detached and names the holders. Each detach is atomic, so no client
// can slip in between the check and the stop.
func (d *Daemon) detachIdle(disks []served) error {
	// A client that has just closed is seen gone a moment later.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var undo []func()
	busy := false
	for _, td := range disks {
		if _, err := d.nbd.Detach(ctx, td.export, false); err != nil {
			busy = true
			continue
		}
		undo = append(undo, func() { d.nbd.Add(td.exp) })
		if d.fuse == nil {
			continue
		}
		if _, err := d.fuse.Detach(ctx, td.export, false); err != nil {
			busy = true
			continue
		}
		undo = append(undo, func() {
			if err := d.fuse.Add(td.export, td.dev); err != nil {
				d.log.Error("replica: serving a test disk again after a refused stop", "disk", td.export, "err", err)
			}
		})
	}
	if !busy {
		return nil
	}
	for _, f := range undo {
		f()
	}
	var held []string
	for _, td := range disks {
		var what []string
		if c := d.nbd.Connections(td.export); len(c) > 0 {
			what = append(what, count(len(c), "NBD connection")+" ("+strings.Join(c, ", ")+")")
		}
		if d.fuse != nil {
			if n := d.fuse.OpenFiles(td.export); n > 0 {
				what = append(what, count(n, "open file")+" under "+d.cfg.FUSE+" ("+strings.Join(d.fuse.HoldersOf(td.export), ", ")+")")
			}
		}
		if len(what) > 0 {
			held = append(held, td.export+" is in use: "+strings.Join(what, ", "))
		}
	}
	if len(held) == 0 { // released meanwhile: the caller may try again
		held = append(held, "a disk was in use a moment ago")
	}
	return conflict("%s; stop the guest or pass --force", strings.Join(held, "; "))
}

func count(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// stopTestLocked stops serving a test's disks, disconnecting the NBD
// clients still connected (their requests under way are answered first)
// and making its open files answer EIO, then discards the overlays.
func (d *Daemon) stopTestLocked(key string, t *test) {
	for _, td := range t.disks {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if n, _ := d.nbd.Detach(ctx, td.export, true); n > 0 {
			d.log.Warn("replica: test disk stopped under its NBD clients", "disk", td.export, "connections", n)
		}
		if d.fuse != nil {
			if n, _ := d.fuse.Detach(ctx, td.export, true); n > 0 {
				d.log.Warn("replica: test disk stopped while its file was open; it answers EIO", "disk", td.export, "opens", n)
			}
		}
		cancel()
		if err := td.ov.Discard(); err != nil {
			d.log.Warn("replica: discarding a test overlay", "err", err)
		}
		td.view.Close()
	}
	delete(d.tests, key)
	d.publishLocked()
}
