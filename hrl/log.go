package hrl

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vrep-io/vrep/internal/faultpoint"
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
	// records left in a reused file are told apart.
	Recycle int
}

// Segment is one segment file of a log.
type Segment struct {
	first    uint64
	name     string
	file     vfs.File     // set before the first batch for it is reported written
	reused   bool         // the file was recycled: stale bytes may follow wsize
	reserved bool         // blocks past the end were reserved for appends
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

// freeFile is a dropped segment file waiting to be reused.
type freeFile struct {
	name string
	file vfs.File
}

type pending struct {
	seg    *Segment
	off    int64
	buf    []byte   // encoded records, except large payloads
	parts  [][]byte // when non-nil: the batch is parts[0], parts[1], ... (buf slices and large payloads)
	mark   int      // start of buf not yet in parts
	size   int64    // total bytes
	last   uint64   // highest LSN in the batch; 0 if none
	create bool     // buf starts with the segment header; create the file
	b      *Batch
}

// Log is the change log of one disk. Append, Sync, Seal, ReadAt and Scan
// are safe for concurrent use; one goroutine, owned by the log, does every
// file write, so concurrent appends are grouped into one write.
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

	wseg     *Segment                // the segment the writer goroutine writes to; its own
	unsynced []*Segment              // segments before wseg not yet fsynced; the writer's own
	dirDirty bool                    // a segment was created since the last directory sync
	wsegPub  atomic.Pointer[Segment] // wseg, published for DropThrough
	free     []freeFile              // dropped files kept for reuse; the writer's own (recover's before it starts)
	kick     chan struct{}
	quit     chan struct{}
	jobs     chan syncJob // writer → syncer
	hints    chan hint    // writer → flusher: start writeback of written bytes
	hintMu   sync.Mutex   // held by the flusher on a file and by drop closing one
	wg       sync.WaitGroup
	pool     sync.Pool
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
	l := &Log{fs: fs, dir: dir, opts: opts, kick: make(chan struct{}, 1), quit: make(chan struct{})}
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
	l.wg.Add(3)
	go l.run()
	go l.syncer()
	go l.flusher()
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

func (l *Log) recover() error {
	names, err := l.fs.List(l.dir)
	if err != nil {
		return fmt.Errorf("hrl: %w", err)
	}
	var files []string
	for _, n := range names {
		switch {
		case strings.HasSuffix(n, suffix):
			files = append(files, n)
		case strings.HasSuffix(n, freeSuffix):
			// A dropped file kept for reuse: its content means nothing.
			if err := l.keepFree(n); err != nil {
				return err
			}
		}
	}
	opened := make([]vfs.File, len(files))
	sizes := make([]int64, len(files))
	defer func() {
		// Close the files of segments that were not kept (cut or failed).
		for _, f := range opened {
			if f != nil && !slices.ContainsFunc(l.segs, func(s *Segment) bool { return s.file == f }) {
				f.Close()
			}
		}
	}()
	for i, name := range files {
		f, err := l.fs.Open(l.path(name))
		if err != nil {
			return fmt.Errorf("hrl: %w", err)
		}
		opened[i] = f
		if sizes[i], err = f.Size(); err != nil {
			return fmt.Errorf("hrl: %w", err)
		}
	}
	l.next = max(1, l.opts.FirstLSN)
	for i, name := range files {
		f, size := opened[i], sizes[i]
		first, ok := nameFirst(name)
		if !ok {
			return &CorruptionError{Segment: name, Reason: "segment file name is not 16 hex digits"}
		}
		// bad is where this segment stops being readable, and why.
		var bad error
		var end int64
		last := first - 1
		hdr := make([]byte, HeaderSize)
		if _, err := f.ReadAt(hdr, 0); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("hrl: %w", err)
		}
		hfirst, herr := decodeSegmentHeader(hdr)
		switch {
		case herr != nil:
			bad = herr
		case hfirst != first:
			bad = fmt.Errorf("header says first LSN %d", hfirst)
		case i > 0 && first != l.next:
			// The previous segment ends early: records are missing.
			bad = fmt.Errorf("broken chain: expected first LSN %d", l.next)
		default:
			end, last, bad = scanSegment(f, size, first)
		}
		if bad != nil && herr == nil && hfirst == first && (i == 0 || first == l.next) &&
			i+1 < len(files) && headerFirst(opened[i+1], files[i+1]) == last+1 {
			// The next segment starts right after the last good record:
			// this one is complete, and what follows is what a recycled
			// file held before (a torn record would leave a gap).
			bad = nil
		}
		if bad == nil {
			seg := &Segment{first: first, name: name, file: f, last: last, size: end}
			seg.wsize.Store(end)
			l.segs = append(l.segs, seg)
			l.next = last + 1
			continue
		}
		// A bad spot is a torn end of unsynced data, unless a sync record
		// written after it says it had been made durable.
		badSeg, badOff := i, end
		if i > 0 && first != l.next && herr == nil && hfirst == first {
			badSeg, badOff = i-1, l.segs[len(l.segs)-1].size // the gap is at the end of the previous one
		}
		if vouched(files, opened, sizes, badSeg, badOff) {
			return &CorruptionError{Segment: files[badSeg], Offset: badOff, Reason: bad.Error() + " (in data a completed sync had made durable)"}
		}
		if err := l.cutTail(files, opened, i, end, badSeg == i && end >= HeaderSize); err != nil {
			return err
		}
		if badSeg == i && end >= HeaderSize {
			seg := &Segment{first: first, name: name, file: f, last: last, size: end}
			seg.wsize.Store(end)
			l.segs = append(l.segs, seg)
			l.next = last + 1
		}
		break
	}
	if len(l.segs) == 0 {
		seg, err := l.createSegment(l.next, nil)
		if err != nil {
			return err
		}
		l.segs = append(l.segs, seg)
		return l.fs.SyncDir(l.dir)
	}
	// After a kill -9 the tail may sit in the page cache only: make every
	// segment durable before anything (a merge, a shipment) relies on it.
	for _, s := range l.segs {
		if err := s.file.Sync(); err != nil {
			return fmt.Errorf("hrl: %w", err)
		}
	}
	return nil
}

// vouched reports whether a valid sync record after byte off of segment
// seg shows that the bytes at off had been made durable. Sync fsyncs the
// segments in order before it writes its sync record, so a sync record in
// a later segment vouches for every earlier one.
func vouched(names []string, files []vfs.File, sizes []int64, seg int, off int64) bool {
	first, _ := nameFirst(names[seg])
	if syncedPast(files[seg], first, off, sizes[seg], off) {
		return true
	}
	for j := seg + 1; j < len(files); j++ {
		if first, _ := nameFirst(names[j]); syncedPast(files[j], first, 0, sizes[j], -1) {
			return true
		}
	}
	return false
}

// nameFirst is the first LSN a segment's file name gives; ok is false
// unless the name is exactly 16 lower-case hex digits and the suffix.
func nameFirst(name string) (first uint64, ok bool) {
	first, err := strconv.ParseUint(strings.TrimSuffix(name, suffix), 16, 64)
	return first, err == nil && segmentName(first) == name
}

// headerFirst is the first LSN of a segment file whose header is valid
// and agrees with its name, or 0.
func headerFirst(f vfs.File, name string) uint64 {
	hdr := make([]byte, HeaderSize)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return 0
	}
	first, err := decodeSegmentHeader(hdr)
	if err != nil || segmentName(first) != name {
		return 0
	}
	return first
}

// keepFree adopts a dropped file found in the directory as one to reuse,
// or removes it when enough are kept.
func (l *Log) keepFree(name string) error {
	if len(l.free) >= l.opts.Recycle {
		if err := l.fs.Remove(l.path(name)); err != nil {
			return fmt.Errorf("hrl: %w", err)
		}
		return nil
	}
	f, err := l.fs.Open(l.path(name))
	if err != nil {
		return fmt.Errorf("hrl: %w", err)
	}
	l.free = append(l.free, freeFile{name: name, file: f})
	return nil
}

// cutTail cuts segment i at off (keeping it only if keep) and removes
// every later segment: a torn end that may span segments.
func (l *Log) cutTail(files []string, opened []vfs.File, i int, off int64, keep bool) error {
	for j := len(files) - 1; j > i; j-- {
		if err := l.fs.Remove(l.path(files[j])); err != nil {
			return fmt.Errorf("hrl: cutting torn tail: %w", err)
		}
	}
	if keep {
		if err := opened[i].Truncate(off); err != nil {
			return fmt.Errorf("hrl: cutting torn tail: %w", err)
		}
		if err := opened[i].Sync(); err != nil {
			return fmt.Errorf("hrl: cutting torn tail: %w", err)
		}
	} else if err := l.fs.Remove(l.path(files[i])); err != nil {
		return fmt.Errorf("hrl: cutting torn tail: %w", err)
	}
	return l.fs.SyncDir(l.dir)
}

// scanSegment validates the records of a segment. It returns the offset
// just past the last good record, the last LSN, and why it stopped early.
func scanSegment(f vfs.File, size int64, first uint64) (end int64, last uint64, bad error) {
	end, last = HeaderSize, first-1
	br := bufio.NewReaderSize(io.NewSectionReader(f, HeaderSize, size-HeaderSize), 1<<20)
	hdr := make([]byte, RecHeaderSize)
	var payload []byte
	for end < size {
		if size-end < RecHeaderSize {
			return end, last, errors.New("short record header")
		}
		if _, err := io.ReadFull(br, hdr); err != nil {
			return end, last, err
		}
		_, r, n := parseRecHeader(hdr)
		if n > MaxPayload || int64(n) > size-end-RecHeaderSize {
			return end, last, fmt.Errorf("record length %d runs past the segment", n)
		}
		if cap(payload) < int(n) {
			payload = make([]byte, n)
		}
		payload = payload[:n]
		if _, err := io.ReadFull(br, payload); err != nil {
			return end, last, err
		}
		r, err := checkRecord(hdr, payload)
		if err != nil {
			return end, last, err
		}
		want := last + 1
		if r.Type == TypeSync {
			want = last
		}
		if r.LSN != want {
			return end, last, fmt.Errorf("LSN %d out of sequence (expected %d)", r.LSN, want)
		}
		last = r.LSN
		end += RecHeaderSize + int64(n)
	}
	return end, last, nil
}

// syncedPast reports whether a valid sync record found after byte from of
// the segment that starts at LSN first says that its bytes past off had
// been made durable. A sync record with an LSN before first-1 was left by
// an earlier use of a recycled file and says nothing about this one.
func syncedPast(f vfs.File, first uint64, from, size, off int64) bool {
	if size-from < RecHeaderSize {
		return false
	}
	buf := make([]byte, size-from)
	if _, err := f.ReadAt(buf, from); err != nil && !errors.Is(err, io.EOF) {
		return false
	}
	for i := 1; i+RecHeaderSize <= len(buf); i++ {
		h := buf[i : i+RecHeaderSize]
		if Type(h[8]) != TypeSync || binary.LittleEndian.Uint32(h[4:]) != 0 {
			continue
		}
		crc, r, _ := parseRecHeader(h)
		if crc32.Checksum(h[4:], castagnoli) == crc && r.LSN+1 >= first && int64(r.Offset) > off {
			return true
		}
	}
	return false
}

// createSegment writes a new segment file holding the header and records
// in parts, reusing a dropped file when one is kept. Neither the file nor
// its name is durable until the next Sync.
func (l *Log) createSegment(first uint64, parts [][]byte) (*Segment, error) {
	seg := &Segment{first: first, name: segmentName(first), last: first - 1, size: HeaderSize}
	if parts == nil {
		parts = [][]byte{encodeSegmentHeader(first)}
	}
	var f vfs.File
	if n := len(l.free); n > 0 {
		ff := l.free[n-1]
		l.free = l.free[:n-1]
		if err := l.fs.Rename(l.path(ff.name), l.path(seg.name)); err != nil {
			l.closeFile(ff.file)
			return nil, fmt.Errorf("hrl: %w", err)
		}
		f, seg.reused = ff.file, true
	} else {
		var err error
		if f, err = l.fs.Create(l.path(seg.name)); err != nil {
			return nil, fmt.Errorf("hrl: %w", err)
		}
		// Appending into reserved blocks costs about a fifth less CPU
		// than appending to a bare file here (ext4). Without it the log
		// still works: the reservation is a hint.
		if r, ok := f.(vfs.Reserver); ok && r.Reserve(l.opts.SegmentSize) == nil {
			seg.reserved = true
		}
	}
	if err := writeParts(f, parts, 0); err != nil {
		l.closeFile(f)
		return nil, fmt.Errorf("hrl: %w", err)
	}
	seg.file = f
	var n int64
	for _, b := range parts {
		n += int64(len(b))
	}
	seg.wsize.Store(n)
	return seg, nil
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

// zeroCopyMin is the payload size from which Append keeps a reference to
// the caller's payload instead of copying it; the writer sends it with
// pwritev. The caller's buffer stays untouched until its batch is written
// because the caller waits for the batch.
const zeroCopyMin = 64 << 10

func (l *Log) newPending(seg *Segment, off int64) *pending {
	var buf []byte
	if bp, ok := l.pool.Get().(*[]byte); ok {
		buf = (*bp)[:0]
	}
	return &pending{seg: seg, off: off, buf: buf, b: &Batch{done: make(chan struct{})}}
}

// Append queues a record and returns its position and the batch that will
// write it. It does not wait: the caller orders its own work (an index
// update) against the LSN, then waits on the batch. The payload is copied.
func (l *Log) Append(e Entry) (Pos, *Batch, error) {
	if len(e.Payload) > MaxPayload {
		return Pos{}, nil, fmt.Errorf("hrl: payload of %d bytes exceeds %d", len(e.Payload), MaxPayload)
	}
	span := e.Span
	if e.Type == TypeWrite {
		span = uint32(len(e.Payload))
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
	if seg.last >= seg.first && seg.size+n > l.opts.SegmentSize {
		seg = l.rollLocked()
	}
	lsn := l.next
	l.next++
	p := l.appendLocked(seg, n, pc, e.Type, e.Flags, span, lsn, e.Offset, e.Payload)
	pos := Pos{LSN: lsn, Seg: seg, Off: seg.size - int64(len(e.Payload))}
	seg.last = lsn
	b := p.b
	l.mu.Unlock()
	l.wake()
	return pos, b, nil
}

// appendLocked encodes a record into the open batch of seg.
func (l *Log) appendLocked(seg *Segment, n int64, pc uint32, t Type, flags uint8, span uint32, lsn, off uint64, payload []byte) *pending {
	p := l.cur
	if p == nil {
		p = l.newPending(seg, seg.size)
		l.cur = p
	}
	at := len(p.buf)
	if len(payload) >= zeroCopyMin {
		p.buf = append(p.buf, make([]byte, RecHeaderSize)...)
		putRecHeader(p.buf[at:], pc, uint32(len(payload)), t, flags, span, lsn, off)
		p.parts = append(p.parts, p.buf[p.mark:], payload)
		p.mark = len(p.buf)
	} else {
		p.buf = append(p.buf, make([]byte, n)...)
		putRecHeader(p.buf[at:at+RecHeaderSize], pc, uint32(len(payload)), t, flags, span, lsn, off)
		copy(p.buf[at+RecHeaderSize:], payload)
	}
	p.size += n
	seg.size += n
	if t != TypeSync {
		p.last = lsn
	}
	return p
}

// rollLocked seals the active segment and starts the next.
func (l *Log) rollLocked() *Segment {
	if l.cur != nil {
		l.queue = append(l.queue, l.cur)
	}
	seg := &Segment{first: l.next, name: segmentName(l.next), last: l.next - 1}
	l.segs = append(l.segs, seg)
	p := l.newPending(seg, 0)
	p.create = true
	p.buf = append(p.buf, encodeSegmentHeader(seg.first)...)
	p.size = HeaderSize
	seg.size = HeaderSize
	l.cur = p
	return seg
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

// syncWaiter is a Sync call waiting for its LSN to be durable.
type syncWaiter struct {
	lsn uint64
	ch  chan error
}

// syncJob is one round of fsyncs, handed from the writer to the syncer.
type syncJob struct {
	segs    []*Segment // in log order; the last is the active one
	written uint64     // every record up to here is in segs' files
	size    int64      // the active segment's written size
	dir     bool       // a segment was created: sync the directory too
}

// run is the writer goroutine. Writes go on while the syncer fsyncs: a
// flush from one client does not stall every other client's writes.
func (l *Log) run() {
	defer l.wg.Done()
	defer close(l.jobs)
	for {
		quit := false
		select {
		case <-l.kick:
		case <-l.quit:
			quit = true
		}
		l.mu.Lock()
		if l.cur != nil {
			l.queue = append(l.queue, l.cur)
			l.cur = nil
		}
		q := l.queue
		l.queue = nil
		// Drops wait while a sync job is out: it may hold a segment that
		// the synced LSN already covers (its records were synced as the
		// active segment before a roll put it in the job).
		var drops []dropReq
		if !l.syncing {
			drops, l.drops = l.drops, nil
		}
		startSync := !l.syncing && len(l.waiters) > 0
		l.syncing = l.syncing || startSync
		l.mu.Unlock()
		for _, p := range q {
			l.write(p)
		}
		for _, d := range drops {
			l.drop(d)
		}
		if startSync {
			// Every record a waiter asked for was appended before it
			// registered, so it is in q or earlier: written now.
			job := syncJob{segs: append(l.unsynced, l.wseg), // the job takes the list
				written: l.written.Load(), size: l.wseg.wsize.Load(), dir: l.dirDirty}
			l.unsynced, l.dirDirty = nil, false
			l.jobs <- job
		}
		if quit {
			return
		}
	}
}

// writebackEvery is how many bytes of a segment are written before the
// flusher starts their writeback.
const writebackEvery = 8 << 20

// hint asks the flusher to start writeback of a file range.
type hint struct {
	f      vfs.Writebacker
	off, n int64
}

// hintWriteback passes a range of a segment to the flusher once
// writebackEvery bytes have piled up past the last hint; only the writer
// calls it.
func (l *Log) hintWriteback(s *Segment, from, to int64) {
	wb, ok := s.file.(vfs.Writebacker)
	if !ok || from/writebackEvery == to/writebackEvery {
		return
	}
	start := from / writebackEvery * writebackEvery
	select {
	case l.hints <- hint{wb, start, to/writebackEvery*writebackEvery - start}:
	default: // the flusher is behind; the next fsync does it
	}
}

// flusher starts writeback of segment ranges as they fill (the way
// RocksDB's wal_bytes_per_sync does), so the data is mostly on disk when
// a flush or a merge needs it durable: the disk works steadily instead of
// in bursts, and an fsync waits for little. Errors are ignored: this is a
// hint; the fsync that follows reports real ones.
func (l *Log) flusher() {
	defer l.wg.Done()
	for {
		select {
		case h := <-l.hints:
			l.hintMu.Lock()
			h.f.StartWriteback(h.off, h.n)
			l.hintMu.Unlock()
		case <-l.quit:
			return
		}
	}
}

// closeFile closes a file the flusher may be starting writeback on.
func (l *Log) closeFile(f vfs.File) {
	l.hintMu.Lock()
	defer l.hintMu.Unlock()
	f.Close()
}

// syncer is the goroutine that makes written records durable.
func (l *Log) syncer() {
	defer l.wg.Done()
	for job := range l.jobs {
		err := l.syncJob(job)
		l.mu.Lock()
		l.syncing = false
		synced := l.synced.Load()
		keep := l.waiters[:0]
		for _, w := range l.waiters {
			switch {
			case err != nil:
				w.ch <- err
			case w.lsn <= synced:
				w.ch <- nil
			default:
				keep = append(keep, w)
			}
		}
		l.waiters = keep
		l.mu.Unlock()
		l.wake() // the next round, and drops held back
	}
}

func (l *Log) fail(err error) {
	l.mu.Lock()
	if l.err == nil {
		l.err = fmt.Errorf("hrl: log failed, disk needs attention: %w", err)
	}
	l.wcond.Broadcast()
	l.mu.Unlock()
}

func (l *Log) failed() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// vectorWriter is a file that can gather-write (pwritev).
type vectorWriter interface {
	WritevAt(bufs [][]byte, off int64) (int, error)
}

// gather returns the batch as one buffer or as parts.
func (p *pending) gather() [][]byte {
	if p.parts == nil {
		return [][]byte{p.buf}
	}
	if p.mark < len(p.buf) {
		p.parts = append(p.parts, p.buf[p.mark:])
		p.mark = len(p.buf)
	}
	return p.parts
}

func writeParts(f vfs.File, parts [][]byte, off int64) error {
	if len(parts) == 1 {
		_, err := f.WriteAt(parts[0], off)
		return err
	}
	if vw, ok := f.(vectorWriter); ok {
		_, err := vw.WritevAt(parts, off)
		return err
	}
	for _, b := range parts {
		if _, err := f.WriteAt(b, off); err != nil {
			return err
		}
		off += int64(len(b))
	}
	return nil
}

// write writes one batch; only the writer goroutine calls it.
func (l *Log) write(p *pending) {
	err := l.failed()
	if err == nil && p.create {
		// No fsync here: Sync makes the segments durable in order, so a
		// roll costs no more than any other write.
		var seg *Segment
		if seg, err = l.createSegment(p.seg.first, p.gather()); err == nil {
			p.seg.file, p.seg.reused, p.seg.reserved = seg.file, seg.reused, seg.reserved
			p.seg.wsize.Store(p.size)
			l.release(l.wseg)
			l.unsynced = append(l.unsynced, l.wseg)
			l.dirDirty = true
			l.wseg = p.seg
			l.wsegPub.Store(p.seg)
		}
	} else if err == nil {
		if err = writeParts(p.seg.file, p.gather(), p.off); err == nil {
			p.seg.wsize.Store(p.off + p.size)
			l.hintWriteback(p.seg, p.off, p.off+p.size)
		}
	}
	if err != nil {
		l.fail(err)
		err = l.failed()
	} else if p.last > 0 {
		faultpoint.Hit(faultpoint.LogAfterWrite)
		l.written.Store(p.last)
	}
	p.b.err = err
	close(p.b.done)
	if cap(p.buf) <= 4<<20 {
		buf := p.buf[:0]
		l.pool.Put(&buf)
	}
	p.buf, p.parts = nil, nil
	l.mu.Lock()
	l.wcond.Broadcast()
	l.mu.Unlock()
}

// release gives back the blocks a sealed segment reserved and did not
// use (a segment sealed by a copy-frequency tick may hold a few KiB of its
// 64 MiB), so the log takes no more disk than it holds. Only the writer
// calls it (and Close, once the writer is gone); a failure costs disk
// space only, until the file goes.
func (l *Log) release(s *Segment) {
	if s == nil || !s.reserved {
		return
	}
	s.reserved = false
	s.file.Truncate(s.wsize.Load())
}

// jobHook, when set by a test, runs in a sync job before its fsyncs
// (after false) and after them, before its sync record (after true).
var jobHook func(l *Log, after bool)

// syncJob makes a job's segments durable and notes it in the log. A
// segment in a job is never dropped before the job is done: DropThrough
// takes only segments the synced LSN covers.
func (l *Log) syncJob(job syncJob) error {
	if err := l.failed(); err != nil {
		return err
	}
	if jobHook != nil {
		jobHook(l, false)
	}
	// In order: a later segment is never durable before an earlier one.
	for _, s := range job.segs {
		if err := s.file.Sync(); err != nil {
			l.fail(err)
			return l.failed()
		}
	}
	if job.dir {
		if err := l.fs.SyncDir(l.dir); err != nil {
			l.fail(err)
			return l.failed()
		}
	}
	faultpoint.Hit(faultpoint.LogAfterSync)
	if jobHook != nil {
		jobHook(l, true)
	}
	l.synced.Store(job.written)
	// The sync record vouches for the bytes before job.size of the segment
	// it lands in, so it goes only where that segment is still the active
	// one: in a later segment it would vouch for what this job did not
	// sync.
	l.mu.Lock()
	if seg := l.segs[len(l.segs)-1]; seg == job.segs[len(job.segs)-1] && l.err == nil && !l.closed {
		l.appendLocked(seg, RecHeaderSize, 0, TypeSync, 0, 0, l.next-1, uint64(job.size), nil)
		l.wake()
	}
	l.mu.Unlock()
	return nil
}

// Sync makes every record appended before the call durable. Concurrent
// calls share one fsync.
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
	ch := make(chan error, 1)
	l.waiters = append(l.waiters, syncWaiter{lsn: l.next - 1, ch: ch})
	l.mu.Unlock()
	l.wake()
	return <-ch
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

type dropReq struct {
	segs []*Segment
	done chan error
}

// drop removes segment files, or keeps them for reuse; only the writer
// goroutine calls it.
func (l *Log) drop(req dropReq) {
	var err error
	for _, s := range req.segs {
		l.unsynced = slices.DeleteFunc(l.unsynced, func(u *Segment) bool { return u == s })
		if len(l.free) < l.opts.Recycle {
			name := strings.TrimSuffix(s.name, suffix) + freeSuffix
			rerr := l.fs.Rename(l.path(s.name), l.path(name))
			if rerr == nil {
				l.free = append(l.free, freeFile{name: name, file: s.file})
				continue
			}
			if err == nil {
				err = fmt.Errorf("hrl: %w", rerr)
			}
		}
		l.closeFile(s.file)
		if rerr := l.fs.Remove(l.path(s.name)); rerr != nil && err == nil {
			err = fmt.Errorf("hrl: %w", rerr)
		}
	}
	if err == nil {
		if serr := l.fs.SyncDir(l.dir); serr != nil {
			err = fmt.Errorf("hrl: %w", serr)
		}
	}
	req.done <- err
}

// Scan calls fn for every write, trim, zero and marker record with an LSN
// of at least from that is written, in LSN order. fn must not retain the
// record's payload. Scan stops at fn's first error and returns it.
func (l *Log) Scan(from uint64, fn func(Record) error) error {
	l.mu.Lock()
	segs := append([]*Segment(nil), l.segs...)
	l.mu.Unlock()
	hdr := make([]byte, RecHeaderSize)
	var payload []byte
	for i, s := range segs {
		if i+1 < len(segs) && segs[i+1].first <= from {
			continue
		}
		limit := s.wsize.Load()
		br := bufio.NewReaderSize(io.NewSectionReader(s.file, HeaderSize, limit-HeaderSize), 1<<20)
		for off := int64(HeaderSize); off < limit; {
			if _, err := io.ReadFull(br, hdr); err != nil {
				return fmt.Errorf("hrl: scanning %s: %w", s.name, err)
			}
			_, _, n := parseRecHeader(hdr)
			if n > MaxPayload || int64(n) > limit-off-RecHeaderSize {
				return &CorruptionError{Segment: s.name, Offset: off, Reason: "record runs past the written data"}
			}
			if cap(payload) < int(n) {
				payload = make([]byte, n)
			}
			payload = payload[:n]
			if _, err := io.ReadFull(br, payload); err != nil {
				return fmt.Errorf("hrl: scanning %s: %w", s.name, err)
			}
			r, err := checkRecord(hdr, payload)
			if err != nil {
				return &CorruptionError{Segment: s.name, Offset: off, Reason: err.Error()}
			}
			off += RecHeaderSize + int64(n)
			if r.Type == TypeSync || r.LSN < from {
				continue
			}
			if err := fn(r); err != nil {
				return err
			}
		}
	}
	return nil
}

// Close waits for queued records to be written, syncs, and closes the
// files. It is idempotent.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.mu.Unlock()
	err := l.Sync()
	l.mu.Lock()
	l.closed = true
	l.wcond.Broadcast()
	l.mu.Unlock()
	close(l.quit)
	l.wg.Wait()
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

// Check reads the log in dir without changing it and calls fn for every
// record (sync records aside). Damage is a *CorruptionError; a torn tail
// is an error too (it would be cut at the next Open). A sealed segment
// ends at its last record when the next segment starts right after it:
// what follows is what a recycled file held before.
func Check(fs vfs.FS, dir string, fn func(Record)) error {
	names, err := fs.List(dir)
	if err != nil {
		return fmt.Errorf("hrl: %w", err)
	}
	var segs []string
	for _, name := range names {
		if strings.HasSuffix(name, suffix) {
			segs = append(segs, name)
		}
	}
	var next uint64
	for i, name := range segs {
		var nextFirst uint64 // where the next segment starts; 0 if none or unreadable
		if i+1 < len(segs) {
			if nf, err := fs.Open(filepath.Join(dir, segs[i+1])); err == nil {
				nextFirst = headerFirst(nf, segs[i+1])
				nf.Close()
			}
		}
		if next, err = checkSegment(fs, filepath.Join(dir, name), name, i == 0, next, nextFirst, fn); err != nil {
			return err
		}
	}
	return nil
}

// checkSegment checks one segment for Check and returns the LSN after its
// last record.
func checkSegment(fs vfs.FS, path, name string, head bool, next, nextFirst uint64, fn func(Record)) (uint64, error) {
	f, err := fs.Open(path)
	if err != nil {
		return 0, fmt.Errorf("hrl: %w", err)
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return 0, fmt.Errorf("hrl: %w", err)
	}
	hdr := make([]byte, HeaderSize)
	f.ReadAt(hdr, 0)
	first, herr := decodeSegmentHeader(hdr)
	if herr != nil {
		return 0, &CorruptionError{Segment: name, Reason: herr.Error()}
	}
	if !head && first != next {
		return 0, &CorruptionError{Segment: name, Reason: fmt.Sprintf("broken chain: expected first LSN %d", next)}
	}
	br := bufio.NewReaderSize(io.NewSectionReader(f, HeaderSize, size-HeaderSize), 1<<20)
	rh := make([]byte, RecHeaderSize)
	last := first - 1
	bad := func(off int64, reason string) (uint64, error) {
		if nextFirst != 0 && nextFirst == last+1 {
			return last + 1, nil
		}
		return 0, &CorruptionError{Segment: name, Offset: off, Reason: reason}
	}
	for off := int64(HeaderSize); off < size; {
		if _, err := io.ReadFull(br, rh); err != nil {
			return bad(off, "torn or short record")
		}
		_, _, n := parseRecHeader(rh)
		if n > MaxPayload || int64(n) > size-off-RecHeaderSize {
			return bad(off, "record runs past the segment")
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(br, payload); err != nil {
			return bad(off, "torn or short record")
		}
		r, err := checkRecord(rh, payload)
		if err != nil {
			return bad(off, err.Error())
		}
		if r.Type != TypeSync {
			if r.LSN != last+1 {
				return bad(off, "LSN out of sequence")
			}
			last = r.LSN
			fn(r)
		}
		off += RecHeaderSize + int64(n)
	}
	return last + 1, nil
}
