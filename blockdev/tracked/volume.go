// Package tracked is the change-tracking filter: a blockdev.Device over a
// base image whose every write goes, in order, into the disk's change log
// (hrl) before it is acknowledged.
//
// A write returns once its record is in the log file; a flush (Sync) or a
// FUA write returns once the log is fsynced. The base image is written only
// by merging records that are already durable. A merge writes into the
// base without an fsync; a checkpoint, later (by size or time), fsyncs the
// base and records the LSN merged through, and only then may log segments
// up to it go. After any crash the base holds the state at the checkpoint
// plus, possibly, parts of later merges; replaying the log from the
// checkpoint rewrites all of those in order, so replay is idempotent and
// ends at the state of the durable log. Reads consult an in-memory extent
// index of unmerged records, then the base.
//
// On-disk state, in the volume's directory:
//
//	log/         the change log (hrl segments)
//	checkpoint   magic "VREPCKPT", version uint16, 6 zero bytes, the LSN
//	             merged into the base (uint64), CRC32C of the 24 bytes
//	             before it; little-endian; published atomically
//	dirty        present only while the disk needs a resync: magic
//	             "VREPDIRT", version uint16, 6 zero bytes, region size
//	             (uint64), bitmap bytes, CRC32C of all before it
package tracked

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/statefile"
	"github.com/vrep-io/vrep/internal/vfs"
)

// Options tune a volume. The zero value is usable.
type Options struct {
	// FS is the file system under the log and metadata (default: the OS).
	FS vfs.FS
	// SegmentSize seals log segments past this size (default 64 MiB).
	SegmentSize int64
	// MergeAfter starts a merge once this many bytes await it
	// (default 1 GiB); writers are held back at twice that. A checkpoint
	// follows once twice this much is merged (or after 30 s), so the log
	// holds up to about four times this on disk.
	MergeAfter int64
	// MaxExtents starts a merge once the index holds this many extents
	// (default 1M), bounding memory; writers are held back at twice that.
	MaxExtents int
	// MergeIdle starts a merge after this long without reads or writes
	// (default 300 ms; negative: never on idle). Reads count: a merge
	// started when writes pause would compete with the reads that often
	// follow, for CPU and for the disk.
	MergeIdle time.Duration
	// Retain keeps merged segments until Release: set when the disk is
	// replicated, so the shipper can read them.
	Retain bool
	// OverflowBytes bounds the unreleased log when Retain is set
	// (default half the disk size, as in Hyper-V). Past it the volume
	// tracks dirty regions instead and reports that a resync is required.
	OverflowBytes int64
	// RegionSize is the dirty bitmap's granularity (default 1 MiB).
	RegionSize int64
	// Recycle keeps up to this many merged log segment files to write new
	// segments over (default: as many as MergeAfter fills, 2 to 32;
	// negative: none). Overwriting cached pages is several times cheaper
	// than filling new files; the price is that disk space the log once
	// took stays taken.
	Recycle int
	// LogFlushBound is the log's hrl.Options.FlushBound: how many small
	// syncs in a row make it prepare a spare segment file (default 16).
	LogFlushBound int
}

var (
	// ErrClosed is returned by calls on a closed volume.
	ErrClosed = errors.New("tracked: volume closed")
	// ErrCorrupt is wrapped by errors about damaged volume metadata.
	ErrCorrupt = errors.New("tracked: corrupt volume state")
	// ErrFenced is wrapped, with blockdev.ErrReadOnly and the reason, by
	// every write, trim and zero refused after Fence.
	ErrFenced = errors.New("tracked: this disk no longer takes writes")
)

// IsCorruption reports whether err says the volume's log or metadata is
// damaged: the volume refuses to serve, and the disk needs a resync.
func IsCorruption(err error) bool { return errors.Is(err, ErrCorrupt) || hrl.IsCorruption(err) }

// Volume is a tracked disk. It is safe for concurrent use; it follows the
// io contracts of blockdev.Device.
type Volume struct {
	base blockdev.Device
	fs   vfs.FS
	dir  string
	opts Options
	log  *hrl.Log

	// mu orders the volume: held exclusively while an LSN is assigned and
	// its extent inserted, so index order is log order; readers share it.
	mu       sync.RWMutex
	dirtyMu  sync.Mutex // serializes writeDirty
	active   *index
	frozen   *index // being merged; nil between merges
	merged   sync.Cond
	ckpt     uint64 // LSN the base durably holds (the checkpoint file)
	applied  uint64 // LSN the base holds as read (page cache); ≥ ckpt
	unckpt   int64  // bytes merged since the checkpoint
	released uint64 // LSN the consumer no longer needs
	keepFrom uint64 // records from this LSN on stay whatever is released (0: none); see KeepFrom
	unrel    int64  // bytes appended after released (approximate)
	dirty    []byte // dirty-region bitmap; non-nil: resync required
	paused   int
	closed   bool
	fenced   error // non-nil: writes are refused with it (Fence)

	mergeMu     sync.Mutex   // one merge or checkpoint at a time
	mergeWanted atomic.Int32 // Merge calls waiting for mergeMu
	ckptAt      time.Time    // when the checkpoint was last written; guarded by mu
	// UnixNano of the last read and of the last write: a merge waits
	// for idle, and steps aside while the disk is only read (yield).
	lastRead, lastWrite atomic.Int64
	kick                chan struct{}
	quit                chan struct{}
	wg                  sync.WaitGroup

	// The last error of each kind of background work, until that work
	// next succeeds: one transient error must not leave a disk reported
	// unhealthy for good.
	mergeErr    bgErr // copying records into the base
	ckptErr     bgErr // base fsync, checkpoint file, dropping merged segments
	overflowErr bgErr // switching to dirty-region tracking

	// overflowMu orders finishing an overflow and clearing it (dirty.go).
	overflowMu sync.Mutex

	closeOnce sync.Once
	closeErr  error
}

// bgErr holds the last error of one kind of background work.
type bgErr struct{ p atomic.Pointer[error] }

// set records err, or clears the record when err is nil.
func (b *bgErr) set(err error) {
	if err == nil {
		b.p.Store(nil)
		return
	}
	b.p.Store(&err)
}

func (b *bgErr) get() error {
	if p := b.p.Load(); p != nil {
		return *p
	}
	return nil
}

var (
	_ blockdev.Device     = (*Volume)(nil)
	_ blockdev.Trimmer    = (*Volume)(nil)
	_ blockdev.Zeroer     = (*Volume)(nil)
	_ blockdev.SyncWriter = (*Volume)(nil)
	_ blockdev.Submitter  = (*Volume)(nil)
)

// Open opens the tracked volume whose state lives in dir, over base.
// Records after the checkpoint are replayed into the base before it
// returns. A damaged log or checkpoint is an error for which
// IsCorruption is true; nothing is written to the base then.
func Open(dir string, base blockdev.Device, opts Options) (*Volume, error) {
	if opts.FS == nil {
		opts.FS = vfs.OS{}
	}
	if opts.MergeAfter <= 0 {
		opts.MergeAfter = 1 << 30
	}
	if opts.MaxExtents <= 0 {
		opts.MaxExtents = 1 << 20
	}
	if opts.MergeIdle == 0 {
		opts.MergeIdle = 300 * time.Millisecond
	}
	if opts.OverflowBytes <= 0 {
		opts.OverflowBytes = max(base.Size()/2, 64<<20)
	}
	if opts.RegionSize <= 0 {
		opts.RegionSize = 1 << 20
	}
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = hrl.DefaultSegmentSize
	}
	if opts.Recycle == 0 {
		opts.Recycle = int(min(max(opts.MergeAfter/opts.SegmentSize, 2), 32))
	}
	v := &Volume{base: base, fs: opts.FS, dir: dir, opts: opts, active: newIndex(),
		kick: make(chan struct{}, 1), quit: make(chan struct{})}
	v.merged.L = &v.mu
	if err := v.fs.MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("tracked: %w", err)
	}
	ckpt, err := v.readCheckpoint()
	if err != nil {
		return nil, err
	}
	if err := v.readDirty(); err != nil {
		return nil, err
	}
	log, err := hrl.Open(v.fs, filepath.Join(dir, "log"), hrl.Options{SegmentSize: opts.SegmentSize, FirstLSN: ckpt + 1, Recycle: max(opts.Recycle, 0), FlushBound: opts.LogFlushBound})
	if err != nil {
		return nil, fmt.Errorf("tracked: opening the change log: %w", err)
	}
	v.log = log
	if err := v.replay(ckpt); err != nil {
		log.Close()
		return nil, err
	}
	if !opts.Retain {
		v.released = ^uint64(0)
	} else {
		// Nothing is released until the consumer says so after a restart.
		v.recountUnreleased()
	}
	v.lastRead.Store(time.Now().UnixNano())
	v.lastWrite.Store(time.Now().UnixNano())
	v.ckptAt = time.Now()
	v.wg.Add(1)
	go v.merger()
	return v, nil
}

// replay brings the base up to the end of the log.
func (v *Volume) replay(ckpt uint64) error {
	last := v.log.LastLSN()
	segs := v.log.Segments()
	switch {
	case ckpt > last:
		return fmt.Errorf("%w: checkpoint %d is past the log's end %d", ErrCorrupt, ckpt, last)
	case segs[0].First > ckpt+1:
		return fmt.Errorf("%w: the log starts at LSN %d but the base holds only up to %d", ErrCorrupt, segs[0].First, ckpt)
	}
	v.ckpt, v.applied = ckpt, ckpt
	if ckpt == last {
		return nil
	}
	err := v.log.Scan(ckpt+1, func(r hrl.Record) error {
		return applyRecord(v.base, r)
	})
	if err != nil {
		return fmt.Errorf("tracked: replaying the change log: %w", err)
	}
	if err := v.base.Sync(); err != nil {
		return fmt.Errorf("tracked: %w", err)
	}
	if err := v.writeCheckpoint(last); err != nil {
		return err
	}
	v.ckpt, v.applied = last, last
	return nil
}

// applyRecord writes one log record to a device.
func applyRecord(d blockdev.Device, r hrl.Record) error {
	switch r.Type {
	case hrl.TypeWrite:
		_, err := d.WriteAt(r.Payload, int64(r.Offset))
		return err
	case hrl.TypeTrim:
		return blockdev.Trim(d, int64(r.Offset), int64(r.Span))
	case hrl.TypeZero:
		return blockdev.WriteZeroes(d, int64(r.Offset), int64(r.Span), r.Flags&hrl.FlagNoHole != 0)
	}
	return nil
}

// Base returns the base image. While merging is paused it is exactly the
// disk at the checkpoint PauseMerge returned: what an initial copy sends.
func (v *Volume) Base() blockdev.Device { return v.base }

// Log returns the volume's change log, for shippers and tools.
func (v *Volume) Log() *hrl.Log { return v.log }

// Size returns the disk size.
func (v *Volume) Size() int64 { return v.base.Size() }

// ReadAt reads the disk as of every acknowledged write.
//
// The index is consulted, and the log read, under the volume's read lock;
// the base is read after it is released. A base read may wait on the disk
// for milliseconds, and a writer waiting for the lock holds every later
// reader back (sync.RWMutex), so holding it there serialized reads and
// writes on a disk whose pages are not cached (issue 20: 70/30 at 0.6×
// nbdkit). Reading the base unlocked is safe: a range the index does not
// cover is not the merge's to write, and the base changes there only once
// a write submitted after this read began has been merged, which is a
// write concurrent with this read (either data may be returned). Log
// reads stay under the lock: a merged segment may be dropped and its
// file reused.
func (v *Volume) ReadAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(v.Size(), off, int64(len(p))); err != nil {
		return 0, err
	}
	v.lastRead.Store(time.Now().UnixNano())
	var spans [8]span
	r := baseReads{spans: spans[:0]}
	v.mu.RLock()
	if v.closed {
		v.mu.RUnlock()
		return 0, ErrClosed
	}
	err := v.readLayer(p, off, v.active, v.frozen, &r)
	v.mu.RUnlock()
	if err != nil {
		return 0, err
	}
	for _, s := range r.spans {
		if _, err := v.base.ReadAt(p[s.off-off:s.off-off+s.n], s.off); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// span is a range of the disk.
type span struct{ off, n int64 }

// baseReads gathers the ranges a read finds in neither index, adjacent
// ones joined, to be read from the base once the lock is released.
type baseReads struct {
	spans []span
}

func (r *baseReads) add(off, n int64) {
	if k := len(r.spans) - 1; k >= 0 && r.spans[k].off+r.spans[k].n == off {
		r.spans[k].n += n
		return
	}
	r.spans = append(r.spans, span{off, n})
}

func (v *Volume) readLayer(p []byte, off int64, x, next *index, r *baseReads) error {
	if x == nil {
		r.add(off, int64(len(p)))
		return nil
	}
	return x.walk(off, int64(len(p)), func(o, n int64, e *extent) error {
		buf := p[o-off : o-off+n]
		switch {
		case e == nil:
			return v.readLayer(buf, o, next, nil, r)
		case e.seg == nil:
			clear(buf)
			return nil
		default:
			return v.log.ReadAt(buf, e.seg, e.foff, e.lsn)
		}
	})
}

// WriteAt writes p at off; it returns once the write is in the log.
//
// The caller waits, so it writes the log itself when no other goroutine
// is writing it (hrl.Log.WriteNow): no hand-off to the log's writer.
func (v *Volume) WriteAt(p []byte, off int64) (int, error) {
	pend, err := v.SubmitNow(p, off)
	if err != nil {
		return 0, err
	}
	if err := pend.Wait(); err != nil {
		return 0, fmt.Errorf("tracked: %w", err)
	}
	return len(p), nil
}

// Submit logs p at off and returns without waiting for its records to be
// written (blockdev.Submitter): the write is ordered and indexed, and
// completes when its last batch is written. Batches are written in order
// and a log error fails every later batch, so the last one answers for
// them all.
func (v *Volume) Submit(p []byte, off int64) (blockdev.Pending, error) {
	return v.write(p, off, false)
}

// SubmitNow is Submit for a caller that waits for the write at once
// (blockdev.NowSubmitter): each record's batch is written in the calling
// goroutine when the log's writer is free (hrl.Log.WriteNow), so the
// write usually has completed when it returns.
func (v *Volume) SubmitNow(p []byte, off int64) (blockdev.Pending, error) {
	return v.write(p, off, true)
}

// write is Submit; with now, the caller writes each record's batch itself
// when the log's writer is free.
func (v *Volume) write(p []byte, off int64, now bool) (blockdev.Pending, error) {
	if err := blockdev.CheckRange(v.Size(), off, int64(len(p))); err != nil {
		return nil, err
	}
	var last blockdev.Pending = completed{}
	for done := 0; done < len(p); {
		c := min(len(p)-done, hrl.MaxPayload)
		e := hrl.Entry{Type: hrl.TypeWrite, Offset: uint64(off) + uint64(done), Payload: p[done : done+c]}
		b, err := v.submit(&e, now)
		if err != nil {
			// The chunks already queued may still read p: the caller may
			// reuse it once this returns.
			last.Wait()
			return nil, err
		}
		last = b
		done += c
	}
	return last, nil
}

// completed is a write with nothing left to wait for.
type completed struct{}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (completed) Wait() error           { return nil }
func (completed) Done() <-chan struct{} { return closedChan }

// WriteAtSync writes p at off durably (FUA).
func (v *Volume) WriteAtSync(p []byte, off int64) (int, error) {
	n, err := v.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	return n, v.Sync()
}

// Trim discards a range; it reads back as zeros.
func (v *Volume) Trim(off, n int64) error { return v.zero(hrl.TypeTrim, 0, off, n) }

// WriteZeroes zeroes a range.
func (v *Volume) WriteZeroes(off, n int64, noHole bool) error {
	var flags uint8
	if noHole {
		flags = hrl.FlagNoHole
	}
	return v.zero(hrl.TypeZero, flags, off, n)
}

func (v *Volume) zero(t hrl.Type, flags uint8, off, n int64) error {
	if n == 0 {
		return blockdev.ErrEmpty
	}
	if err := blockdev.CheckRange(v.Size(), off, n); err != nil {
		return err
	}
	for n > 0 {
		c := min(n, 1<<30)
		e := hrl.Entry{Type: t, Flags: flags, Offset: uint64(off), Span: uint32(c)}
		if err := v.append(&e); err != nil {
			return err
		}
		off += c
		n -= c
	}
	return nil
}

// append logs one record, indexes it, and waits for it to be written.
func (v *Volume) append(e *hrl.Entry) error {
	b, err := v.submit(e, true)
	if err != nil {
		return err
	}
	if err := b.Wait(); err != nil {
		return fmt.Errorf("tracked: %w", err)
	}
	return nil
}

// submit logs one record and indexes it; the batch says when it is
// written.
func (v *Volume) submit(e *hrl.Entry, now bool) (*hrl.Batch, error) {
	e.Prepare()
	n := int64(len(e.Payload))
	if e.Type != hrl.TypeWrite {
		n = int64(e.Span)
	}
	v.mu.Lock()
	for !v.closed && v.paused == 0 &&
		(v.active.bytes >= 2*v.opts.MergeAfter || v.active.extents >= 2*v.opts.MaxExtents) {
		// Backpressure: the merge is behind. It was woken at the first
		// bound; a finished merge broadcasts.
		v.wakeMerger()
		v.merged.Wait()
	}
	if v.closed {
		v.mu.Unlock()
		return nil, ErrClosed
	}
	if v.fenced != nil {
		v.mu.Unlock()
		return nil, v.fenced
	}
	pos, b, err := v.log.AppendQuiet(*e) // the log is woken below, past the lock
	if err != nil {
		v.mu.Unlock()
		return nil, fmt.Errorf("tracked: %w", err)
	}
	if e.Type == hrl.TypeWrite {
		v.active.insert(int64(e.Offset), n, pos.Seg, pos.Off, pos.LSN)
	} else {
		v.active.insert(int64(e.Offset), n, nil, 0, pos.LSN)
	}
	v.unrel += hrl.RecHeaderSize + int64(len(e.Payload))
	if v.dirty != nil {
		v.markDirty(int64(e.Offset), n)
	}
	overflow := v.dirty == nil && v.opts.Retain && v.unrel > v.opts.OverflowBytes
	backlog := v.active.bytes >= v.opts.MergeAfter || v.active.extents >= v.opts.MaxExtents
	if overflow {
		v.startOverflowLocked()
	}
	v.mu.Unlock()
	if now {
		v.log.WriteNow()
	} else {
		v.log.Wake()
	}
	v.lastWrite.Store(time.Now().UnixNano())
	if backlog || overflow {
		v.wakeMerger()
	}
	return b, nil
}

// Sync makes every acknowledged write durable: one fsync of the log.
func (v *Volume) Sync() error {
	if err := v.log.Sync(); err != nil {
		return fmt.Errorf("tracked: %w", err)
	}
	v.mu.RLock()
	resync := v.dirty != nil
	v.mu.RUnlock()
	if resync {
		return v.writeDirty()
	}
	return nil
}

// Fence makes the volume refuse every later write, trim and zero with an
// error wrapping ErrFenced, blockdev.ErrReadOnly and reason: another copy
// of the disk took over (a failover), and two writable copies must never
// both go on. Writes ordered before the fence complete, so a later Sync
// makes durable only what was acknowledged before; reads keep working.
// A second Fence keeps the first reason.
func (v *Volume) Fence(reason error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.fenced == nil {
		v.fenced = fmt.Errorf("%w (%w): %w", ErrFenced, blockdev.ErrReadOnly, reason)
	}
}

// Unfence lets the volume take writes again: a planned failover that
// did not hand the disk over (the replica refused, or the operator
// aborted before it was asked) gives the disk back to its clients.
func (v *Volume) Unfence() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.fenced = nil
}

// Fenced returns the error writes are refused with since Fence, or nil.
func (v *Volume) Fenced() error {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.fenced
}

// Hold stops the volume's writes from being ordered until release is
// called: the barrier of a crash-consistent point. Writes already ordered
// keep completing. Keep the hold short.
func (v *Volume) Hold() (release func()) {
	v.mu.Lock()
	return v.mu.Unlock
}

// AppendMarkerHeld appends a marker while the caller holds the volume
// (Hold). It returns the batch to wait on.
func (v *Volume) AppendMarkerHeld(m hrl.Marker) (uint64, *hrl.Batch, error) {
	payload, err := m.Encode()
	if err != nil {
		return 0, nil, err
	}
	pos, b, err := v.log.Append(hrl.Entry{Type: hrl.TypeMarker, Payload: payload})
	return pos.LSN, b, err
}

// PauseMerge stops merging (waiting for a merge under way) and returns
// the checkpoint: the base stays exactly the disk at that LSN until
// ResumeMerge. Pauses nest.
func (v *Volume) PauseMerge() uint64 {
	v.mu.Lock()
	v.paused++
	v.mu.Unlock()
	v.mergeMu.Lock()
	defer v.mergeMu.Unlock()
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.applied
}

// ResumeMerge undoes one PauseMerge.
func (v *Volume) ResumeMerge() {
	v.mu.Lock()
	if v.paused > 0 {
		v.paused--
	}
	v.merged.Broadcast()
	v.mu.Unlock()
	v.wakeMerger()
}

// StartRetaining makes a volume opened without Retain keep its log from
// its checkpoint on, until Release: replication enabled on a running
// disk (its initial copy reads the base; the log after it ships).
// Idempotent.
func (v *Volume) StartRetaining() {
	v.mu.Lock()
	if !v.opts.Retain {
		v.opts.Retain = true
		v.released = v.ckpt
	}
	v.mu.Unlock()
	v.recountUnreleased()
}

// Release tells the volume its consumer no longer needs records up to lsn:
// merged segments up to there may be deleted.
func (v *Volume) Release(lsn uint64) error {
	v.mu.Lock()
	if lsn > v.released {
		v.released = lsn
	}
	through := v.dropThroughLocked()
	v.mu.Unlock()
	if err := v.log.DropThrough(through); err != nil {
		return fmt.Errorf("tracked: %w", err)
	}
	v.recountUnreleased()
	return nil
}

// KeepFrom keeps the log's records from lsn on, whatever the consumer
// releases, until KeepFrom(0): a seed exported at lsn-1 is shipped from
// lsn once it is imported, by a consumer that may have released more
// before. It does not bring back records already dropped.
func (v *Volume) KeepFrom(lsn uint64) {
	v.mu.Lock()
	v.keepFrom = lsn
	v.mu.Unlock()
}

// dropThroughLocked is the LSN through which log segments may go: merged
// into a durable base, released, and not kept. Called with mu held.
func (v *Volume) dropThroughLocked() uint64 {
	through := min(v.released, v.ckpt)
	if v.keepFrom > 0 {
		through = min(through, v.keepFrom-1)
	}
	return through
}

// recountUnreleased sets unrel to the log bytes after the released LSN.
// A segment released in part counts in proportion to its unreleased
// records: counting it whole made a caught-up replica look a whole
// segment (64 MiB, the default overflow bound of small disks) behind.
func (v *Volume) recountUnreleased() {
	v.mu.Lock()
	defer v.mu.Unlock()
	var n int64
	for _, s := range v.log.Segments() {
		switch {
		case s.Last <= v.released:
		case s.First > v.released:
			n += s.Size
		default:
			n += int64(float64(s.Size) * float64(s.Last-v.released) / float64(s.Last-s.First+1))
		}
	}
	v.unrel = n
}

// Checkpoint returns the LSN merged into the base.
func (v *Volume) Checkpoint() uint64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.ckpt
}

// Merge merges every record appended so far into the base now and makes
// it durable there (a checkpoint).
func (v *Volume) Merge() error {
	v.mergeWanted.Add(1) // a merge stepping aside for readers goes on
	v.mergeMu.Lock()
	v.mergeWanted.Add(-1)
	defer v.mergeMu.Unlock()
	if err := v.mergeLocked(false); err != nil {
		return err
	}
	return v.checkpointLocked(true)
}

// checkpointEvery bounds the time a merged record waits for the
// checkpoint that lets its log segment go.
const checkpointEvery = 30 * time.Second

// checkpointLocked makes what merges wrote to the base durable, publishes
// the checkpoint and drops the log segments no one needs any more. Unless
// forced (Merge, Close) it waits until twice MergeAfter has been merged
// since the last checkpoint or checkpointEvery has passed: a merge then
// costs no base fsync, and the kernel writes the base back at its own
// pace meanwhile. After a failure it tries again at the next call, and
// its success clears the error Err reports.
// After a crash, replay from the older checkpoint rewrites what a merge
// had put in the base: replay is idempotent. Called with mergeMu held.
func (v *Volume) checkpointLocked(force bool) error {
	v.mu.RLock()
	applied, ckpt, unckpt, at := v.applied, v.ckpt, v.unckpt, v.ckptAt
	v.mu.RUnlock()
	failed := v.ckptErr.get() != nil
	due := applied != ckpt && (force || failed || unckpt >= 2*v.opts.MergeAfter || time.Since(at) >= checkpointEvery)
	if !due && !failed {
		return nil
	}
	if due {
		if err := v.base.Sync(); err != nil {
			err = fmt.Errorf("tracked: checkpoint: %w", err)
			v.ckptErr.set(err)
			return err
		}
		if err := v.writeCheckpoint(applied); err != nil {
			v.ckptErr.set(err)
			return err
		}
		v.mu.Lock()
		v.ckpt, v.ckptAt = applied, time.Now()
		v.unckpt = 0
		v.mu.Unlock()
	}
	// Also when only the drop after the last checkpoint failed.
	v.mu.RLock()
	through := v.dropThroughLocked()
	v.mu.RUnlock()
	if err := v.log.DropThrough(through); err != nil {
		err = fmt.Errorf("tracked: dropping merged log segments: %w", err)
		v.ckptErr.set(err)
		return err
	}
	v.ckptErr.set(nil)
	return nil
}

// mergeLocked merges the active index into the base. A background merge
// (yield) steps aside while the disk is only being read.
func (v *Volume) mergeLocked(yield bool) error {
	v.mu.Lock()
	if v.paused > 0 {
		v.mu.Unlock()
		return nil
	}
	if v.active.extents == 0 {
		v.mu.Unlock()
		return nil
	}
	frozen := v.active
	v.frozen, v.active = frozen, newIndex()
	through := v.log.LastLSN()
	v.mu.Unlock()

	err := v.copyToBase(frozen, yield)
	v.mu.Lock()
	if err == nil {
		v.applied = through
		v.unckpt += frozen.bytes
		v.frozen = nil // the base now holds it all (not yet durably)
	} else {
		// Put the frozen extents back under the new ones so nothing is lost.
		for _, k := range frozen.sortedBuckets() {
			for _, e := range frozen.buckets[k] {
				v.reinsertUnder(e)
			}
		}
		v.frozen = nil
	}
	v.merged.Broadcast()
	v.mu.Unlock()
	v.mergeErr.set(err)
	return err
}

// reinsertUnder puts an older extent back into the active index only
// where nothing newer covers it. Called with mu held.
func (v *Volume) reinsertUnder(e extent) {
	var gaps []extent
	v.active.walk(e.off, int64(e.n), func(o, n int64, cur *extent) error {
		if cur == nil {
			g := e
			g.off, g.n = o, int32(n)
			if g.seg != nil {
				g.foff = e.foff + (o - e.off)
			}
			gaps = append(gaps, g)
		}
		return nil
	})
	for _, g := range gaps {
		v.active.insert(g.off, int64(g.n), g.seg, g.foff, g.lsn)
	}
}

// mergeWindow is how much log a merge reads at once.
const mergeWindow = 4 << 20

// copyToBase writes frozen extents into the base, not durably: see
// checkpointLocked. With yield, it steps aside between windows of the
// log while the disk is only being read (yieldToReaders).
func (v *Volume) copyToBase(frozen *index, yield bool) error {
	// Only durable records may reach the base.
	if err := v.log.Sync(); err != nil {
		return fmt.Errorf("tracked: merge: %w", err)
	}
	if vw, ok := v.base.(vectorWriter); ok {
		if done, err := v.copyMapped(frozen, vw, yield); done {
			return err
		}
	}
	// Trims go first; writes go in log order, read through a window of
	// the log: one read per mergeWindow of log instead of one per extent
	// (random 4 KiB writes leave a quarter of a million extents per GiB).
	// Extents never overlap, so the order of their writes is free.
	bySeg := map[*hrl.Segment][]extent{}
	for _, k := range frozen.sortedBuckets() {
		for _, e := range frozen.buckets[k] {
			if e.seg != nil {
				bySeg[e.seg] = append(bySeg[e.seg], e)
			} else if err := blockdev.Trim(v.base, e.off, int64(e.n)); err != nil {
				return fmt.Errorf("tracked: merge: %w", err)
			}
		}
	}
	buf := make([]byte, mergeWindow)
	for _, seg := range slices.SortedFunc(maps.Keys(bySeg), func(a, b *hrl.Segment) int { return cmp.Compare(a.First(), b.First()) }) {
		exts := bySeg[seg]
		slices.SortFunc(exts, func(a, b extent) int { return cmp.Compare(a.foff, b.foff) })
		var wstart, wend int64 // the window of seg in buf
		for _, e := range exts {
			if e.foff < wstart || e.foff+int64(e.n) > wend {
				if yield {
					v.yieldToReaders()
				}
				n, err := v.log.ReadSpan(buf, seg, e.foff)
				if err != nil {
					return fmt.Errorf("tracked: merge: %w", err)
				}
				if n < int(e.n) {
					return fmt.Errorf("tracked: merge: record at %d of a log segment runs past its written end", e.foff)
				}
				wstart, wend = e.foff, e.foff+int64(n)
			}
			if _, err := v.base.WriteAt(buf[e.foff-wstart:e.foff-wstart+int64(e.n)], e.off); err != nil {
				return fmt.Errorf("tracked: merge: %w", err)
			}
		}
	}
	return nil
}

// vectorWriter is a base that can gather-write (pwritev).
type vectorWriter interface {
	WritevAt(bufs [][]byte, off int64) (int, error)
}

// mergeRun bounds the bytes one pwritev of a merge writes.
const mergeRun = 8 << 20

// copyMapped is copyToBase over the log's segments mapped into memory:
// the extents go in disk order, each run of adjacent ones in one pwritev
// straight from the log's pages (no copy into a buffer first, and a
// sequential burst split into 1 MiB index buckets is written whole). It
// returns false, having written nothing, when the log's files cannot be
// mapped; copyToBase then reads the log through a window.
func (v *Volume) copyMapped(frozen *index, base vectorWriter, yield bool) (bool, error) {
	// The span of each segment the extents read, mapped once.
	type span struct {
		from, to int64
		m        []byte // the mapping; from%hrl.PageSize into it is from
	}
	spans := map[*hrl.Segment]*span{}
	defer func() {
		for _, sp := range spans {
			if sp.m != nil {
				vfs.Unmap(sp.m)
			}
		}
	}()
	keys := frozen.sortedBuckets()
	for _, k := range keys {
		for _, e := range frozen.buckets[k] {
			if e.seg == nil {
				continue
			}
			if sp := spans[e.seg]; sp == nil {
				spans[e.seg] = &span{from: e.foff, to: e.foff + int64(e.n)}
			} else {
				sp.from, sp.to = min(sp.from, e.foff), max(sp.to, e.foff+int64(e.n))
			}
		}
	}
	for seg, sp := range spans {
		m, err := v.log.MapSegment(seg, sp.from, sp.to)
		if err != nil {
			return false, nil // the window path reports real errors
		}
		sp.m = m
	}
	var (
		iov      [][]byte
		runOff   int64 // disk offset of the run in iov
		runBytes int64
		since    int64 // bytes written since the last look at readers
	)
	flush := func() error {
		if len(iov) == 0 {
			return nil
		}
		if _, err := base.WritevAt(iov, runOff); err != nil {
			return fmt.Errorf("tracked: merge: %w", err)
		}
		since += runBytes
		iov, runBytes = iov[:0], 0
		if yield && since >= mergeWindow {
			v.yieldToReaders()
			since = 0
		}
		return nil
	}
	for _, k := range keys {
		for _, e := range frozen.buckets[k] {
			if e.seg == nil {
				if err := flush(); err != nil {
					return true, err
				}
				if err := blockdev.Trim(v.base, e.off, int64(e.n)); err != nil {
					return true, fmt.Errorf("tracked: merge: %w", err)
				}
				continue
			}
			sp := spans[e.seg]
			at := e.foff - sp.from/hrl.PageSize*hrl.PageSize
			if len(iov) > 0 && (e.off != runOff+runBytes || len(iov) == vfs.IOVMax || runBytes >= mergeRun) {
				if err := flush(); err != nil {
					return true, err
				}
			}
			if len(iov) == 0 {
				runOff = e.off
			}
			iov = append(iov, sp.m[at:at+int64(e.n)])
			runBytes += int64(e.n)
		}
	}
	if err := flush(); err != nil {
		return true, err
	}
	if h := testHookMapped; h != nil {
		h()
	}
	return true, nil
}

// readerGap is how recent the last read must be, and how old the last
// write, for the disk to count as only being read; a yielding merge looks
// again after as long.
const readerGap = 5 * time.Millisecond

// onlyReading reports whether the disk is being read and not written.
func (v *Volume) onlyReading() bool {
	now := time.Now().UnixNano()
	return now-v.lastRead.Load() < int64(readerGap) && now-v.lastWrite.Load() >= int64(readerGap)
}

// testHookMapped, if set, runs when a merge wrote through mapped segments.
var testHookMapped func()

// testHookYield, if set, runs each time a merge steps aside for readers.
var testHookYield func()

// yieldToReaders holds a background merge back while the disk is only
// being read. Reads add nothing to the backlog, so a merge can wait for
// them at the cost of log space alone; run beside them, it takes the CPU
// and the page cache the readers need (with two cores, one of them the
// client's, reads right after a burst of writes ran at a third of their
// rate while the burst merged). It goes on at the first write, once the
// writes since the merge began pass the first bound (writers are held
// back at the second and must never wait for readers), when merging is
// paused (PauseMerge waits for this merge), when Merge is called and
// when the volume closes.
func (v *Volume) yieldToReaders() {
	var t *time.Timer
	for v.onlyReading() {
		v.mu.RLock()
		stop := v.paused > 0 || v.closed || v.mergeWanted.Load() > 0 || v.active.bytes >= v.opts.MergeAfter || v.active.extents >= v.opts.MaxExtents
		v.mu.RUnlock()
		if stop {
			return
		}
		if h := testHookYield; h != nil {
			h()
		}
		if t == nil {
			t = time.NewTimer(readerGap)
			defer t.Stop()
		} else {
			t.Reset(readerGap)
		}
		select {
		case <-v.quit:
			return
		case <-t.C:
		}
	}
}

func (v *Volume) wakeMerger() {
	select {
	case v.kick <- struct{}{}:
	default:
	}
}

// merger runs merges on backlog, on idle, and for log overflow.
func (v *Volume) merger() {
	defer v.wg.Done()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-v.quit:
			return
		case <-v.kick:
		case <-tick.C:
		}
		v.mu.RLock()
		n, bytes, ext, paused := v.active.extents, v.active.bytes, v.active.extents, v.paused
		overflowPending := v.dirty != nil && v.released != ^uint64(0) && v.opts.Retain
		v.mu.RUnlock()
		if overflowPending {
			err := v.finishOverflow()
			v.overflowErr.set(err)
			if err == nil {
				v.Merge() // its errors are kept for Err
			}
		}
		lastIO := max(v.lastRead.Load(), v.lastWrite.Load())
		idle := v.opts.MergeIdle > 0 && time.Since(time.Unix(0, lastIO)) >= v.opts.MergeIdle
		if paused > 0 {
			continue
		}
		v.mergeMu.Lock()
		// Errors are kept for Err by the calls themselves, and cleared by
		// their next success.
		if n > 0 && (idle || bytes >= v.opts.MergeAfter || ext >= v.opts.MaxExtents) {
			v.mergeLocked(true)
		}
		// Due by size or by time, not on idle: a checkpoint after a burst
		// of random writes fsyncs that many scattered pages, and the
		// reads that often follow a burst should not pay for it; nor
		// while the disk is only read (the log does not grow meanwhile).
		if !v.onlyReading() {
			v.checkpointLocked(false)
		}
		v.mergeMu.Unlock()
	}
}

// Err returns the error of the background work (merge, checkpoint, log
// overflow) that last failed and has not succeeded since, if any.
func (v *Volume) Err() error {
	for _, b := range []*bgErr{&v.mergeErr, &v.ckptErr, &v.overflowErr} {
		if err := b.get(); err != nil {
			return err
		}
	}
	return nil
}

// Close stops the merger, merges what is left, syncs and closes the log.
// It is idempotent and safe to call concurrently: a later call waits for
// the first and returns its error. The base device is the caller's to
// close.
func (v *Volume) Close() error {
	v.closeOnce.Do(func() { v.closeErr = v.close() })
	return v.closeErr
}

func (v *Volume) close() error {
	close(v.quit)
	v.wg.Wait()
	err := v.Sync()
	if merr := v.Merge(); err == nil {
		err = merr
	}
	v.mu.Lock()
	v.closed = true
	v.merged.Broadcast()
	v.mu.Unlock()
	if cerr := v.log.Close(); err == nil {
		err = cerr
	}
	return err
}

const (
	ckptMagic = "VREPCKPT"
)

func (v *Volume) readCheckpoint() (uint64, error) {
	body, err := statefile.Read(v.fs, filepath.Join(v.dir, "checkpoint"), ckptMagic, 14)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if errors.Is(err, statefile.ErrBad) {
		return 0, fmt.Errorf("%w: bad checkpoint file", ErrCorrupt)
	}
	if err != nil {
		return 0, fmt.Errorf("tracked: %w", err)
	}
	return binary.LittleEndian.Uint64(body[6:]), nil
}

func (v *Volume) writeCheckpoint(lsn uint64) error {
	body := binary.LittleEndian.AppendUint64(make([]byte, 6, 14), lsn)
	if err := statefile.Write(v.fs, filepath.Join(v.dir, "checkpoint"), ckptMagic, body); err != nil {
		return fmt.Errorf("tracked: writing checkpoint: %w", err)
	}
	return nil
}
