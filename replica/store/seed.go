package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/statefile"
	"github.com/vrep-io/vrep/internal/vfs"
)

// Seed import: a disk's first copy written from seed media rather than
// sent by its primary. The image is staged beside the disk's directory,
// in DATA/ROOT/VM/.DISK.seeding, and published disk by disk in three
// durable steps (PublishSeeds):
//
//  1. the staged directory, holding the image, a state file that says
//     "initial copy not complete" and the seed record (below), is renamed
//     to the disk's directory: to a primary that connects now the disk
//     simply has no copy yet;
//  2. the disk's state file is rewritten "complete, at LSN L" (the
//     atomic step that makes it seeded: the primary ships from L+1);
//  3. the seed's point is indexed at L.
//
// A crash before 2 leaves a disk without a copy, which a new import
// replaces; between 2 and 3, a seeded disk without the seed's point,
// never a point whose history is missing. The seed record tells a rerun
// of the same import which disks are done (ImportedFrom), so that it
// skips them and finishes step 3 where it is missing (FinishSeed).
//
// The seed record, DIR/seed, is a statefile (magic "VREPSDIM") whose
// body is the seed's id (16 bytes) and its LSN (uint64, little-endian).

// Part of the format; do not change.
const (
	seedRecMagic = "VREPSDIM"
	seedRecName  = "seed"
)

// ErrSeeded is returned when a seed would replace a disk that already
// has its initial copy.
var ErrSeeded = errors.New("replica: the disk already has its initial copy")

// SeedImport is a disk's image being written from a seed. One writer at a
// time; WriteAt may run in parallel on distinct ranges.
type SeedImport struct {
	fs   vfs.FS
	dir  string // the disk's directory
	tmp  string // the staging directory
	size int64
	img  vfs.File
	lsn  uint64
	mark []byte
	id   [16]byte
}

// BeginSeed starts the import of disk key ("ROOT/VM/DISK") under the data
// directory: an empty image of size bytes, staged. A disk that already
// has its initial copy is refused (ErrSeeded); one without is replaced
// at PublishSeeds.
func BeginSeed(data, key string, size int64) (*SeedImport, error) {
	fsys := vfs.OS{}
	dir := filepath.Join(data, key)
	if err := checkReplaceable(fsys, dir); err != nil {
		return nil, err
	}
	tmp := filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".seeding")
	if err := os.RemoveAll(tmp); err != nil {
		return nil, fmt.Errorf("replica: %w", err)
	}
	if err := fsys.MkdirAll(tmp); err != nil {
		return nil, fmt.Errorf("replica: %w", err)
	}
	img, err := fsys.Create(filepath.Join(tmp, "image"))
	if err != nil {
		return nil, fmt.Errorf("replica: %w", err)
	}
	if err := img.Truncate(size); err != nil {
		img.Close()
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("replica: %w", err)
	}
	return &SeedImport{fs: fsys, dir: dir, tmp: tmp, size: size, img: img}, nil
}

func checkReplaceable(fsys vfs.FS, dir string) error {
	st, err := readState(fsys, dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case st.seeded:
		return fmt.Errorf("%w: %s holds it at LSN %d; a seed is imported only into a disk without one (remove the disk's directory first to replace it)", ErrSeeded, dir, st.applied)
	}
	return nil
}

// WriteAt writes into the staged image.
func (s *SeedImport) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > s.size {
		return 0, fmt.Errorf("%w: seed chunk past the end of the disk", ErrInvalid)
	}
	return s.img.WriteAt(p, off)
}

// StartWriteback starts writing the staged image's dirty pages to its
// drive, without waiting (seed.Writebacker): Stage's fsync then finds
// little left to write.
func (s *SeedImport) StartWriteback(off, n int64) { vfs.StartWriteback(s.img, off, n) }

// SyscallConn is the staged image's, when it is a file of the OS (for
// lseek and sync_file_range).
func (s *SeedImport) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := s.img.(interface {
		SyscallConn() (syscall.RawConn, error)
	}); ok {
		return sc.SyscallConn()
	}
	return nil, errors.ErrUnsupported
}

// ReadAt reads the staged image.
func (s *SeedImport) ReadAt(p []byte, off int64) (int, error) { return s.img.ReadAt(p, off) }

// Stage makes the staged image durable and says what it holds: the disk
// at lsn from the seed id, and the point whose marker payload is mark
// (nil: none).
func (s *SeedImport) Stage(id [16]byte, lsn uint64, mark []byte) error {
	if err := s.img.Sync(); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	d := &Disk{fs: s.fs, dir: s.tmp, size: s.size}
	if err := d.writeState(); err != nil {
		return err
	}
	body := append(id[:], binary.LittleEndian.AppendUint64(nil, lsn)...)
	if err := statefile.Write(s.fs, filepath.Join(s.tmp, seedRecName), seedRecMagic, body); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	s.id, s.lsn, s.mark = id, lsn, mark
	return nil
}

// ImportedSeed is what a disk's directory says of the seed it was
// imported from.
type ImportedSeed struct {
	ID      [16]byte
	LSN     uint64 // the seed's
	Seeded  bool   // the initial copy is complete (step 2 above done)
	Applied uint64 // the LSN applied to the disk now
}

// ImportedFrom returns the seed the disk key ("ROOT/VM/DISK") was
// imported from; ok is false when its directory holds no seed record
// (none, or a copy sent over the network).
func ImportedFrom(data, key string) (_ ImportedSeed, ok bool, err error) {
	fsys := vfs.OS{}
	dir := filepath.Join(data, key)
	body, err := statefile.Read(fsys, filepath.Join(dir, seedRecName), seedRecMagic, 24)
	if errors.Is(err, fs.ErrNotExist) {
		return ImportedSeed{}, false, nil
	}
	if err != nil {
		return ImportedSeed{}, false, fmt.Errorf("replica: %w", err)
	}
	st, err := readState(fsys, dir)
	if err != nil {
		return ImportedSeed{}, false, err
	}
	var is ImportedSeed
	copy(is.ID[:], body)
	is.LSN = binary.LittleEndian.Uint64(body[16:])
	is.Seeded, is.Applied = st.seeded, st.applied
	return is, true, nil
}

// ErrSeedPointLost is returned by FinishSeed when the seed's point was
// never indexed and records have been applied since: it can no longer
// be registered (its undo entries were not kept).
var ErrSeedPointLost = errors.New("replica: the seed's point can no longer be registered")

// FinishSeed ends the publication of a disk a rerun found seeded from
// the same seed (step 3 above): it indexes the seed's point at lsn if
// it is missing. It reports whether it indexed it.
func FinishSeed(cat *Catalog, key string, lsn uint64, mark []byte) (bool, error) {
	if mark == nil {
		return false, nil
	}
	h, err := cat.History(key)
	if err != nil {
		return false, err
	}
	for _, p := range h.Points {
		if p.LSN == lsn {
			return false, nil
		}
	}
	if h.Applied != lsn {
		return false, fmt.Errorf("%w: disk %s has applied LSN %d since the seed's %d", ErrSeedPointLost, key, h.Applied, lsn)
	}
	rec := hrl.Record{Type: hrl.TypeMarker, LSN: lsn, Payload: mark}
	if err := cat.indexBatch(key, nil, []hrl.Record{rec}); err != nil {
		return false, err
	}
	return true, nil
}

// Abort drops the staged image.
func (s *SeedImport) Abort() {
	s.img.Close()
	os.RemoveAll(s.tmp)
}

// PublishSeeds publishes staged imports (see above), one disk after
// the other, and indexes their points in cat, under the disks' keys
// relative to data.
func PublishSeeds(cat *Catalog, data string, imps []*SeedImport) error {
	for _, s := range imps {
		if err := checkReplaceable(s.fs, s.dir); err != nil {
			return err
		}
	}
	for _, s := range imps {
		key, err := filepath.Rel(data, s.dir)
		if err != nil {
			return err
		}
		key = filepath.ToSlash(key)
		// Whatever the index still holds of a disk of that name (its
		// directory removed by hand) describes another image: views of
		// the seed's points must never take its history.
		if err := cat.DropHistory(key); err != nil {
			return err
		}
		if err := s.img.Close(); err != nil {
			return fmt.Errorf("replica: %w", err)
		}
		if err := os.RemoveAll(s.dir); err != nil {
			return fmt.Errorf("replica: %w", err)
		}
		if err := s.fs.Rename(s.tmp, s.dir); err != nil {
			return fmt.Errorf("replica: %w", err)
		}
		if err := s.fs.SyncDir(filepath.Dir(s.dir)); err != nil {
			return fmt.Errorf("replica: %w", err)
		}
		d := &Disk{fs: s.fs, dir: s.dir, size: s.size, applied: s.lsn, seeded: true}
		if err := d.writeState(); err != nil {
			return err
		}
		faultpoint.Hit(faultpoint.SeedPublished)
		if s.mark == nil {
			continue
		}
		rec := hrl.Record{Type: hrl.TypeMarker, LSN: s.lsn, Payload: s.mark}
		if err := cat.indexBatch(key, nil, []hrl.Record{rec}); err != nil {
			return err
		}
	}
	return nil
}
