package primary

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/internal/vfs"
)

// supersededFile, in a disk's state directory, holds why the disk no
// longer takes writes: its VM failed over to the replica, which said so
// when this primary's stream was refused (wire.CodeSuperseded). It is
// read at start, so a restarted primary is fenced before it serves a
// single write; only reverse replication (not yet built) lifts it.
const supersededFile = "superseded"

func (d *Daemon) diskDir(name string) string {
	vm, disk, _ := names.Disk(name)
	return filepath.Join(d.cfg.State, "disks", vm, disk)
}

// supersede fences every disk of vm: the replica says the VM failed over
// there (msg, from the replica, names the VM, when and the generation).
// The reason is persisted first, then the volumes refuse writes.
func (d *Daemon) supersede(vm, msg string) {
	// Each disk's shipper may learn it at the same moment: one at a time,
	// or two writers of the same state file race.
	d.supersedeMu.Lock()
	defer d.supersedeMu.Unlock()
	reason := "superseded: " + msg + "; this copy no longer takes writes"
	for _, disk := range d.Disks {
		if v, _, _ := names.Disk(disk.Name); v != vm || disk.Volume.Fenced() != nil {
			continue
		}
		if err := vfs.WriteFileAtomic(vfs.OS{}, filepath.Join(d.diskDir(disk.Name), supersededFile), []byte(reason)); err != nil {
			d.log.Error("could not persist that the disk is superseded; it is fenced until this daemon stops", "disk", disk.Name, "err", err)
		}
		disk.Volume.Fence(errors.New(reason))
		disk.superseded.Store(&reason)
		d.log.Error("disk fenced: its VM failed over to the replica; writes are refused from now on", "disk", disk.Name, "reason", reason)
	}
}

// fenceIfSuperseded fences a disk whose VM failed over before this daemon
// started.
func (d *Daemon) fenceIfSuperseded(disk *Disk) error {
	b, err := os.ReadFile(filepath.Join(d.diskDir(disk.Name), supersededFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	reason := string(b)
	disk.Volume.Fence(errors.New(reason))
	disk.superseded.Store(&reason)
	d.log.Warn("disk fenced: its VM failed over to the replica; it is served read-only", "disk", disk.Name, "reason", reason)
	return nil
}

// Superseded returns why the disks of vm no longer take writes because
// the VM failed over elsewhere, or "".
func (d *Daemon) Superseded(vm string) string {
	for _, disk := range d.Disks {
		if v, _, _ := names.Disk(disk.Name); v == vm {
			if r := disk.superseded.Load(); r != nil {
				return *r
			}
		}
	}
	return ""
}
