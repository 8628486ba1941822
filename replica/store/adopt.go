package store

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/vfs"
	"github.com/vrep-io/vrep/replica/wire"
)

// Adopt makes an image this host already holds the replica copy of the
// disk key ("ROOT/VM/DISK") at lsn: the old primary's side of a planned
// failover, whose image is, byte for byte, the disk the new primary
// starts from. Nothing crosses the network. The image is hard-linked
// into the disk's directory (same file system), else copied; the copy is
// staged beside the directory and published by a rename, then marked
// complete at lsn (as PublishSeeds does): a crash leaves either no copy
// or a complete one. A disk that already has its initial copy is
// refused (ErrSeeded).
func Adopt(cat *Catalog, key, image string, size int64, lsn uint64) (linked bool, err error) {
	fsys := vfs.OS{}
	dir := filepath.Join(cat.cfg.Data, filepath.FromSlash(key))
	if err := checkReplaceable(fsys, dir); err != nil {
		return false, err
	}
	if err := cat.DropHistory(key); err != nil {
		return false, err
	}
	tmp := filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".adopting")
	if err := os.RemoveAll(tmp); err != nil {
		return false, fmt.Errorf("replica: %w", err)
	}
	if err := mkdirSynced(filepath.Dir(dir)); err != nil {
		return false, err
	}
	if err := fsys.MkdirAll(tmp); err != nil {
		return false, fmt.Errorf("replica: %w", err)
	}
	defer os.RemoveAll(tmp)
	dst := filepath.Join(tmp, "image")
	if err := os.Link(image, dst); err == nil {
		linked = true
	} else if errors.Is(err, syscall.EXDEV) || errors.Is(err, syscall.EPERM) {
		if err := copyFile(image, dst); err != nil {
			return false, err
		}
	} else {
		return false, fmt.Errorf("replica: adopting %s: %w", image, err)
	}
	if st, err := os.Stat(dst); err != nil || st.Size() != size {
		return false, fmt.Errorf("replica: adopting %s: the image is not of the disk's size %d", image, size)
	}
	// Staged as "initial copy not complete": published, then marked.
	if err := (&Disk{fs: fsys, dir: tmp, size: size}).writeState(); err != nil {
		return false, err
	}
	if err := os.RemoveAll(dir); err != nil {
		return false, fmt.Errorf("replica: %w", err)
	}
	if err := fsys.Rename(tmp, dir); err != nil {
		return false, fmt.Errorf("replica: %w", err)
	}
	if err := fsys.SyncDir(filepath.Dir(dir)); err != nil {
		return false, fmt.Errorf("replica: %w", err)
	}
	d := &Disk{fs: fsys, dir: dir, size: size, applied: lsn, seeded: true}
	return linked, d.writeState()
}

// copyFile copies src to dst and makes it durable.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("replica: copying %s: %w", src, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return fmt.Errorf("replica: %w", err)
	}
	return out.Close()
}

// ReleaseImage moves a disk's image out of the replica's store to home
// (the new primary's side of a planned failover): a rename, or when
// home is already the same file (a hard link made by Adopt), just the
// store's name goes. An existing other file at home is kept aside as
// home.replaced. Idempotent: a store image already gone with home in
// place is done.
func ReleaseImage(cat *Catalog, key, home string) error {
	img := cat.ImagePath(key)
	si, serr := os.Stat(img)
	hi, herr := os.Stat(home)
	switch {
	case serr != nil && herr == nil:
		return nil // moved before a restart
	case serr != nil:
		return fmt.Errorf("replica: the image of %s is gone: %w", key, serr)
	case herr == nil && os.SameFile(si, hi):
		if err := os.Remove(img); err != nil {
			return fmt.Errorf("replica: %w", err)
		}
		return vfs.OS{}.SyncDir(filepath.Dir(img))
	case herr == nil:
		aside := fmt.Sprintf("%s.replaced-%d", home, time.Now().UnixNano())
		if err := os.Rename(home, aside); err != nil {
			return fmt.Errorf("replica: keeping %s aside: %w", home, err)
		}
	}
	if err := mkdirSynced(filepath.Dir(home)); err != nil {
		return err
	}
	if err := os.Rename(img, home); errors.Is(err, syscall.EXDEV) {
		// Another file system: copied, published by a rename there.
		os.Remove(home + ".moving")
		if err := copyFile(img, home+".moving"); err != nil {
			return err
		}
		if err := os.Rename(home+".moving", home); err != nil {
			return fmt.Errorf("replica: %w", err)
		}
		if err := os.Remove(img); err != nil {
			return fmt.Errorf("replica: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("replica: moving the image of %s to %s: %w", key, home, err)
	}
	if err := (vfs.OS{}).SyncDir(filepath.Dir(home)); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	return vfs.OS{}.SyncDir(filepath.Dir(img))
}

// DropDisk deletes a disk released to a primary: its history and its
// directory.
func DropDisk(cat *Catalog, key string) error {
	if err := cat.DropHistory(key); err != nil {
		return err
	}
	dir := filepath.Join(cat.cfg.Data, filepath.FromSlash(key))
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	return vfs.OS{}.SyncDir(filepath.Dir(dir))
}

// SplitBrainGroup prefixes the group of a split-brain point: the old
// primary's writes after a failover point, kept as a point of the VM's
// replica on that host when reverse replication makes it the replica.
// Retention keeps such points; only the operator drops them.
const SplitBrainGroup = "split-brain-"

// MarkSplitBrain makes the adopted disk key (at LSN 0) hold its image as
// a point, the split-brain point, and puts the disk in a resync: the
// image is not the new primary's disk at any LSN until a resync has
// brought it there, and each chunk the resync rewrites keeps its old
// content as history, so the point reads back exactly what the old
// primary held. It returns the point's id.
func MarkSplitBrain(cat *Catalog, key, vm string, id uint64, when time.Time) error {
	st, err := readState(vfs.OS{}, filepath.Join(cat.cfg.Data, filepath.FromSlash(key)))
	if err != nil {
		return err
	}
	d, err := OpenDisk(vfs.OS{}, filepath.Join(cat.cfg.Data, filepath.FromSlash(key)), st.size)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.WithHistory(cat, key); err != nil {
		return err
	}
	if d.applied != 0 || d.Resyncing() {
		return nil // marked before a restart
	}
	m, err := hrl.Marker{ID: id, Time: when.UnixNano(), Kind: hrl.KindCrash, Group: SplitBrainGroup + vm}.Encode()
	if err != nil {
		return err
	}
	if err := cat.indexBatch(key, nil, []hrl.Record{{Type: hrl.TypeMarker, LSN: 0, Payload: m}}); err != nil {
		return err
	}
	_, _, err = d.ResyncBegin(0, wire.ChunkSize, wire.Chunks(d.size, wire.ChunkSize))
	return err
}

// OpenDiskExisting opens a disk that has its initial copy: never creates
// one.
func OpenDiskExisting(fsys vfs.FS, dir string, size int64) (*Disk, error) {
	st, err := readState(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("replica: %s holds no disk: %w", dir, err)
	}
	if !st.seeded {
		return nil, fmt.Errorf("%w: %s", ErrNotSeeded, dir)
	}
	return OpenDisk(fsys, dir, size)
}

// mkdirSynced makes dir and its missing parents, each made durable in its
// parent: a power cut after a rename into it must not lose the entry.
func mkdirSynced(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirSynced(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("replica: %w", err)
	}
	if err := (vfs.OS{}).SyncDir(parent); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	return nil
}
