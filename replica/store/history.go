package store

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"path/filepath"
	"slices"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/vfs"
)

// undoSegmentMax is the size past which a new undo segment is started,
// so retention can remove history a file at a time.
const undoSegmentMax = 64 << 20

const undoHeaderSize = 32

// undoWriter appends undo entries to a disk's open undo segment.
type undoWriter struct {
	f     vfs.File
	first uint64
	off   int64
}

// WithHistory turns history on: before each batch changes the image, the
// old content of what it overwrites is saved as undo entries and its
// points are indexed, in cat under key ("ROOT/VM/DISK").
func (d *Disk) WithHistory(cat *Catalog, key string) error {
	last, err := cat.lastUndo(key)
	if err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	d.cat, d.key, d.sh = cat, key, cat.shared(key)
	d.sh.mu.Lock()
	d.sh.maxUndo = last
	d.sh.mu.Unlock()
	return nil
}

// undoRange is the range an undo entry of r saves: r's, widened to whole
// undo blocks, clipped to the disk.
func (d *Disk) undoRange(r hrl.Record) (int64, int64) {
	a := int64(r.Offset) &^ (UndoBlock - 1)
	b := min((int64(r.Offset)+int64(r.Span)+UndoBlock-1)&^(UndoBlock-1), d.size)
	return a, b
}

// saveHistory makes the undo entries and points of pending (records
// after the applied LSN, in order) durable, and returns each record's
// undo entry (nil for markers). An entry already indexed — a batch
// replayed after a crash — is kept, never captured again: its bytes were
// saved before the image changed.
func (d *Disk) saveHistory(pending []hrl.Record) ([]*undoRef, error) {
	refs := make([]*undoRef, len(pending))
	var existing map[uint64]*undoRef
	if d.sh.maxUndo >= pending[0].LSN {
		var lsns []uint64
		for _, r := range pending {
			if r.LSN <= d.sh.maxUndo && r.Type != hrl.TypeMarker {
				lsns = append(lsns, r.LSN)
			}
		}
		var err error
		if existing, err = d.cat.existingUndo(d.key, lsns); err != nil {
			return nil, err
		}
	}
	var (
		markers []hrl.Record
		fresh   []*undoRef
		seg     []byte // what to append to the undo segment
		segBase int64
	)
	if !d.cat.cfg.Inline {
		// One buffer for the batch's entries, sized before the first.
		need := 0
		for _, r := range pending {
			if r.Type != hrl.TypeMarker && existing[r.LSN] == nil {
				if need == 0 {
					if err := d.rollUndo(r.LSN); err != nil {
						return nil, err
					}
					segBase = d.undo.off
				}
				a, b := d.undoRange(r)
				need += undoHeaderSize + int(b-a)
			}
		}
		seg = make([]byte, 0, need)
	}
	earlier := newOverlaps(pending)
	for j, r := range pending {
		if r.Type == hrl.TypeMarker {
			markers = append(markers, r)
			continue
		}
		if e := existing[r.LSN]; e != nil {
			refs[j] = e
			continue
		}
		a, b := d.undoRange(r)
		var old []byte
		if d.cat.cfg.Inline {
			old = make([]byte, b-a)
		} else {
			// Header, then the old bytes read straight into place.
			seg = seg[:len(seg)+undoHeaderSize+int(b-a)]
			old = seg[len(seg)-int(b-a):]
		}
		if n, err := d.img.ReadAt(old, a); n != len(old) && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("replica: reading the image for history: %w", err)
		}
		// Records of this batch before r changed the image only in memory
		// so far: lay those over what was read, in order.
		for _, q := range earlier.before(j, a, b) {
			overlay(old, a, pending[q])
		}
		ref := &undoRef{lsn: r.LSN, off: a, length: b - a, crc: crc32.Checksum(old, castagnoli)}
		if d.cat.cfg.Inline {
			ref.inline = old
		} else {
			h := seg[len(seg)-len(old)-undoHeaderSize:]
			copy(h, "VUND")
			binary.LittleEndian.PutUint32(h[4:], ref.crc)
			binary.LittleEndian.PutUint64(h[8:], r.LSN)
			binary.LittleEndian.PutUint64(h[16:], uint64(a))
			binary.LittleEndian.PutUint32(h[24:], uint32(b-a))
			binary.LittleEndian.PutUint32(h[28:], crc32.Checksum(h[:28], castagnoli))
			ref.seg, ref.segOff = d.undo.first, segBase+int64(len(seg)-len(old))
		}
		refs[j] = ref
		fresh = append(fresh, ref)
	}
	// The segment is durable before the index points into it, and both
	// before the batch touches the image.
	if len(seg) > 0 {
		if _, err := d.undo.f.WriteAt(seg, segBase); err != nil {
			return nil, fmt.Errorf("replica: writing history: %w", err)
		}
		if err := d.undo.f.Sync(); err != nil {
			return nil, fmt.Errorf("replica: writing history: %w", err)
		}
		d.undo.off = segBase + int64(len(seg))
	}
	faultpoint.Hit(faultpoint.ApplyBeforeIndex)
	if len(fresh)+len(markers) > 0 {
		if err := d.cat.indexBatch(d.key, fresh, markers); err != nil {
			return nil, err
		}
	}
	if n := len(fresh); n > 0 {
		d.sh.mu.Lock()
		d.sh.maxUndo = max(d.sh.maxUndo, fresh[n-1].lsn)
		d.sh.mu.Unlock()
	}
	return refs, nil
}

// overlaps finds, among a batch's records, the earlier ones that overlap
// a range without comparing every pair: a batch of random writes has
// thousands of records and almost no overlaps. Records up to longSpan
// are sorted by offset, so a lookup walks only those that start within
// longSpan below the range; longer ones (a trim of a whole file system,
// a large write) are few and checked one by one.
type overlaps struct {
	recs   []hrl.Record
	starts []int   // the batch's short write, trim and zero records, by offset
	maxEnd []int64 // maxEnd[i]: the furthest end among starts[:i+1]
	long   []int   // the longer ones, in batch order
	out    []int
}

const longSpan = 1 << 20

func newOverlaps(recs []hrl.Record) *overlaps {
	o := &overlaps{recs: recs}
	for i, r := range recs {
		switch {
		case r.Type == hrl.TypeMarker:
		case r.Span > longSpan:
			o.long = append(o.long, i)
		default:
			o.starts = append(o.starts, i)
		}
	}
	slices.SortFunc(o.starts, func(x, y int) int { return cmp.Compare(recs[x].Offset, recs[y].Offset) })
	o.maxEnd = make([]int64, len(o.starts))
	var m int64
	for i, k := range o.starts {
		m = max(m, int64(recs[k].Offset)+int64(recs[k].Span))
		o.maxEnd[i] = m
	}
	return o
}

// before lists, in batch order, the records before j that overlap
// [a, b). The slice is reused by the next call.
func (o *overlaps) before(j int, a, b int64) []int {
	o.out = o.out[:0]
	overlap := func(k int) bool { r := o.recs[k]; return int64(r.Offset) < b && int64(r.Offset)+int64(r.Span) > a }
	// The short ones starting before b, walked down while one of them
	// (or one further down) still reaches past a.
	i, _ := slices.BinarySearchFunc(o.starts, b, func(k int, b int64) int { return cmp.Compare(int64(o.recs[k].Offset), b) })
	for i--; i >= 0 && o.maxEnd[i] > a; i-- {
		if k := o.starts[i]; k < j && overlap(k) {
			o.out = append(o.out, k)
		}
	}
	for _, k := range o.long {
		if k >= j {
			break
		}
		if overlap(k) {
			o.out = append(o.out, k)
		}
	}
	slices.Sort(o.out)
	return o.out
}

// overlay lays record q over buf, which holds the disk from offset at.
func overlay(buf []byte, at int64, q hrl.Record) {
	if q.Type == hrl.TypeMarker {
		return
	}
	lo, hi := max(int64(q.Offset), at), min(int64(q.Offset)+int64(q.Span), at+int64(len(buf)))
	if lo >= hi {
		return
	}
	dst := buf[lo-at : hi-at]
	if q.Type == hrl.TypeWrite {
		copy(dst, q.Payload[lo-int64(q.Offset):])
	} else {
		clear(dst)
	}
}

// rollUndo makes sure an undo segment is open with room, starting a new
// one (named after lsn, its first entry) when none is or it is full. New
// segments are allocated in full up front where the file system can
// (fsyncs of a file that does not grow are cheaper: 720 against 450 MB/s
// of 8 MiB appends here), so a segment's end is found by walking its
// entries.
// An existing file of that name — left by a crash — is appended to after
// its last intact entry, never truncated.
func (d *Disk) rollUndo(lsn uint64) error {
	if d.undo.f != nil && d.undo.off < undoSegmentMax {
		return nil
	}
	if d.undo.f != nil {
		d.undo.f.Close()
		d.undo.f = nil
	}
	dir := filepath.Join(d.dir, "undo")
	if err := d.fs.MkdirAll(dir); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	name := segName(dir, lsn)
	f, err := d.fs.Open(name)
	if err != nil {
		if f, err = d.fs.Create(name); err != nil {
			return fmt.Errorf("replica: %w", err)
		}
		if a, ok := f.(interface{ Allocate(int64) error }); ok {
			// Where the file system cannot allocate, the segment grows.
			if a.Allocate(undoSegmentMax+(8<<20)) == nil {
				err = f.Sync()
			}
		}
		if err == nil {
			err = d.fs.SyncDir(dir)
		}
		if err != nil {
			f.Close()
			return fmt.Errorf("replica: %w", err)
		}
		d.undo = undoWriter{f: f, first: lsn}
		return nil
	}
	end, err := segmentEnd(f)
	if err != nil {
		f.Close()
		return err
	}
	d.undo = undoWriter{f: f, first: lsn, off: end}
	return nil
}

// segmentEnd walks a segment's entries and returns where the last intact
// one ends: a crash leaves at most a torn tail after it, which nothing in
// the index points at.
func segmentEnd(f vfs.File) (int64, error) {
	size, err := f.Size()
	if err != nil {
		return 0, fmt.Errorf("replica: %w", err)
	}
	var h [undoHeaderSize]byte
	off := int64(0)
	for off+undoHeaderSize <= size {
		if n, _ := f.ReadAt(h[:], off); n != undoHeaderSize {
			break
		}
		if string(h[:4]) != "VUND" || crc32.Checksum(h[:28], castagnoli) != binary.LittleEndian.Uint32(h[28:]) {
			break
		}
		off += undoHeaderSize + int64(binary.LittleEndian.Uint32(h[24:]))
	}
	return min(off, size), nil
}
