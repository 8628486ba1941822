package replicad

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/replica/receive"
	"github.com/vrep-io/vrep/replica/store"
	"github.com/vrep-io/vrep/replica/wire"
)

// A planned failover moves a VM between the roles of two hosts (vrep
// host runs both roles in one daemon). On the host that held the
// replica, ReleaseVM checks that the replica holds every record the
// primary wrote and stops the VM's streams; the host then moves each
// image out of the store (store.ReleaseImage), drops what the store
// kept of the VM (DropVM) and serves it as a primary. On the host that
// was the primary, AdoptVM makes its images the replica copy at the
// new primary's first LSN: nothing is copied over the network.

// Handler is the API, for a host daemon that serves it (Config.NoAPI).
func (d *Daemon) Handler() http.Handler { return daemon.CheckQuery(routes, d.handler()) }

// Fence refuses every stream of vm under root with wire.CodeSuperseded:
// the VM runs on this host as a primary.
func (d *Daemon) Fence(root, vm, why string) { d.srv.Fence(root, vm, why) }

// Released is a disk ReleaseVM let go of: its image in the store.
type Released struct {
	Key   string // ROOT/VM/DISK
	Disk  string // VM/DISK
	Image string
	Size  int64
}

// ReleaseVM checks that the replica holds vm's disks (under root) through
// the LSNs a primary handing it over gives, and fences its streams. On
// error nothing changed; the error is a *receive.PromoteError telling the
// primary what to do.
func (d *Daemon) ReleaseVM(root, vm string, want []wire.HandoverDisk) ([]Released, error) {
	refuse := func(code uint16, format string, args ...any) error {
		return &receive.PromoteError{Code: code, Err: fmt.Errorf(format, args...)}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	key := root + "/" + vm
	if _, ok := d.tests[key]; ok {
		return nil, refuse(wire.CodeRetry, "a test failover of VM %s runs on the replica; stop it there first (vrep failover test-stop %s)", vm, vm)
	}
	if f := d.fos[key]; f != nil {
		return nil, refuse(wire.CodeSuperseded, "VM %s is failed over on the replica already (%s, generation %d)", vm, f.st.State, f.st.Generation)
	}
	all, err := d.Catalog.Disks()
	if err != nil {
		return nil, refuse(wire.CodeRetry, "replica: %v", err)
	}
	var have []string
	for _, k := range all {
		if strings.HasPrefix(k, key+"/") {
			have = append(have, diskName(k))
		}
	}
	var asked []string
	for _, w := range want {
		asked = append(asked, w.Disk)
	}
	slices.Sort(have)
	slices.Sort(asked)
	if !slices.Equal(have, asked) {
		return nil, refuse(wire.CodeBadRequest, "the replica holds disks [%s] of VM %s, the primary hands over [%s]",
			strings.Join(have, " "), vm, strings.Join(asked, " "))
	}
	d.srv.Fence(root, vm, fmt.Sprintf("VM %s is being taken over by this host (planned failover)", vm))
	var out []Released
	for _, w := range want {
		_, dname, _ := names.Disk(w.Disk)
		k := key + "/" + dname
		h, err := d.Catalog.History(k)
		if err != nil {
			d.srv.Unfence(root, vm)
			return nil, refuse(wire.CodeRetry, "replica: %v", err)
		}
		switch {
		case !h.Seeded:
			d.srv.Unfence(root, vm)
			return nil, refuse(wire.CodeResync, "the replica does not hold disk %s yet (initial copy not complete)", w.Disk)
		case h.Applied < w.LSN:
			d.srv.Unfence(root, vm)
			return nil, refuse(wire.CodeResync, "the replica holds disk %s through LSN %d, the primary's log ends at %d: records are missing", w.Disk, h.Applied, w.LSN)
		case h.Size != w.Size:
			d.srv.Unfence(root, vm)
			return nil, refuse(wire.CodeBadRequest, "disk %s is %d bytes on the replica, %d on the primary", w.Disk, h.Size, w.Size)
		}
		out = append(out, Released{Key: k, Disk: w.Disk, Image: d.Catalog.ImagePath(k), Size: w.Size})
	}
	return out, nil
}

// DropVM deletes what the store kept of vm under root once its images
// are moved out: points, history, directories. Idempotent.
func (d *Daemon) DropVM(root, vm string, disks []string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, disk := range disks {
		_, dname, _ := names.Disk(disk)
		if err := store.DropDisk(d.Catalog, root+"/"+vm+"/"+dname); err != nil {
			return err
		}
	}
	dir := filepath.Join(d.cfg.Data, root, vm)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	return nil
}

// Adopted is a disk AdoptVM made the replica copy.
type Adopted struct {
	Disk   string `json:"disk"`
	Image  string `json:"image"`
	LSN    uint64 `json:"lsn"`
	Linked bool   `json:"linked"` // hard-linked; false: copied on this host
}

// AdoptVM makes images the replica copies of vm's disks under root, each
// at the LSN its new primary's log starts after, and accepts the VM's
// streams. images maps VM/DISK to its image and size.
//
// With splitBrain (reverse replication after an unplanned failover: the
// images hold writes the new primary never had), each image is kept as
// a split-brain point and resynced to the new primary's disk.
func (d *Daemon) AdoptVM(root, vm string, disks []wire.HandoverDisk, images map[string]string, splitBrain bool) ([]Adopted, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []Adopted
	for _, hd := range disks {
		_, dname, _ := names.Disk(hd.Disk)
		img := images[hd.Disk]
		st, err := os.Stat(img)
		if err != nil {
			return out, fmt.Errorf("replica: adopting %s: %w", hd.Disk, err)
		}
		linked, err := store.Adopt(d.Catalog, root+"/"+vm+"/"+dname, img, st.Size(), hd.LSN)
		if errors.Is(err, store.ErrSeeded) {
			// Adopted before a restart: the disk's streams were refused
			// since, so it is still the copy at hd.LSN.
			d.log.Info("replica: the image was already adopted", "disk", root+"/"+hd.Disk)
			err = nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, Adopted{Disk: hd.Disk, Image: img, LSN: hd.LSN, Linked: linked})
	}
	if splitBrain {
		if err := d.markSplitBrain(root, vm, disks); err != nil {
			return out, err
		}
	}
	d.srv.Unfence(root, vm)
	d.log.Info("replica: the VM's images are its replica copy now (planned failover); its new primary replicates to it", "vm", root+"/"+vm)
	return out, nil
}

// FenceRetry refuses vm's streams under root with wire.CodeRetry for a
// while: this host is making its image the replica copy.
func (d *Daemon) FenceRetry(root, vm, why string) { d.srv.FenceRetry(root, vm, why) }

// Unfence accepts vm's streams under root again (a handover refused).
func (d *Daemon) Unfence(root, vm string) { d.srv.Unfence(root, vm) }

// Stream is what the replica knows of the stream of the disk
// ROOT/VM/DISK.
func (d *Daemon) Stream(key string) receive.StreamInfo { return d.srv.Stream(key) }

// Committed describes a committed failover of vm under root: its
// generation, point and disks (with their sizes); ok false when there is
// none, with why in a sentence.
func (d *Daemon) Committed(root, vm string) (gen, point uint64, disks []wire.HandoverDisk, why string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f := d.fos[root+"/"+vm]
	switch {
	case f == nil:
		return 0, 0, nil, fmt.Sprintf("VM %s has not failed over to this host (vrep failover start %s first)", vm, vm)
	case f.err != "":
		return 0, 0, nil, fmt.Sprintf("the failover state of VM %s could not be read (%s)", vm, f.err)
	case f.st.State != stCommitted:
		return 0, 0, nil, fmt.Sprintf("the failover of VM %s is %s: commit it first (vrep failover commit %s); reverse replication keeps what the VM runs", vm, strings.ToLower(f.st.State), vm)
	}
	for _, fd := range f.disks {
		disks = append(disks, wire.HandoverDisk{Disk: fd.export, Size: fd.vol.Size(), LSN: f.st.Point.LSNs[fd.export]})
	}
	return f.st.Generation, f.st.Point.ID, disks, ""
}

// ReleaseCommitted stops serving a committed failover of vm under root
// (its NBD clients are disconnected; each volume merges its log into the
// image as it closes) and forgets it: the image stays in the store, for
// the host daemon to serve as a primary (store.ReleaseImage). Idempotent.
//
// It returns, for each disk (VM/DISK), the ranges that diverged from the
// failover point on this side: what the commit rolled back (the old
// primary's writes after the point that had reached here) and what was
// written here since the failover; nil for a disk whose logs cannot tell
// (a log overflowed, a record missing): a checksum compare finds those.
func (d *Daemon) ReleaseCommitted(root, vm string) (map[string]store.Extents, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	key := root + "/" + vm
	f := d.fos[key]
	if f == nil {
		return nil, nil
	}
	if f.st.State != stCommitted {
		return nil, fmt.Errorf("replica: the failover of VM %s is %s, not committed", vm, f.st.State)
	}
	diverged := map[string]store.Extents{}
	for _, fd := range f.disks {
		ext, err := store.ReadExtents(filepath.Join(fd.dir, rolledBackFile))
		if err != nil {
			d.log.Warn("replica: what the commit rolled back is not known; a checksum compare finds what diverged", "disk", fd.export, "err", err)
			diverged[fd.export] = nil
			continue
		}
		first, known, err := fd.vol.ChangedSince(0, ext.Add)
		if err != nil || !known || first > 1 {
			d.log.Warn("replica: the failover's log cannot tell what was written since; a checksum compare finds what diverged", "disk", fd.export, "err", err, "overflowed", !known)
			diverged[fd.export] = nil
			continue
		}
		diverged[fd.export] = ext.Normalize(1, fd.vol.Size())
	}
	d.stopServing(f)
	for _, fd := range f.disks {
		if err := os.RemoveAll(fd.dir); err != nil {
			return nil, fmt.Errorf("replica: %w", err)
		}
	}
	if err := os.Remove(foStatePath(d.cfg.Data, root, vm)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("replica: %w", err)
	}
	delete(d.fos, key)
	d.publishLocked()
	d.log.Info("replica: the committed failover's disks are handed to this host's primary role (reverse replication)", "vm", key)
	return diverged, nil
}

// rolledBackFile, in a disk's failover directory, holds the ranges a
// commit rolled back (store.WriteExtents).
const rolledBackFile = "rolledback"

// MarkSplitBrain keeps each adopted disk of vm under root as the
// split-brain point (store.MarkSplitBrain), before its streams are
// accepted.
func (d *Daemon) markSplitBrain(root, vm string, disks []wire.HandoverDisk) error {
	id := uint64(time.Now().UnixNano())
	for _, hd := range disks {
		_, dname, _ := names.Disk(hd.Disk)
		if err := store.MarkSplitBrain(d.Catalog, root+"/"+vm+"/"+dname, vm, id, time.Now()); err != nil {
			return err
		}
	}
	return nil
}

// DropSplitBrain deletes the split-brain points of a VM's disks (the
// operator has looked at them): retention prunes what only they kept.
func (d *Daemon) DropSplitBrain(spec string) (int, error) {
	_, _, keys, err := d.vmDisks(spec)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, k := range keys {
		m, err := d.Catalog.DropSplitBrain(k)
		if err != nil {
			return n, err
		}
		n += m
	}
	if n == 0 {
		return 0, notFound("VM %s has no split-brain point here", spec)
	}
	d.log.Warn("replica: split-brain points dropped by the operator", "vm", spec, "points", n)
	return n, nil
}
