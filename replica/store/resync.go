package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/statefile"
	"github.com/vrep-io/vrep/replica/wire"
)

// A resync (replica/wire, resync.go) rewrites the chunks of the image
// that differ from the primary's frozen disk at a target LSN. The image
// is then no disk at any LSN until the resync completes, so records are
// refused meanwhile, and every chunk goes through the history path: its
// old content is saved before it is overwritten, so every point from
// before the resync reads back exactly during and after it.
//
// Resync undo entries live in the index next to the record entries
// (Catalog), under their own keys, since one resync writes many chunks
// and a record key holds one entry per LSN:
//
//	"r\x00" KEY "\x00" SLOT(uint64 BE) CHUNK(uint64 BE)  an undo entry
//	"b\x00" KEY "\x00" LSN(uint64 BE)   a completed resync's target LSN:
//	                                     the first point after it is the
//	                                     new consistent base (empty value)
//
// SLOT is the applied LSN when the resync started, plus one: a view at a
// point at or before the applied LSN treats the entry as the oldest
// history after it, and among entries of the same LSN a resync's come
// first (they were captured before any record of that LSN). The value is
// an undo entry as for records, always inline (kind 2): chunks are few
// and large, and badger's value log keeps them.
//
// Progress is the file DISK/resync, present while a resync is under way:
// magic "VREPRSYN", version uint16, then target LSN uint64, slot uint64,
// chunk size uint32, 4 zero bytes, chunk count uint64, next chunk uint64
// (every chunk before it compared and durable), chunks written uint64,
// CRC32C; little-endian; published atomically after the image is synced,
// at a mark once DurableBytes of chunks wait for it or a second has
// passed (wire.MsgResyncDurable tells the primary). A resync started
// again reports this progress and its target; the primary resumes at
// next, for another target after sending first the chunks below next
// that changed between the two, or starts from 0. A chunk already
// written is then equal and is not sent again, and its history is not
// captured again.

const resyncMagic = "VREPRSYN"

// resyncState is a resync under way.
type resyncState struct {
	// target and next are the session's: the target the chunks now
	// coming stand for, and the last mark received.
	target, slot uint64
	chunkSize    uint32
	chunks, next uint64
	written      uint64
	last         int64 // the last chunk index received (-1: none since next)
	pend         []pendChunk
	pendBytes    int
	// durTarget and durNext are the progress file's: every chunk before
	// durNext is the primary's disk at durTarget, durably.
	durTarget, durNext uint64
	undurable          int       // chunk bytes taken since the last durable mark
	durAt              time.Time // when the progress was last made durable
	resumed            bool      // the primary said where this session starts
}

// resyncDurableEvery makes a mark durable at least this often while
// chunks are compared, so that a resync of a large disk that finds little
// to send does not start over after a crash; resyncDurableBytes of chunks
// taken make the next mark durable (a variable for tests, which make
// every mark durable).
var (
	resyncDurableEvery = time.Second
	resyncDurableBytes = wire.DurableBytes
)

type pendChunk struct {
	index uint64
	data  []byte
}

// resyncFlushBytes bounds the chunks held before they are written.
const resyncFlushBytes = 8 << 20

// ErrResyncing is returned for records sent while a resync is under way.
var ErrResyncing = errors.New("replica: a resync is under way; records follow its completion")

func (d *Disk) resyncPath() string { return filepath.Join(d.dir, "resync") }

func (d *Disk) loadResync() error {
	body, err := statefile.Read(d.fs, d.resyncPath(), resyncMagic, 48)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("replica: %s: bad resync progress: %w", d.dir, err)
	}
	rs := &resyncState{target: binary.LittleEndian.Uint64(body), slot: binary.LittleEndian.Uint64(body[8:]),
		chunkSize: binary.LittleEndian.Uint32(body[16:]), chunks: binary.LittleEndian.Uint64(body[24:]),
		next: binary.LittleEndian.Uint64(body[32:]), written: binary.LittleEndian.Uint64(body[40:]), last: -1}
	rs.durTarget, rs.durNext = rs.target, rs.next
	if rs.chunks != wire.Chunks(d.size, int(rs.chunkSize)) || rs.next > rs.chunks {
		return fmt.Errorf("replica: %s: resync progress does not match the disk", d.dir)
	}
	d.rs = rs
	return nil
}

func (d *Disk) writeResync() error {
	rs := d.rs
	body := make([]byte, 48)
	binary.LittleEndian.PutUint64(body, rs.target)
	binary.LittleEndian.PutUint64(body[8:], rs.slot)
	binary.LittleEndian.PutUint32(body[16:], rs.chunkSize)
	binary.LittleEndian.PutUint64(body[24:], rs.chunks)
	binary.LittleEndian.PutUint64(body[32:], rs.next)
	binary.LittleEndian.PutUint64(body[40:], rs.written)
	if err := statefile.Write(d.fs, d.resyncPath(), resyncMagic, body); err != nil {
		return fmt.Errorf("replica: recording resync progress: %w", err)
	}
	rs.durTarget, rs.durNext, rs.undurable, rs.durAt = rs.target, rs.next, 0, time.Now()
	return nil
}

// Resyncing reports whether a resync is under way.
func (d *Disk) Resyncing() bool { return d.rs != nil }

// ResyncProgress returns the resync under way: the chunk the comparison
// has reached, the chunk count and the chunks written.
func (d *Disk) ResyncProgress() (next, chunks, written uint64, ok bool) {
	if d.rs == nil {
		return 0, 0, 0, false
	}
	return d.rs.next, d.rs.chunks, d.rs.written, true
}

// ResyncBegin starts (or resumes) a resync to the primary's disk at
// target, in chunks of chunkSize, and returns its durable progress: every
// chunk before next is the primary's disk at held (0, 0: none). The
// primary then says where it starts (ResyncResume).
func (d *Disk) ResyncBegin(target uint64, chunkSize uint32, chunks uint64) (next, held uint64, err error) {
	if !d.seeded {
		return 0, 0, fmt.Errorf("%w: a resync needs a completed initial copy", ErrInvalid)
	}
	if chunks != wire.Chunks(d.size, int(chunkSize)) {
		return 0, 0, fmt.Errorf("%w: %d chunks of %d bytes do not cover a disk of %d bytes", ErrInvalid, chunks, chunkSize, d.size)
	}
	if target < d.applied {
		// The applied LSN never goes back: records after target already
		// have their history and points here.
		return 0, 0, fmt.Errorf("%w: a resync to LSN %d, behind the applied LSN %d", ErrInvalid, target, d.applied)
	}
	if rs := d.rs; rs != nil {
		// What the last session held and did not make durable is
		// forgotten: the primary sends it again.
		rs.pend, rs.pendBytes, rs.last, rs.undurable, rs.resumed = nil, 0, -1, 0, false
		rs.target, rs.next = rs.durTarget, rs.durNext
		if rs.chunkSize != chunkSize {
			return 0, 0, nil
		}
		return rs.durNext, rs.durTarget, nil
	}
	d.rs = &resyncState{target: target, slot: d.applied + 1, chunkSize: chunkSize, chunks: chunks, last: -1}
	if err := d.writeResync(); err != nil {
		d.rs = nil
		return 0, 0, err
	}
	return 0, target, nil
}

// ResyncResume starts the session's comparison at chunk from, for the
// primary's disk at target: at the durable progress for the same target,
// else below it (the primary then sends first, in order, the chunks below
// from that changed since the progress's target) or at 0.
func (d *Disk) ResyncResume(target uint64, chunkSize uint32, from uint64) error {
	rs := d.rs
	switch {
	case rs == nil:
		return fmt.Errorf("%w: a resume outside a resync", wire.ErrResync)
	case rs.resumed:
		return fmt.Errorf("%w: a second resume in one session", wire.ErrResync)
	case from > 0 && (from > rs.durNext || rs.chunkSize != chunkSize):
		return fmt.Errorf("%w: a resume at chunk %d past the durable progress %d", wire.ErrResync, from, rs.durNext)
	}
	rs.resumed = true
	if target == rs.durTarget && from == rs.durNext && chunkSize == rs.chunkSize {
		return nil
	}
	// Another target (or the start): the chunks before from are taken as
	// they come, from 0. The progress file keeps the old target until
	// the first durable mark: still true, since the primary will send the
	// chunks changed since then again if this session ends before it.
	rs.target, rs.chunkSize, rs.chunks, rs.next = target, chunkSize, wire.Chunks(d.size, int(chunkSize)), 0
	if from == 0 {
		return d.writeResync()
	}
	return nil
}

// ResyncChunk takes one differing chunk. Chunks come in increasing order
// after the last mark; nothing is written before it is checked.
func (d *Disk) ResyncChunk(index uint64, data []byte) error {
	rs := d.rs
	if rs == nil || !rs.resumed {
		return fmt.Errorf("%w: a resync chunk outside a resync", wire.ErrResync)
	}
	if index < rs.next || int64(index) <= rs.last || index >= rs.chunks {
		return fmt.Errorf("%w: chunk %d out of order (resync at chunk %d of %d)", wire.ErrResync, index, rs.next, rs.chunks)
	}
	off := int64(index) * int64(rs.chunkSize)
	if want := min(int64(rs.chunkSize), d.size-off); int64(len(data)) != want {
		return fmt.Errorf("%w: chunk %d of %d bytes, want %d", wire.ErrResync, index, len(data), want)
	}
	rs.last = int64(index)
	rs.pend = append(rs.pend, pendChunk{index, bytes.Clone(data)})
	rs.pendBytes += len(data)
	rs.undurable += len(data)
	if rs.pendBytes >= resyncFlushBytes {
		return d.resyncFlush()
	}
	return nil
}

// ResyncMark records that every chunk before next was compared and the
// differing ones sent. Once DurableBytes of chunks wait for it, or a
// second has passed since the last durable mark, they are made durable,
// then the progress; durable says so (the primary is then told).
func (d *Disk) ResyncMark(next uint64) (durable bool, err error) {
	rs := d.rs
	if rs == nil || !rs.resumed {
		return false, fmt.Errorf("%w: a resync mark outside a resync", wire.ErrResync)
	}
	if next <= rs.next || next > rs.chunks || rs.last >= int64(next) {
		return false, fmt.Errorf("%w: mark at chunk %d (resync at chunk %d of %d)", wire.ErrResync, next, rs.next, rs.chunks)
	}
	rs.next = next
	if rs.undurable < resyncDurableBytes && time.Since(rs.durAt) < resyncDurableEvery {
		return false, nil
	}
	if err := d.resyncFlush(); err != nil {
		return false, err
	}
	if err := d.img.Sync(); err != nil {
		return false, fmt.Errorf("replica: %w", err)
	}
	if err := d.writeResync(); err != nil {
		return false, err
	}
	faultpoint.Hit(faultpoint.ResyncAfterMark)
	return true, nil
}

// resyncFlush writes the held chunks: history first (durable), then the
// image, under the lock that keeps open views consistent.
func (d *Disk) resyncFlush() error {
	rs := d.rs
	pend := rs.pend
	if len(pend) == 0 {
		return nil
	}
	if d.cat != nil {
		idx := make([]uint64, len(pend))
		for i, p := range pend {
			idx[i] = p.index
		}
		existing, err := d.cat.existingResync(d.key, rs.slot, idx)
		if err != nil {
			return err
		}
		refs := make([]*undoRef, len(pend))
		var fresh []*undoRef
		var freshIdx []uint64
		for i, p := range pend {
			if e := existing[p.index]; e != nil {
				refs[i] = e
				continue
			}
			off := int64(p.index) * int64(rs.chunkSize)
			old := make([]byte, len(p.data))
			if n, err := d.img.ReadAt(old, off); n != len(old) && !errors.Is(err, io.EOF) {
				return fmt.Errorf("replica: reading the image for history: %w", err)
			}
			refs[i] = &undoRef{lsn: rs.slot, off: off, length: int64(len(old)), crc: crc32.Checksum(old, castagnoli), inline: old}
			fresh = append(fresh, refs[i])
			freshIdx = append(freshIdx, p.index)
		}
		if err := d.cat.indexResync(d.key, rs.slot, freshIdx, fresh); err != nil {
			return err
		}
		d.sh.mu.Lock()
		for v := range d.sh.views {
			v.note(refs)
		}
		err = d.writeChunks(pend)
		d.sh.mu.Unlock()
		if err != nil {
			return err
		}
	} else if err := d.writeChunks(pend); err != nil {
		return err
	}
	rs.written += uint64(len(pend))
	rs.pend, rs.pendBytes = nil, 0
	return nil
}

func (d *Disk) writeChunks(pend []pendChunk) error {
	for _, p := range pend {
		if _, err := d.img.WriteAt(p.data, int64(p.index)*int64(d.rs.chunkSize)); err != nil {
			return fmt.Errorf("replica: %w", err)
		}
	}
	return nil
}

// ResyncFinish completes the resync: every chunk was compared, the image
// is the primary's disk at target, which becomes the applied LSN; the
// records after it follow. The first point after target is the new
// consistent base.
func (d *Disk) ResyncFinish(target uint64) error {
	rs := d.rs
	if rs == nil {
		return fmt.Errorf("%w: resync done outside a resync", wire.ErrResync)
	}
	if target != rs.target || rs.next != rs.chunks || !rs.resumed {
		return fmt.Errorf("%w: resync done at LSN %d after chunk %d of %d (target %d)", wire.ErrResync, target, rs.next, rs.chunks, rs.target)
	}
	if err := d.resyncFlush(); err != nil {
		return err
	}
	if err := d.img.Sync(); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	if d.cat != nil {
		if err := d.cat.db.Update(func(txn *badger.Txn) error {
			return txn.Set(indexKey('b', d.key, target), []byte{})
		}); err != nil {
			return fmt.Errorf("replica: recording the resync: %w", err)
		}
	}
	prev := d.applied
	d.applied = target
	if err := d.writeState(); err != nil {
		d.applied = prev
		return err
	}
	if err := d.fs.Remove(d.resyncPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("replica: %w", err)
	}
	d.rs = nil
	return d.fs.SyncDir(d.dir)
}

// ResyncSums hashes the image's chunks first..first+n-1 (for a resync or
// a verify of the image).
func (d *Disk) ResyncSums(first, n uint64, chunkSize uint32) ([]wire.Sum, error) {
	return wire.HashChunks(context.Background(), d, d.size, int(chunkSize), first, n, 0)
}

func resyncKey(disk string, slot, chunk uint64) []byte {
	return binary.BigEndian.AppendUint64(indexKey('r', disk, slot), chunk)
}

// existingResync returns the resync undo entries already indexed for
// chunks of the resync at slot.
func (c *Catalog) existingResync(disk string, slot uint64, chunks []uint64) (map[uint64]*undoRef, error) {
	return c.lookupUndo(chunks, func(ch uint64) ([]byte, uint64) { return resyncKey(disk, slot, ch), slot })
}

func (c *Catalog) indexResync(disk string, slot uint64, chunks []uint64, refs []*undoRef) error {
	if len(refs) == 0 {
		return nil
	}
	wb := c.db.NewWriteBatch()
	for i, r := range refs {
		if err := wb.Set(resyncKey(disk, slot, chunks[i]), r.encode()); err != nil {
			wb.Cancel()
			return err
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("replica: indexing resync history: %w", err)
	}
	return nil
}

// resyncAfter returns the resync undo entries of disk with a slot above
// lsn, in slot then chunk order.
func (c *Catalog) resyncAfter(disk string, lsn uint64) ([]*undoRef, error) {
	var out []*undoRef
	pre := indexPrefix('r', disk)
	err := c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: pre, PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Seek(indexKey('r', disk, lsn+1)); it.Valid(); it.Next() {
			k := it.Item().Key()
			if len(k) != len(pre)+16 {
				return errors.New("replica: malformed resync key in the index")
			}
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			r, err := decodeUndoRef(binary.BigEndian.Uint64(k[len(pre):]), v)
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// mergeHistory merges record entries (u) and resync entries (r), both in
// LSN order, into one LSN order; at equal LSNs resync entries go first.
func mergeHistory(u, r []*undoRef) []*undoRef {
	if len(r) == 0 {
		return u
	}
	out := make([]*undoRef, 0, len(u)+len(r))
	i, j := 0, 0
	for i < len(u) || j < len(r) {
		if j < len(r) && (i == len(u) || r[j].lsn <= u[i].lsn) {
			out = append(out, r[j])
			j++
		} else {
			out = append(out, u[i])
			i++
		}
	}
	return out
}

// pruneResync drops the resync entries no kept point needs: those of
// resyncs whose slot is at or before the oldest kept point.
func (c *Catalog) pruneResync(disk string, oldest uint64) (int, error) {
	pre := indexPrefix('r', disk)
	var keys [][]byte
	err := c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: pre})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			if len(k) != len(pre)+16 || binary.BigEndian.Uint64(k[len(pre):]) > oldest {
				break
			}
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		return nil
	})
	if err != nil || len(keys) == 0 {
		return 0, err
	}
	wb := c.db.NewWriteBatch()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			wb.Cancel()
			return 0, err
		}
	}
	if err := wb.Flush(); err != nil {
		return 0, fmt.Errorf("replica: pruning resync history of %s: %w", disk, err)
	}
	return len(keys), nil
}

// ResyncBases returns the target LSNs of the completed resyncs of disk
// ("ROOT/VM/DISK"), oldest first: the first point after each is a new
// consistent base, and no point lies between the resync's start and it.
func (c *Catalog) ResyncBases(disk string) ([]uint64, error) {
	var out []uint64
	pre := indexPrefix('b', disk)
	err := c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: pre})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			out = append(out, binary.BigEndian.Uint64(k[len(k)-8:]))
		}
		return nil
	})
	slices.Sort(out)
	return out, err
}

// Resyncing reports whether a resync of disk ("ROOT/VM/DISK") is under
// way: its image is then no disk at any LSN, and only point views (which
// read the history the resync saves) show a consistent disk.
func (c *Catalog) Resyncing(disk string) bool {
	names, err := c.fs.List(c.dir(disk))
	return err == nil && slices.Contains(names, "resync")
}
