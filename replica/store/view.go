package store

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"path/filepath"
	"sync"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/internal/vfs"
)

// ErrNoPoint is returned for a point the catalog does not hold (never
// taken, not yet applied, or pruned).
var ErrNoPoint = errors.New("replica: no such point")

// View is a read-only blockdev.Device: a disk as it was at a point, read
// from the image and the undo entries newer than the point, without
// copying. Replication may go on applying underneath: each batch tells
// the open views which blocks it is about to overwrite before it does.
// The point is pinned (never pruned) while the view is open.
type View struct {
	cat  *Catalog
	disk string
	lsn  uint64
	size int64
	img  vfs.File
	segs segFiles
	sh   *shared

	// blocks maps an undo block index to the entry that holds the block
	// as it was at the point; guarded by sh.mu.
	blocks blockTable
	closed bool
}

// blockTable maps block indexes to entries: a two-level table, dense
// within 1024-block leaves, allocated only where history exists, so a
// lookup is two indexings (a map, or pointer chasing through entries,
// made view reads a third slower than image reads).
type blockTable struct {
	leaves []*[1024]blockRef
}

func (t *blockTable) get(b int64) (blockRef, bool) {
	if b>>10 >= int64(len(t.leaves)) {
		return blockRef{}, false
	}
	l := t.leaves[b>>10]
	if l == nil || l[b&1023].ref == nil {
		return blockRef{}, false
	}
	return l[b&1023], true
}

// add maps b unless it is mapped already.
func (t *blockTable) add(b int64, r blockRef) {
	if b>>10 >= int64(len(t.leaves)) {
		t.leaves = append(t.leaves, make([]*[1024]blockRef, b>>10+1-int64(len(t.leaves)))...)
	}
	l := t.leaves[b>>10]
	if l == nil {
		l = new([1024]blockRef)
		t.leaves[b>>10] = l
	}
	if l[b&1023].ref == nil {
		l[b&1023] = r
	}
}

type blockRef struct {
	ref *undoEntry
	at  int64 // the block's offset in the entry's bytes
}

// undoEntry is an undo entry as a view uses it.
type undoEntry struct {
	undoRef
	once sync.Once
	f    vfs.File // its segment, once checked
	err  error    // what checking it found
}

// OpenView opens disk ("ROOT/VM/DISK") as it was at the point at lsn.
func (c *Catalog) OpenView(disk string, lsn uint64) (*View, error) {
	c.pruneMu.Lock()
	defer c.pruneMu.Unlock()
	st, err := c.state(disk)
	if err != nil {
		return nil, err
	}
	pts, err := c.diskPoints(disk, st.applied)
	if err != nil {
		return nil, err
	}
	found := false
	for _, p := range pts {
		found = found || p.LSN == lsn
	}
	if !found {
		return nil, fmt.Errorf("%w: %s has no point at LSN %d", ErrNoPoint, disk, lsn)
	}
	img, err := c.fs.Open(filepath.Join(c.dir(disk), "image"))
	if err != nil {
		return nil, fmt.Errorf("replica: %w", err)
	}
	v := &View{cat: c, disk: disk, lsn: lsn, size: st.size, img: img, sh: c.shared(disk),
		segs:   segFiles{fs: c.fs, dir: filepath.Join(c.dir(disk), "undo")},
		blocks: blockTable{leaves: make([]*[1024]blockRef, (st.size/UndoBlock+1023)/1024)}}
	// Under the apply lock: no batch can slip between the scan and the
	// registration; one that committed its entries before the scan is
	// noted twice, which changes nothing (the oldest entry of a block wins).
	v.sh.mu.Lock()
	defer v.sh.mu.Unlock()
	refs, err := c.undoAfter(disk, lsn)
	if err != nil {
		img.Close()
		return nil, err
	}
	v.note(refs)
	v.sh.views[v] = struct{}{}
	v.sh.pins[lsn]++
	return v, nil
}

// note maps the blocks of entries newer than the point that no older
// entry maps yet: entries a batch is about to make current, or those found
// when the view opens (sh.mu held).
func (v *View) note(refs []*undoRef) {
	for _, r := range refs {
		if r == nil || r.lsn <= v.lsn {
			continue
		}
		e := &undoEntry{undoRef: *r}
		for at := int64(0); at < r.length; at += UndoBlock {
			v.blocks.add((r.off+at)/UndoBlock, blockRef{ref: e, at: at})
		}
	}
}

// LSN returns the point's LSN.
func (v *View) LSN() uint64 { return v.lsn }

// Size returns the disk size.
func (v *View) Size() int64 { return v.size }

// Sync does nothing: a view holds nothing unwritten.
func (v *View) Sync() error { return nil }

// WriteAt refuses: a point is history.
func (v *View) WriteAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(v.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	return 0, blockdev.ErrReadOnly
}

// ReadAt reads the disk as it was at the point.
func (v *View) ReadAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(v.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	v.sh.mu.RLock()
	defer v.sh.mu.RUnlock()
	if v.closed {
		return 0, errors.New("replica: point view closed")
	}
	end := off + int64(len(p))
	for pos := off; pos < end; {
		b := pos / UndoBlock
		bEnd := min((b+1)*UndoBlock, end)
		if br, ok := v.blocks.get(b); ok {
			if err := v.readUndo(br, p[pos-off:bEnd-off], pos-b*UndoBlock); err != nil {
				return int(pos - off), err
			}
			pos = bEnd
			continue
		}
		// A run of blocks the image still holds as they were.
		for bEnd < end {
			if _, ok := v.blocks.get(bEnd / UndoBlock); ok {
				break
			}
			bEnd = min(bEnd+UndoBlock, end)
		}
		n, err := v.img.ReadAt(p[pos-off:bEnd-off], pos)
		if n != int(bEnd-pos) && !errors.Is(err, io.EOF) {
			return int(pos - off), fmt.Errorf("replica: reading the image: %w", err)
		}
		clear(p[pos-off+int64(n) : bEnd-off]) // past a short image: zeros
		pos = bEnd
	}
	return len(p), nil
}

// readUndo reads part of a block from its undo entry, verifying the
// entry's checksum the first time this view uses it.
func (v *View) readUndo(br blockRef, p []byte, inBlock int64) error {
	e := br.ref
	e.once.Do(func() {
		all := make([]byte, e.length)
		if e.err = v.cat.readUndo(v.disk, &e.undoRef, all, 0, &v.segs); e.err != nil {
			return
		}
		if crc32.Checksum(all, castagnoli) != e.crc {
			e.err = fmt.Errorf("replica: the history of %s is damaged: undo entry of LSN %d fails its checksum", v.disk, e.lsn)
			return
		}
		if e.inline == nil {
			e.f, e.err = v.segs.get(e.seg)
		}
	})
	if e.err != nil {
		return e.err
	}
	at := br.at + inBlock
	if e.inline != nil {
		copy(p, e.inline[at:])
		return nil
	}
	if n, err := e.f.ReadAt(p, e.segOff+at); n != len(p) {
		return fmt.Errorf("replica: reading undo segment %016x of %s: %w", e.seg, v.disk, err)
	}
	return nil
}

// Close closes the view and unpins its point.
func (v *View) Close() error {
	v.sh.mu.Lock()
	if v.closed {
		v.sh.mu.Unlock()
		return nil
	}
	v.closed = true
	delete(v.sh.views, v)
	if v.sh.pins[v.lsn]--; v.sh.pins[v.lsn] <= 0 {
		delete(v.sh.pins, v.lsn)
	}
	v.blocks = blockTable{}
	v.sh.mu.Unlock()
	v.segs.close()
	return v.img.Close()
}

var (
	_ blockdev.Mapper = (*View)(nil)
)

// Map reports the disk's allocation at the point: blocks with history
// after the point are data (their old content comes from the undo
// entries), the rest is what the image's holes say (SEEK_DATA).
func (v *View) Map(off, n int64) ([]blockdev.Extent, error) {
	if err := blockdev.CheckRange(v.size, off, n); err != nil || n == 0 {
		return nil, err
	}
	v.sh.mu.RLock()
	defer v.sh.mu.RUnlock()
	if v.closed {
		return nil, errors.New("replica: point view closed")
	}
	fd, canSeek := blockdev.FileMapper(v.img)
	var out []blockdev.Extent
	end := off + n
	for pos := off; pos < end && len(out) < blockdev.MaxExtents; {
		_, old := v.blocks.get(pos / UndoBlock)
		bEnd := min((pos/UndoBlock+1)*UndoBlock, end)
		for bEnd < end {
			if _, ok := v.blocks.get(bEnd / UndoBlock); ok != old {
				break
			}
			bEnd = min(bEnd+UndoBlock, end)
		}
		if old || !canSeek {
			out = blockdev.AppendExtent(out, blockdev.Extent{Length: bEnd - pos})
			pos = bEnd
			continue
		}
		ext, err := blockdev.MapFD(fd, pos, bEnd-pos)
		if err != nil {
			return nil, err
		}
		for _, e := range ext {
			out = blockdev.AppendExtent(out, e)
			pos += e.Length
		}
	}
	return out, nil
}

// Changes is the set of blocks (UndoBlock each) written between two
// points of a disk. It never changes once made: safe for concurrent use.
type Changes struct {
	bits []uint64
	size int64
}

// Has reports whether block b changed.
func (c *Changes) Has(b int64) bool {
	return b>>6 < int64(len(c.bits)) && c.bits[b>>6]&(1<<(b&63)) != 0
}

// Bytes returns how many bytes of the disk the changed blocks cover.
func (c *Changes) Bytes() int64 {
	var n int64
	for b := range (c.size + UndoBlock - 1) / UndoBlock {
		if c.Has(b) {
			n += min(UndoBlock, c.size-b*UndoBlock)
		}
	}
	return n
}

// ChangedSince returns the blocks that differ between the disk at the
// point at LSN since and at the view's point: the blocks of every undo
// entry in between, read from the index alone (no data, no scan of the
// image). A block written and written back counts as changed. since
// must be a point the catalog still holds (its history after it is
// then complete), older than the view's.
func (v *View) ChangedSince(since uint64) (*Changes, error) {
	if since >= v.lsn {
		return nil, fmt.Errorf("%w: the point at LSN %d is not older than the view's (%d)", ErrNoPoint, since, v.lsn)
	}
	c := v.cat
	// Under the prune lock: the history after since cannot go meanwhile.
	c.pruneMu.Lock()
	defer c.pruneMu.Unlock()
	st, err := c.state(v.disk)
	if err != nil {
		return nil, err
	}
	pts, err := c.diskPoints(v.disk, st.applied)
	if err != nil {
		return nil, err
	}
	found := false
	for _, p := range pts {
		found = found || p.LSN == since
	}
	if !found {
		return nil, fmt.Errorf("%w: %s has no point at LSN %d", ErrNoPoint, v.disk, since)
	}
	refs, err := c.undoAfter(v.disk, since)
	if err != nil {
		return nil, err
	}
	ch := &Changes{bits: make([]uint64, ((v.size+UndoBlock-1)/UndoBlock+63)/64), size: v.size}
	for _, r := range refs {
		if r.lsn > v.lsn {
			break // in LSN order
		}
		for b := r.off / UndoBlock; b < (r.off+r.length+UndoBlock-1)/UndoBlock; b++ {
			ch.bits[b>>6] |= 1 << (b & 63)
		}
	}
	return ch, nil
}
