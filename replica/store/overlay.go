package store

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/internal/statefile"
	"github.com/vrep-io/vrep/internal/vfs"
)

// Overlay is a writable copy-on-write device over a read-only one (a
// point view): writes go to a sparse scratch file, reads take each block
// from the scratch file once written, else from the base. Nothing ever
// reaches the base. Discard removes its files.
//
// A test failover's overlay (NewOverlay) lives as long as its daemon: its
// map of written blocks is only in memory. A failover's overlay
// (CreateOverlay, OpenOverlay) is persistent: Sync fsyncs the scratch
// file, then publishes the map as a state file beside it (PATH.map):
//
//	magic "VREPOVLY", version uint16, size uint64, one bit per 4 KiB
//	block (bit b%8 of byte b/8: block b was written), CRC32C of all
//	before it; little-endian; published atomically
//
// The map is copied before the scratch file is fsynced, so a bit never
// claims data that is not durable. A block written after the last Sync
// reads from the base again after a crash: under a tracked volume that
// is right, since the volume fsyncs its base (Sync) before it moves its
// checkpoint, and replays every record after the checkpoint at open,
// rewriting such blocks.
//
// Safe for concurrent use.
type Overlay struct {
	base    blockdev.Device
	fs      vfs.FS
	path    string
	mapPath string // "": not persistent
	f       vfs.File
	size    int64

	syncMu  sync.Mutex // one Sync at a time: maps are published in order
	mu      sync.RWMutex
	written []uint64 // bitmap of written undo blocks
}

// Part of the format; do not change.
const overlayMagic = "VREPOVLY"

var _ blockdev.Device = (*Overlay)(nil)

// NewOverlay makes an in-memory-mapped overlay over base with its scratch
// file at path (replaced if it exists): a test failover's.
func NewOverlay(fsys vfs.FS, path string, base blockdev.Device) (*Overlay, error) {
	return newOverlay(fsys, path, "", base)
}

// CreateOverlay makes a persistent overlay over base, its scratch file at
// path and its map at path+".map" (both replaced if they exist).
func CreateOverlay(fsys vfs.FS, path string, base blockdev.Device) (*Overlay, error) {
	o, err := newOverlay(fsys, path, path+".map", base)
	if err != nil {
		return nil, err
	}
	if err := o.Sync(); err != nil {
		o.f.Close()
		return nil, err
	}
	return o, nil
}

func newOverlay(fsys vfs.FS, path, mapPath string, base blockdev.Device) (*Overlay, error) {
	if mapPath != "" {
		if err := fsys.Remove(mapPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("replica: %w", err)
		}
	}
	f, err := fsys.Create(path)
	if err != nil {
		return nil, fmt.Errorf("replica: %w", err)
	}
	size := base.Size()
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("replica: %w", err)
	}
	nb := (size + UndoBlock - 1) / UndoBlock
	return &Overlay{base: base, fs: fsys, path: path, mapPath: mapPath, f: f, size: size,
		written: make([]uint64, (nb+63)/64)}, nil
}

// OpenOverlay reopens the persistent overlay at path over base: the
// blocks its last published map names read from the scratch file.
func OpenOverlay(fsys vfs.FS, path string, base blockdev.Device) (*Overlay, error) {
	size := base.Size()
	nb := (size + UndoBlock - 1) / UndoBlock
	mapPath := path + ".map"
	body, err := statefile.Read(fsys, mapPath, overlayMagic, 8+int((nb+7)/8))
	if errors.Is(err, statefile.ErrBad) {
		return nil, fmt.Errorf("replica: %s: bad overlay map", mapPath)
	}
	if err != nil {
		return nil, fmt.Errorf("replica: %w", err)
	}
	if got := int64(leUint64(body)); got != size {
		return nil, fmt.Errorf("replica: the overlay %s is of a disk of %d bytes, not %d", path, got, size)
	}
	f, err := fsys.Open(path)
	if err != nil {
		return nil, fmt.Errorf("replica: %w", err)
	}
	if err := f.Truncate(size); err != nil { // a cut may have lost the size
		f.Close()
		return nil, fmt.Errorf("replica: %w", err)
	}
	o := &Overlay{base: base, fs: fsys, path: path, mapPath: mapPath, f: f, size: size,
		written: make([]uint64, (nb+63)/64)}
	for i, c := range body[8:] {
		o.written[i/8] |= uint64(c) << (8 * (i % 8))
	}
	return o, nil
}

func leUint64(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func (o *Overlay) has(b int64) bool { return o.written[b/64]&(1<<(b%64)) != 0 }

// Size returns the device size.
func (o *Overlay) Size() int64 { return o.size }

// Sync makes the overlay's writes durable in its scratch file and, when
// persistent, publishes the map of the blocks written before it began.
func (o *Overlay) Sync() error {
	o.syncMu.Lock()
	defer o.syncMu.Unlock()
	var body []byte
	if o.mapPath != "" {
		// The map first: whatever it names is in the file now, and the
		// fsync below makes it durable.
		o.mu.RLock()
		body = make([]byte, 8, 8+len(o.written)*8)
		for i := range 8 {
			body[i] = byte(uint64(o.size) >> (8 * i))
		}
		nb := (o.size + UndoBlock - 1) / UndoBlock
		for i := int64(0); i < (nb+7)/8; i++ {
			body = append(body, byte(o.written[i/8]>>(8*(i%8))))
		}
		o.mu.RUnlock()
	}
	if err := o.f.Sync(); err != nil {
		return fmt.Errorf("replica: overlay: %w", err)
	}
	if body == nil {
		return nil
	}
	if err := statefile.Write(o.fs, o.mapPath, overlayMagic, body); err != nil {
		return fmt.Errorf("replica: overlay map: %w", err)
	}
	return nil
}

// ReadAt reads written blocks from the scratch file, the rest from the base.
func (o *Overlay) ReadAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(o.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	o.mu.RLock()
	defer o.mu.RUnlock()
	end := off + int64(len(p))
	for pos := off; pos < end; {
		b := pos / UndoBlock
		mine := o.has(b)
		bEnd := min((b+1)*UndoBlock, end)
		for bEnd < end && o.has(bEnd/UndoBlock) == mine {
			bEnd = min(bEnd+UndoBlock, end)
		}
		var n int
		var err error
		if mine {
			n, err = o.f.ReadAt(p[pos-off:bEnd-off], pos)
		} else {
			n, err = o.base.ReadAt(p[pos-off:bEnd-off], pos)
		}
		if err != nil && !(errors.Is(err, io.EOF) && n == int(bEnd-pos)) {
			if errors.Is(err, io.EOF) { // past a short scratch file: zeros
				clear(p[pos-off+int64(n) : bEnd-off])
			} else {
				return int(pos - off), err
			}
		}
		pos = bEnd
	}
	return len(p), nil
}

// WriteAt writes to the scratch file; a block written for the first time
// in part is completed from the base first.
func (o *Overlay) WriteAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(o.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	end := off + int64(len(p))
	for _, b := range []int64{off / UndoBlock, (end - 1) / UndoBlock} {
		lo, hi := b*UndoBlock, min((b+1)*UndoBlock, o.size)
		if o.has(b) || (off <= lo && end >= hi) {
			continue
		}
		blk := make([]byte, hi-lo)
		if _, err := o.base.ReadAt(blk, lo); err != nil {
			return 0, err
		}
		if _, err := o.f.WriteAt(blk, lo); err != nil {
			return 0, err
		}
		o.written[b/64] |= 1 << (b % 64)
	}
	if _, err := o.f.WriteAt(p, off); err != nil {
		return 0, err
	}
	for b := off / UndoBlock; b <= (end-1)/UndoBlock; b++ {
		o.written[b/64] |= 1 << (b % 64)
	}
	return len(p), nil
}

// Written calls fn for each run of written blocks, in order, as a byte
// range; fn's error stops the walk and is returned.
func (o *Overlay) Written(fn func(off, n int64) error) error {
	o.mu.RLock()
	nb := (o.size + UndoBlock - 1) / UndoBlock
	var runs [][2]int64
	for b := int64(0); b < nb; {
		if o.written[b/64] == 0 && b%64 == 0 {
			b += 64
			continue
		}
		if !o.has(b) {
			b++
			continue
		}
		s := b
		for b < nb && o.has(b) {
			b++
		}
		runs = append(runs, [2]int64{s * UndoBlock, min(b*UndoBlock, o.size) - s*UndoBlock})
	}
	o.mu.RUnlock()
	for _, r := range runs {
		if err := fn(r[0], r[1]); err != nil {
			return err
		}
	}
	return nil
}

// Close closes the scratch file, keeping it (and its map) on disk; the
// base is not closed. Sync first to keep the latest writes.
func (o *Overlay) Close() error { return o.f.Close() }

// Discard closes the overlay and removes its files; the base is not
// closed.
func (o *Overlay) Discard() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.f.Close()
	if err := o.fs.Remove(o.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("replica: %w", err)
	}
	if o.mapPath != "" {
		if err := o.fs.Remove(o.mapPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("replica: %w", err)
		}
	}
	return nil
}

var _ blockdev.Mapper = (*Overlay)(nil)

// Map reports written blocks as data and the rest as the base maps them.
func (o *Overlay) Map(off, n int64) ([]blockdev.Extent, error) {
	if err := blockdev.CheckRange(o.size, off, n); err != nil || n == 0 {
		return nil, err
	}
	o.mu.RLock()
	defer o.mu.RUnlock()
	var out []blockdev.Extent
	end := off + n
	for pos := off; pos < end && len(out) < blockdev.MaxExtents; {
		mine := o.has(pos / UndoBlock)
		bEnd := min((pos/UndoBlock+1)*UndoBlock, end)
		for bEnd < end && o.has(bEnd/UndoBlock) == mine {
			bEnd = min(bEnd+UndoBlock, end)
		}
		if mine {
			out = blockdev.AppendExtent(out, blockdev.Extent{Length: bEnd - pos})
			pos = bEnd
			continue
		}
		ext, err := blockdev.Map(o.base, pos, bEnd-pos)
		if err != nil {
			return nil, err
		}
		if len(ext) == 0 {
			ext = []blockdev.Extent{{Length: bEnd - pos}}
		}
		for _, e := range ext {
			e.Length = min(e.Length, bEnd-pos)
			out = blockdev.AppendExtent(out, e)
			pos += e.Length
		}
	}
	return out, nil
}

// ChangeRun is a run of blocks that changed, or did not.
type ChangeRun struct {
	Length  int64
	Changed bool
}

// ChangedRuns describes [off, off+n) of the overlay against an earlier
// point: a block changed if ch (the view's ChangedSince) has it or the
// overlay has written it. At most blockdev.MaxExtents runs, covering a
// prefix of the range.
func (o *Overlay) ChangedRuns(ch *Changes, off, n int64) ([]ChangeRun, error) {
	if err := blockdev.CheckRange(o.size, off, n); err != nil || n == 0 {
		return nil, err
	}
	o.mu.RLock()
	defer o.mu.RUnlock()
	var out []ChangeRun
	end := off + n
	for pos := off; pos < end && len(out) < blockdev.MaxExtents; {
		b := pos / UndoBlock
		changed := ch.Has(b) || o.has(b)
		bEnd := min((b+1)*UndoBlock, end)
		for bEnd < end && (ch.Has(bEnd/UndoBlock) || o.has(bEnd/UndoBlock)) == changed {
			bEnd = min(bEnd+UndoBlock, end)
		}
		out = append(out, ChangeRun{Length: bEnd - pos, Changed: changed})
		pos = bEnd
	}
	return out, nil
}
