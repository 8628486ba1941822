package hrl

import (
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/vrep-io/vrep/internal/vfs"
)

// DefaultSegmentSize is the size past which a segment is sealed.
const DefaultSegmentSize = 64 << 20

// Options tune a log. The zero value is usable.
type Options struct {
	// SegmentSize seals a segment once it holds this many bytes.
	SegmentSize int64
	// FirstLSN is where a log with no surviving records starts (default 1):
	// its owner may have merged records away before a crash cut the rest.
	FirstLSN uint64
	// Recycle keeps up to this many dropped segment files for reuse as new
	// segments (default 0: dropped files are removed). Writing over a
	// file's cached pages costs a fraction of filling a new file (page and
	// block allocation); see the package documentation for how stale
	// records left in a reused file are told apart. With Recycle set, a
	// flush-bound log that has no dropped file to reuse prepares a spare
	// instead: a segment file filled with zeros ahead of need; a new log
	// writes its first records over 8 MiB of zeros (a segment at most).
	Recycle int
	// FlushBound is how many small syncs in a row within a segment make
	// the log flush-bound, and worth a spare (default 16; see the package
	// documentation).
	FlushBound int
}

// Segment is one segment file of a log.
type Segment struct {
	first    uint64
	name     string
	file     vfs.File     // set before the first batch for it is reported written
	reused   bool         // the file was recycled: stale bytes may follow wsize
	reserved bool         // blocks past the end were reserved for appends
	zeroed   int64        // a reused file's known written blocks, whole pages: below it, writes overwrite them
	last     uint64       // last LSN appended to it; guarded by Log.mu
	size     int64        // bytes appended, queued included; guarded by Log.mu
	wsize    atomic.Int64 // bytes written to the file
}

// First is the LSN of the segment's first record.
func (s *Segment) First() uint64 { return s.first }

// Batch is a group commit: the records appended while the log's writer
// was busy, written with one call.
type Batch struct {
	done chan struct{}
	err  error
}

// Wait returns once the batch is written to the segment file (not yet
// durable: see Log.Sync), with the write's error.
func (b *Batch) Wait() error {
	<-b.done
	return b.err
}

// Done is closed once the batch is written; Wait then returns at once.
func (b *Batch) Done() <-chan struct{} { return b.done }

// Pos is where an appended record lives.
type Pos struct {
	LSN uint64
	Seg *Segment
	Off int64 // file offset of the payload
}

// Log is the change log of one disk. Append, Sync, Seal, ReadAt and Scan
// are safe for concurrent use. Every file write is made by the holder of
// the writer's token: the log's writer goroutine, which groups concurrent
// appends into one write, or, while it is free, a caller with nothing to
// do but wait for its own record or sync (WriteNow, Sync).
type Log struct {
	fs   vfs.FS
	dir  string
	opts Options

	mu      sync.Mutex
	segs    []*Segment // oldest first; the last is the active one
	next    uint64     // LSN of the next record
	cur     *pending   // the batch accepting appends
	queue   []*pending // batches closed by a roll, not yet taken
	waiters []syncWaiter
	syncing bool // a sync job is with the syncer goroutine
	drops   []dropReq
	err     error // sticky: once the log failed a write, it fails every call
	closed  bool
	wcond   sync.Cond // signalled when written advances or err is set

	written atomic.Uint64 // every record up to here is in its file
	synced  atomic.Uint64 // every record up to here is durable

	// wmu is the writer's token: whoever holds it writes batches and owns
	// wseg, unsynced and dirDirty. The writer goroutine takes it for each
	// round; a caller about to wait for its own batch or sync takes it
	// when free (WriteNow, Sync) and does the work itself.
	wmu       sync.Mutex
	wseg      *Segment                // the segment being written to; wmu's
	unsynced  []*Segment              // segments before wseg not yet fsynced; wmu's
	dirDirty  bool                    // a segment was created since the last directory sync; wmu's
	wsegPub   atomic.Pointer[Segment] // wseg, published for DropThrough
	freeMu    sync.Mutex              // guards free: the writer takes and adds files, the preparer adds spares
	free      []freeFile              // dropped files and spares kept for reuse
	spareOff  bool                    // preparing a spare failed: no more tries; the preparer's own (recover's before it starts)
	spareKick chan struct{}           // asks the preparer for a spare
	// The syncer's count of small syncs in the active segment (noteSync).
	syncSeg    *Segment
	syncOff    int64
	smallSyncs int
	flushBound atomic.Bool // the log is synced often with little in between: spares pay
	kick       chan struct{}
	quit       chan struct{}
	jobs       chan syncJob  // writer → syncer
	hints      chan hint     // writer → flusher: start writeback of written bytes
	syncAsks   atomic.Uint64 // Sync calls with something to sync
	hintAsks   uint64        // syncAsks at the last hint (wmu)
	hintMu     sync.Mutex    // held by the flusher on a file and by drop closing one
	wg         sync.WaitGroup
	pool       sync.Pool
	torn       *Torn // what recovery cut

	closeOnce sync.Once
	closeErr  error
}

// Open opens (creating if needed) the log in dir, recovering it: a torn
// tail is cut; damage is a *CorruptionError.
func Open(fs vfs.FS, dir string, opts Options) (*Log, error) {
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = DefaultSegmentSize
	}
	if err := fs.MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("hrl: %w", err)
	}
	l := &Log{fs: fs, dir: dir, opts: opts, kick: make(chan struct{}, 1), quit: make(chan struct{}),
		spareKick: make(chan struct{}, 1)}
	l.wcond.L = &l.mu
	if err := l.recover(); err != nil {
		l.closeFiles()
		return nil, err
	}
	l.wseg = l.segs[len(l.segs)-1]
	l.wsegPub.Store(l.wseg)
	l.written.Store(l.next - 1)
	l.synced.Store(l.next - 1)
	l.jobs = make(chan syncJob, 1)
	l.hints = make(chan hint, 64)
	l.wg.Add(4)
	go l.run()
	go l.syncer()
	go l.flusher()
	go l.preparer()
	return l, nil
}

func (l *Log) path(name string) string { return filepath.Join(l.dir, name) }

// closeFiles closes every file of a log that failed to open.
func (l *Log) closeFiles() {
	for _, s := range l.segs {
		if s.file != nil {
			s.file.Close()
		}
	}
	for _, f := range l.free {
		f.file.Close()
	}
}

// Entry is what a caller appends.
type Entry struct {
	Type    Type
	Flags   uint8
	Offset  uint64
	Span    uint32 // for trim and zero; a write's span is its length
	Payload []byte

	crc      uint32
	prepared bool
}

// Prepare checksums the payload, so that a caller holding its own lock
// around Append does not checksum under it.
func (e *Entry) Prepare() {
	e.crc = crc32.Checksum(e.Payload, castagnoli)
	e.prepared = true
}

// Append queues a record and returns its position and the batch that will
// write it. It does not wait: the caller orders its own work (an index
// update) against the LSN, then waits on the batch. The payload is copied.
func (l *Log) Append(e Entry) (Pos, *Batch, error) {
	pos, b, err := l.AppendQuiet(e)
	if err == nil {
		l.wake()
	}
	return pos, b, err
}

// AppendQuiet is Append without waking the writer goroutine: the caller
// must call Wake or WriteNow next, once it holds none of its own locks.
// Until then the record may sit unwritten.
func (l *Log) AppendQuiet(e Entry) (Pos, *Batch, error) {
	if len(e.Payload) > MaxPayload {
		return Pos{}, nil, fmt.Errorf("hrl: payload of %d bytes exceeds %d", len(e.Payload), MaxPayload)
	}
	span := e.Span
	if e.Type == TypeWrite {
		span = uint32(len(e.Payload))
	}
	// What a reader would take for corruption (checkRecord) is refused
	// here, before it could cut the log short there.
	switch {
	case e.Type == TypeWrite && span == 0:
		return Pos{}, nil, errors.New("hrl: a write of no bytes")
	case (e.Type == TypeTrim || e.Type == TypeZero) && (span == 0 || len(e.Payload) != 0):
		return Pos{}, nil, fmt.Errorf("hrl: a %v record needs a span and no payload", e.Type)
	}
	if !e.prepared {
		e.Prepare()
	}
	pc := e.crc
	l.mu.Lock()
	if err := l.errLocked(); err != nil {
		l.mu.Unlock()
		return Pos{}, nil, err
	}
	n := int64(RecHeaderSize + len(e.Payload))
	seg := l.segs[len(l.segs)-1]
	if seg.last >= seg.first && (seg.size+n > l.opts.SegmentSize || l.rollToSpareLocked(seg, n)) {
		seg = l.rollLocked()
	}
	lsn := l.next
	l.next++
	p := l.appendLocked(seg, n, pc, e.Type, e.Flags, span, lsn, e.Offset, e.Payload)
	pos := Pos{LSN: lsn, Seg: seg, Off: seg.size - int64(len(e.Payload))}
	seg.last = lsn
	b := p.b
	l.mu.Unlock()
	return pos, b, nil
}

// WriteNow writes the appended batches in the calling goroutine when no
// other goroutine is writing, and otherwise wakes the writer goroutine
// (whose round in progress may have missed them). A caller about to wait
// for its batch saves two goroutine switches: on this project's 2-vCPU
// host each is a wake-up of the other CPU, and at a queue depth of one
// they cost more than the write (see Sync).
func (l *Log) WriteNow() {
	if !l.wmu.TryLock() {
		l.wake()
		return
	}
	l.mu.Lock()
	q := l.takeLocked()
	more := !l.syncing && (len(l.waiters) > 0 || len(l.drops) > 0)
	l.mu.Unlock()
	for _, p := range q {
		l.write(p)
	}
	l.wmu.Unlock()
	if more {
		l.wake() // a sync or a drop to start: the writer goroutine's
	}
}

// Wake asks the writer goroutine to write what AppendQuiet queued.
func (l *Log) Wake() { l.wake() }

// takeLocked takes every batch appended so far, for writing.
func (l *Log) takeLocked() []*pending {
	if l.cur != nil {
		l.queue = append(l.queue, l.cur)
		l.cur = nil
	}
	q := l.queue
	l.queue = nil
	return q
}

func (l *Log) errLocked() error {
	if l.closed {
		return ErrClosed
	}
	return l.err
}

func (l *Log) wake() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// Sync makes every record appended before the call durable. Concurrent
// calls share one fsync.
//
// When no sync is under way and no goroutine is writing, the caller
// writes what is queued and fsyncs itself, instead of handing the work to
// the writer and syncer goroutines and waiting to be woken: at a queue
// depth of one (a write, then a flush) those wake-ups, each a wake-up of
// another CPU, cost more than the fsync (measured on this project's
// 2-vCPU host with fio over NBD, 4 KiB writes each followed by a flush:
// vrep at GOMAXPROCS=1, where every hand-off stays on one thread, did
// 5.3k a second against 3.7k with two).
func (l *Log) Sync() error {
	l.mu.Lock()
	if err := l.errLocked(); err != nil {
		l.mu.Unlock()
		return err
	}
	if l.next-1 <= l.synced.Load() {
		l.mu.Unlock()
		return nil
	}
	l.syncAsks.Add(1)
	ch := make(chan error, 1)
	l.waiters = append(l.waiters, syncWaiter{lsn: l.next - 1, ch: ch})
	inline := !l.syncing
	l.syncing = true // the next job is ours, or the running one's successor
	l.mu.Unlock()
	if inline {
		l.syncNow()
	} else {
		l.wake()
	}
	return <-ch
}

// syncNow runs the writer's round and the sync job it starts in the
// calling goroutine, which claimed the job (set syncing). It gives wmu
// back before the fsync, so that writes go on meanwhile.
func (l *Log) syncNow() {
	l.wmu.Lock()
	l.mu.Lock()
	q := l.takeLocked()
	l.mu.Unlock()
	for _, p := range q {
		l.write(p)
	}
	job := l.newJob()
	l.wmu.Unlock()
	l.finishJob(job, true)
}

// Seal closes the active segment to appends, makes it durable, and starts
// a new one. It returns the last LSN of the sealed segments. An empty
// active segment is left as it is.
func (l *Log) Seal() (uint64, error) {
	l.mu.Lock()
	if err := l.errLocked(); err != nil {
		l.mu.Unlock()
		return 0, err
	}
	seg := l.segs[len(l.segs)-1]
	if seg.last < seg.first {
		l.mu.Unlock()
		return seg.first - 1, nil
	}
	l.rollLocked()
	b := l.cur.b
	l.mu.Unlock()
	l.wake()
	if err := b.Wait(); err != nil {
		return 0, err
	}
	// Sealed means durable: the shipper may send it.
	return seg.last, l.Sync()
}

// LastLSN returns the LSN of the newest record appended.
func (l *Log) LastLSN() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.next - 1
}

// SyncedLSN returns the LSN up to which the log is durable.
func (l *Log) SyncedLSN() uint64 { return l.synced.Load() }

// waitWritten blocks until the record lsn is in its file.
func (l *Log) waitWritten(lsn uint64) error {
	if l.written.Load() >= lsn {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.written.Load() < lsn {
		if err := l.errLocked(); err != nil {
			return err
		}
		l.wcond.Wait()
	}
	return nil
}

// ReadAt reads payload bytes of the record at lsn, which lives in seg at
// file offset off, waiting for the record to be written if it is not yet.
func (l *Log) ReadAt(p []byte, seg *Segment, off int64, lsn uint64) error {
	if err := l.waitWritten(lsn); err != nil {
		return err
	}
	if _, err := seg.file.ReadAt(p, off); err != nil {
		return fmt.Errorf("hrl: reading %s: %w", seg.name, err)
	}
	return nil
}

// ReadSpan reads up to len(p) bytes of seg's file from off, stopping at
// the end of what is written; it returns how many it read. It does not
// wait: the caller reads only records it knows are written (a merge
// reading synced records in bulk).
func (l *Log) ReadSpan(p []byte, seg *Segment, off int64) (int, error) {
	n := min(int64(len(p)), seg.wsize.Load()-off)
	if n <= 0 {
		return 0, fmt.Errorf("hrl: reading %s at %d: past the written end", seg.name, off)
	}
	if _, err := seg.file.ReadAt(p[:n], off); err != nil {
		return 0, fmt.Errorf("hrl: reading %s: %w", seg.name, err)
	}
	return int(n), nil
}

// ErrNoMap is returned by MapSegment for a log on a file system that
// cannot map its files.
var ErrNoMap = errors.New("hrl: the log's files cannot be mapped")

// MapSegment maps bytes [from, to) of seg's file into memory, read-only
// (see vfs.Mapper), for the caller to hand to the kernel (a merge's
// pwritev); it returns the mapping, which starts at from rounded down to
// a page (the offset of from in it is from%PageSize), and is undone with
// vfs.Unmap. A mapping outlives the file's closing. It does not wait:
// the caller maps only records it knows are written. The bytes stay
// valid while the segment is in the log (a dropped segment's file may be
// reused and overwritten).
func (l *Log) MapSegment(seg *Segment, from, to int64) ([]byte, error) {
	m, ok := seg.file.(vfs.Mapper)
	if !ok {
		return nil, ErrNoMap
	}
	if from < 0 || from >= to || to > seg.wsize.Load() {
		return nil, fmt.Errorf("hrl: mapping [%d, %d) of %s: past its written end %d", from, to, seg.name, seg.wsize.Load())
	}
	start := from / PageSize * PageSize
	b, err := m.Map(start, to-start)
	if err != nil {
		return nil, fmt.Errorf("hrl: %w", err)
	}
	return b, nil
}

// PageSize is the granularity of MapSegment's mappings: the system's
// page size (a mapping starts on a page).
var PageSize = int64(os.Getpagesize())

// SegmentInfo describes a segment, for shippers and tools.
type SegmentInfo struct {
	Name        string
	First, Last uint64
	Size        int64 // bytes, queued records included
	Sealed      bool
}

// Segments lists the live segments, oldest first.
func (l *Log) Segments() []SegmentInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]SegmentInfo, len(l.segs))
	for i, s := range l.segs {
		out[i] = SegmentInfo{Name: s.name, First: s.first, Last: s.last, Size: s.size, Sealed: i < len(l.segs)-1}
	}
	return out
}

// DropThrough deletes the sealed segments whose records all have LSNs up
// to lsn and are durable. The caller guarantees nothing will read them
// again. The writer goroutine removes the files, as it owns every file.
func (l *Log) DropThrough(lsn uint64) error {
	l.mu.Lock()
	if err := l.errLocked(); err != nil {
		l.mu.Unlock()
		return err
	}
	var drop []*Segment
	w := l.wsegPub.Load()
	for len(l.segs) > 1 && l.segs[0] != w && l.segs[0].last <= min(lsn, l.synced.Load()) {
		drop = append(drop, l.segs[0])
		l.segs = l.segs[1:]
	}
	if len(drop) == 0 {
		l.mu.Unlock()
		return nil
	}
	req := dropReq{segs: drop, done: make(chan error, 1)}
	l.drops = append(l.drops, req)
	l.mu.Unlock()
	l.wake()
	return <-req.done
}

// Scan calls fn for every write, trim, zero and marker record with an LSN
// of at least from that is written, in LSN order. fn must not retain the
// record's payload. Scan stops at fn's first error and returns it. A bad
// record in written data is a *CorruptionError.
func (l *Log) Scan(from uint64, fn func(Record) error) error {
	_, err := l.ScanFrom(Cursor{}, from, fn)
	return err
}

// Cursor is where a ScanFrom stopped, so that the next one reads on from
// there instead of from its segment's start (a shipper that sends a log
// in many small batches would otherwise read each segment over and over).
// The zero Cursor is none.
type Cursor struct {
	seg  *Segment
	off  int64  // file offset of the next record in seg
	last uint64 // LSN of the record before off
}

// At returns where c stands: the first LSN of its segment (0: no cursor),
// the file offset of the next record, and the LSN of the record before
// it. The segment's bytes from off on are what follows that LSN there.
func (c Cursor) At() (first uint64, off int64, last uint64) {
	if c.seg == nil {
		return 0, 0, 0
	}
	return c.seg.first, c.off, c.last
}

// ScanFrom is Scan(from, fn), reading from c when c is in the segment
// that holds from and no later than from (a cursor an earlier ScanFrom
// returned; the bytes a segment has written never change while it is
// live), else from that segment's start. It returns where it stopped:
// at the record fn refused, or after the last record written.
func (l *Log) ScanFrom(c Cursor, from uint64, fn func(Record) error) (Cursor, error) {
	l.mu.Lock()
	segs := append([]*Segment(nil), l.segs...)
	l.mu.Unlock()
	var it recordIter
	var at Cursor
	for i, s := range segs {
		if i+1 < len(segs) && segs[i+1].first <= from {
			continue
		}
		// NB: the written size first: the writer sets a new segment's
		// file before it publishes the size, so a segment with a size has
		// its file (reading both the other way round is a race).
		size := s.wsize.Load()
		if size == 0 {
			continue // its file may not exist yet; nothing is written in it
		}
		if c.seg == s && c.last < from && c.off >= HeaderSize && c.off <= size {
			it.resetAt(s.file, c.off, c.last, size)
		} else {
			it.reset(s.file, s.first, size)
		}
		for {
			off, last := it.off, it.last
			r, ok := it.next()
			if !ok {
				break
			}
			if r.Type == TypeSync || r.LSN < from {
				continue
			}
			if err := fn(r); err != nil {
				return Cursor{seg: s, off: off, last: last}, err
			}
		}
		if it.err != nil {
			return Cursor{}, fmt.Errorf("hrl: scanning %s: %w", s.name, it.err)
		}
		if it.bad != nil {
			return Cursor{}, &CorruptionError{Segment: s.name, Offset: it.off, Reason: it.bad.Error()}
		}
		at = Cursor{seg: s, off: it.off, last: it.last}
	}
	return at, nil
}

// TornTail returns the torn tail Open cut from the log, or nil if it cut
// none.
func (l *Log) TornTail() *Torn { return l.torn }

// Close waits for queued records to be written, syncs, and closes the
// files. It is idempotent and safe to call concurrently: a later call
// waits for the first and returns its error.
func (l *Log) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.close() })
	return l.closeErr
}

func (l *Log) close() error {
	err := l.Sync()
	l.mu.Lock()
	l.closed = true
	l.wcond.Broadcast()
	for l.syncing { // a job a caller of Sync runs itself, or the syncer's
		l.wcond.Wait()
	}
	l.mu.Unlock()
	close(l.quit)
	l.wg.Wait()
	l.wmu.Lock() // held for good: no caller writes past this point
	// Calls that raced Close and were not served.
	l.mu.Lock()
	for _, w := range l.waiters {
		w.ch <- ErrClosed
	}
	for _, d := range l.drops {
		d.done <- ErrClosed
	}
	l.waiters, l.drops = nil, nil
	l.mu.Unlock()
	l.release(l.wseg)
	if s := l.wseg; err == nil && s.reused {
		// Cut what the file held before its reuse, so that the log reads
		// as complete (Check) without knowing how it was written.
		if err = s.file.Truncate(s.wsize.Load()); err == nil {
			err = s.file.Sync()
		}
	}
	for _, s := range l.segs {
		if s.file != nil {
			if cerr := s.file.Close(); err == nil {
				err = cerr
			}
		}
	}
	for _, f := range l.free {
		f.file.Close()
	}
	if errors.Is(err, ErrClosed) {
		err = nil
	}
	return err
}
