package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"path/filepath"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/statefile"
	"github.com/vrep-io/vrep/internal/vfs"
	"github.com/vrep-io/vrep/replica/wire"
)

// Disk is one replicated disk on the replica: its image and the LSN
// applied to it. Records are applied in LSN order; a record at or below
// the applied LSN is skipped, so a resumed stream never applies twice.
// Apply returns only once what it applied is durable (image fsynced, then
// the state published), and the LSN it returns is what the replica may
// acknowledge. Not safe for concurrent use: one stream per disk.
//
// On disk, in the disk's directory:
//
//	image   the replica image, a raw file of the disk's size
//	state   magic "VREPRSTA", version uint16, flags uint16 (bit 0: the
//	        initial copy is complete), 4 zero bytes, size uint64, applied
//	        LSN uint64, CRC32C of the 32 bytes before it; little-endian;
//	        published atomically
type Disk struct {
	fs      vfs.FS
	dir     string
	img     vfs.File
	size    int64
	applied uint64
	seeded  bool // the initial copy is complete
	zero    []byte

	// History (nil cat: none): see Catalog.
	cat  *Catalog
	key  string
	sh   *shared
	undo undoWriter

	rs *resyncState // a resync under way (resync.go); nil: none
}

// Part of the format; do not change.
const (
	stateMagic = "VREPRSTA"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var (
	// ErrInvalid is returned for input that cannot be applied as it is:
	// a chunk or record past the end of the disk, an impossible range.
	// The sender is at fault; the replica changed nothing.
	ErrInvalid = errors.New("replica: invalid input")
	// ErrNotSeeded is returned for records before the initial copy is done.
	ErrNotSeeded = errors.New("replica: initial copy not complete")
)

// OpenDisk opens (creating on first use) the replicated disk in dir.
// A disk that exists with another size is refused.
func OpenDisk(fsys vfs.FS, dir string, size int64) (*Disk, error) {
	if size <= 0 {
		return nil, fmt.Errorf("replica: disk size %d", size)
	}
	if err := fsys.MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("replica: %w", err)
	}
	d := &Disk{fs: fsys, dir: dir, size: size}
	st, err := readState(fsys, dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		img, err := fsys.Create(filepath.Join(dir, "image"))
		if err != nil {
			return nil, fmt.Errorf("replica: %w", err)
		}
		if err := img.Truncate(size); err != nil {
			img.Close()
			return nil, fmt.Errorf("replica: %w", err)
		}
		d.img = img
		if err := img.Sync(); err != nil {
			img.Close()
			return nil, fmt.Errorf("replica: %w", err)
		}
		if err := d.writeState(); err != nil {
			img.Close()
			return nil, err
		}
		return d, nil
	case err != nil:
		return nil, err
	}
	if st.size != size {
		return nil, fmt.Errorf("replica: %s holds a disk of %d bytes, not %d", dir, st.size, size)
	}
	d.seeded, d.applied = st.seeded, st.applied
	if err := d.loadResync(); err != nil {
		return nil, err
	}
	img, err := fsys.Open(filepath.Join(dir, "image"))
	if err != nil {
		return nil, fmt.Errorf("replica: %w", err)
	}
	d.img = img
	return d, nil
}

// diskState is a disk's state file.
type diskState struct {
	size    int64
	applied uint64
	seeded  bool
}

// readState reads the state file of the disk in dir; a missing file is
// fs.ErrNotExist.
func readState(fsys vfs.FS, dir string) (diskState, error) {
	body, err := statefile.Read(fsys, filepath.Join(dir, "state"), stateMagic, 22)
	if errors.Is(err, fs.ErrNotExist) {
		return diskState{}, err
	}
	if errors.Is(err, statefile.ErrBad) {
		return diskState{}, fmt.Errorf("replica: %s: bad state file", dir)
	}
	if err != nil {
		return diskState{}, fmt.Errorf("replica: %w", err)
	}
	return diskState{
		seeded:  binary.LittleEndian.Uint16(body)&1 != 0,
		size:    int64(binary.LittleEndian.Uint64(body[6:])),
		applied: binary.LittleEndian.Uint64(body[14:]),
	}, nil
}

func (d *Disk) writeState() error {
	body := make([]byte, 22)
	if d.seeded {
		binary.LittleEndian.PutUint16(body, 1)
	}
	binary.LittleEndian.PutUint64(body[6:], uint64(d.size))
	binary.LittleEndian.PutUint64(body[14:], d.applied)
	if err := statefile.Write(d.fs, filepath.Join(d.dir, "state"), stateMagic, body); err != nil {
		return fmt.Errorf("replica: publishing applied LSN: %w", err)
	}
	return nil
}

// Applied returns the LSN durable in the image, and whether the initial
// copy is complete.
func (d *Disk) Applied() (uint64, bool) { return d.applied, d.seeded }

// Size returns the disk size.
func (d *Disk) Size() int64 { return d.size }

// ReadAt reads the replica image.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("replica: read past the end of the disk")
	}
	n, err := d.img.ReadAt(p, off)
	if errors.Is(err, io.EOF) && n == len(p) {
		err = nil
	}
	return n, err
}

// WriteBase writes a chunk of the initial copy. Chunks may come in any
// order; nothing is durable until FinishBase.
func (d *Disk) WriteBase(off int64, data []byte) error {
	if d.seeded {
		return fmt.Errorf("%w: base chunk after the initial copy completed", ErrInvalid)
	}
	if off < 0 || off+int64(len(data)) > d.size {
		return fmt.Errorf("%w: base chunk past the end of the disk", ErrInvalid)
	}
	_, err := d.img.WriteAt(data, off)
	return err
}

// ResetBase empties the image before an initial copy starts (again): the
// primary skips zero chunks, which is right only over zeros.
func (d *Disk) ResetBase() error {
	if d.seeded {
		return errors.New("replica: the initial copy is already complete")
	}
	if err := d.img.Truncate(0); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	if err := d.img.Truncate(d.size); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	return nil
}

// FinishBase makes the initial copy durable: the image now holds the disk
// as of LSN lsn (the primary's checkpoint), from which records follow.
func (d *Disk) FinishBase(lsn uint64) error {
	if err := d.img.Sync(); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	d.applied, d.seeded = lsn, true
	return d.writeState()
}

// Apply applies a batch of records in LSN order, skipping those already
// applied, makes them durable and returns the applied LSN to acknowledge.
// With history on (WithHistory), the batch's undo entries and points are
// durable in the catalog before any record touches the image.
func (d *Disk) Apply(recs []hrl.Record) (uint64, error) {
	return d.apply(recs, 0, 0)
}

// ApplyRange applies records standing for the LSN range from..through,
// some of whose records were coalesced away (each fully overwritten by a
// later one, never across a point): the applied LSN becomes through.
func (d *Disk) ApplyRange(recs []hrl.Record, from, through uint64) (uint64, error) {
	if from == 0 || through < from {
		return d.applied, fmt.Errorf("%w: records range %d..%d", ErrInvalid, from, through)
	}
	return d.apply(recs, from, through)
}

// apply applies recs; from 0 means consecutive LSNs, else the records
// stand for from..through.
func (d *Disk) apply(recs []hrl.Record, from, through uint64) (uint64, error) {
	if !d.seeded {
		return d.applied, ErrNotSeeded
	}
	if d.rs != nil {
		return d.applied, ErrResyncing
	}
	if from != 0 {
		if through <= d.applied {
			return d.applied, nil // applied before: a resumed stream
		}
		if from > d.applied+1 {
			return d.applied, fmt.Errorf("%w: records from %d after %d", wire.ErrBrokenChain, from, d.applied)
		}
	}
	next := d.applied
	first := -1
	for i, r := range recs {
		if r.LSN <= next && (from == 0 || r.LSN <= d.applied) {
			continue // applied before: a resumed stream
		}
		if from == 0 && r.LSN != next+1 || from != 0 && (r.LSN <= next || r.LSN > through) {
			return d.applied, fmt.Errorf("%w: record %d after %d", wire.ErrBrokenChain, r.LSN, next)
		}
		if r.Type != hrl.TypeMarker {
			off, n := int64(r.Offset), int64(r.Span)
			if off < 0 || off+n > d.size || off+n < off {
				return d.applied, fmt.Errorf("%w: record %d reaches past the end of the disk", ErrInvalid, r.LSN)
			}
		}
		if first < 0 {
			first = i
		}
		next = r.LSN
	}
	if from != 0 {
		next = through
	}
	if first < 0 && next == d.applied {
		return d.applied, nil
	}
	var pending []hrl.Record
	if first >= 0 {
		pending = recs[first:]
	}
	if d.cat != nil && len(pending) > 0 {
		refs, err := d.saveHistory(pending)
		if err != nil {
			return d.applied, err
		}
		faultpoint.Hit(faultpoint.ApplyBeforeImage)
		d.sh.mu.Lock()
		for v := range d.sh.views {
			v.note(refs)
		}
		err = d.applyAll(pending)
		d.sh.mu.Unlock()
		if err != nil {
			return d.applied, err
		}
	} else if err := d.applyAll(pending); err != nil {
		return d.applied, err
	}
	// Durable before acknowledged: the image first, then the LSN.
	if err := d.img.Sync(); err != nil {
		return d.applied, fmt.Errorf("replica: %w", err)
	}
	faultpoint.Hit(faultpoint.ApplyBeforeState)
	prev := d.applied
	d.applied = next
	if err := d.writeState(); err != nil {
		d.applied = prev
		return prev, err
	}
	return d.applied, nil
}

func (d *Disk) applyAll(recs []hrl.Record) error {
	for _, r := range recs {
		if err := d.applyRecord(r); err != nil {
			return err
		}
	}
	return nil
}

func (d *Disk) applyRecord(r hrl.Record) error {
	off, n := int64(r.Offset), int64(r.Span)
	switch r.Type {
	case hrl.TypeWrite:
		_, err := d.img.WriteAt(r.Payload, off)
		return err
	case hrl.TypeTrim, hrl.TypeZero:
		if d.zero == nil {
			d.zero = make([]byte, 1<<20)
		}
		for n > 0 {
			c := min(n, int64(len(d.zero)))
			if _, err := d.img.WriteAt(d.zero[:c], off); err != nil {
				return err
			}
			off += c
			n -= c
		}
	}
	return nil
}

// Close closes the image and the undo segment.
func (d *Disk) Close() error {
	if d.undo.f != nil {
		d.undo.f.Close()
	}
	return d.img.Close()
}
