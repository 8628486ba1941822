package hrl

import (
	"fmt"
	"slices"
	"strings"

	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/vfs"
)

// freeFile is a dropped segment file (or a spare) waiting to be reused.
type freeFile struct {
	name string
	file vfs.File
	size int64 // its length: a segment sealed early (a point) is short
}

// long reports whether a kept file is long enough that a segment written
// over it mostly overwrites written blocks (at least half a segment):
// what a spare is for.
func (l *Log) long(ff freeFile) bool { return ff.size >= l.opts.SegmentSize/2 }

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

// createSegment writes a new segment file holding the header and records
// in parts, reusing a dropped file when one is kept. A new file and its
// name are not durable until the next Sync; a reused file's new name is
// made durable first.
func (l *Log) createSegment(first uint64, parts [][]byte) (*Segment, error) {
	seg := &Segment{first: first, name: segmentName(first), last: first - 1, size: HeaderSize}
	if parts == nil {
		parts = [][]byte{encodeSegmentHeader(first)}
	}
	ff, ok, err := l.takeFree(seg.name)
	if err != nil {
		return nil, err
	}
	var f vfs.File
	if ok {
		// The new name is made durable before anything is written over
		// the file. Otherwise a power cut after the records were synced
		// and before the directory was would leave them under the kept
		// name, to be written over again for the same LSNs by the log
		// that recovery ends before them: past that log's last sync, a
		// second cut would bring the lost records back as records.
		if err := l.fs.SyncDir(l.dir); err != nil {
			l.closeFile(ff.file)
			return nil, fmt.Errorf("hrl: %w", err)
		}
		// The padding of a batch reaches the end of its page: the file's
		// last partial page does not count as written.
		f, seg.reused, seg.zeroed = ff.file, true, ff.size&^(pageSize-1)
	} else {
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
	var n int64
	for _, b := range parts {
		n += int64(len(b))
	}
	if err := writeParts(f, padToPage(parts, 0, n, seg.reused), 0); err != nil {
		l.closeFile(f)
		return nil, fmt.Errorf("hrl: %w", err)
	}
	seg.file = f
	seg.wsize.Store(n)
	return seg, nil
}

// takeFree renames the file last kept for reuse, if any, to name and
// returns it. The lock is held across the rename: once the list is
// empty the preparer may create a new spare, which must not take the
// name of one not yet renamed (it would write zeros over the segment).
func (l *Log) takeFree(name string) (freeFile, bool, error) {
	l.freeMu.Lock()
	n := len(l.free)
	if n == 0 {
		l.freeMu.Unlock()
		return freeFile{}, false, nil
	}
	i := n - 1 // the last kept, or else the last long one
	if j := slices.IndexFunc(l.free, l.long); j >= 0 && !l.long(l.free[i]) {
		i = j
	}
	ff := l.free[i]
	l.free = slices.Delete(l.free, i, i+1)
	err := l.fs.Rename(l.path(ff.name), l.path(name))
	l.freeMu.Unlock()
	if err != nil {
		l.closeFile(ff.file)
		return freeFile{}, false, fmt.Errorf("hrl: %w", err)
	}
	return ff, true, nil
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
		l.wmu.Lock()
		l.mu.Lock()
		q := l.takeLocked()
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
		l.dropAll(drops)
		var job syncJob
		if startSync {
			job = l.newJob()
		}
		l.wmu.Unlock()
		if startSync {
			l.jobs <- job
		}
		if quit {
			return
		}
	}
}

// newJob takes the segments to fsync for the waiters registered so far;
// the caller holds wmu and has written every batch taken before it.
// Every record a waiter asked for was appended before it registered, so
// it is written now.
func (l *Log) newJob() syncJob {
	job := syncJob{segs: append(l.unsynced, l.wseg), // the job takes the list
		written: l.written.Load(), size: l.wseg.wsize.Load(), dir: l.dirDirty}
	l.unsynced, l.dirDirty = nil, false
	return job
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
// writebackEvery bytes have piled up past the last hint, if the log was
// asked to sync since the hint before (syncAsks); the caller holds wmu.
//
// Only while the log is being flushed: a burst of writes with no flush
// then stays in the page cache, as it would in a plain file, until a
// flush, a merge's log sync or the kernel's own writeback writes it. The
// hints start the disk in the middle of the burst, and on this project's
// 2-vCPU host a 512 MiB burst of 1 MiB writes went 20–25% slower with
// them (fio over NBD, 6 fresh servers each way, medians 2,016 and 2,580
// MB/s; nbdkit 2,270). A log that is flushed keeps them: its next flush
// finds little left to write.
func (l *Log) hintWriteback(s *Segment, from, to int64) {
	wb, ok := s.file.(vfs.Writebacker)
	if !ok || from/writebackEvery == to/writebackEvery {
		return
	}
	asks := l.syncAsks.Load()
	if asks == l.hintAsks {
		return
	}
	l.hintAsks = asks
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
		l.finishJob(job, false)
	}
}

// finishJob runs a sync job and answers the waiters it served. Run by a
// caller of Sync (inline), it writes the sync record itself when no one
// else is writing, and wakes the writer goroutine only for work left.
func (l *Log) finishJob(job syncJob, inline bool) {
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
	more := len(keep) > 0 || len(l.drops) > 0
	l.wcond.Broadcast() // Close waits for the job
	l.mu.Unlock()
	if !inline || more {
		l.wake() // the next round, and drops held back
		return
	}
	l.WriteNow() // the sync record
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

// pageSize is the unit padToPage fills to.
const pageSize = 4096

var zeroPage [pageSize]byte

// padReused is padToPage's switch, for BenchmarkReusedColdSync.
var padReused = true

// padToPage returns the parts of a batch of n bytes written at off, with
// zeros after them up to the next page boundary when the file is a
// reused one. A write that ends inside a page of a file's allocated
// blocks that is not in the page cache reads that page from the disk
// first; in a reused file nearly every batch ends so, unless its pages
// are still cached from the earlier use (fio on this project's host,
// 4,128-byte writes each followed by fdatasync over a file of zeros whose
// pages were dropped: p50 53 µs a write, against 4 µs for whole pages).
// Zeros past the good records are what a spare holds: recovery reads them
// as the end of the log. The next batch starts where the zeros do and
// writes over them. A new file needs none: its new pages are not read.
func padToPage(parts [][]byte, off, n int64, reused bool) [][]byte {
	pad := -(off + n) & (pageSize - 1)
	if !reused || pad == 0 || !padReused {
		return parts
	}
	return append(parts[:len(parts):len(parts)], zeroPage[:pad])
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

// write writes one batch; the caller holds wmu.
func (l *Log) write(p *pending) {
	err := l.failed()
	if err == nil && p.create {
		// No fsync here: Sync makes the segments durable in order, so a
		// roll costs no more than any other write.
		var seg *Segment
		if seg, err = l.createSegment(p.seg.first, p.gather()); err == nil {
			p.seg.file, p.seg.reused, p.seg.reserved, p.seg.zeroed = seg.file, seg.reused, seg.reserved, seg.zeroed
			p.seg.wsize.Store(p.size)
			l.release(l.wseg)
			l.unsynced = append(l.unsynced, l.wseg)
			l.dirDirty = true
			l.wseg = p.seg
			l.wsegPub.Store(p.seg)
		}
	} else if err == nil {
		if err = writeParts(p.seg.file, padToPage(p.gather(), p.off, p.size, p.seg.reused), p.off); err == nil {
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
// 64 MiB), so the log takes no more disk than it holds. The holder of
// wmu calls it (Close holds it for good); a failure costs disk space
// only, until the file goes.
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
	l.noteSync(job)
	l.synced.Store(job.written)
	// The sync record vouches for the bytes before job.size of the segment
	// it lands in, so it goes only where that segment is still the active
	// one: in a later segment it would vouch for what this job did not
	// sync.
	l.mu.Lock()
	if seg := l.segs[len(l.segs)-1]; seg == job.segs[len(job.segs)-1] && l.err == nil && !l.closed {
		l.appendLocked(seg, RecHeaderSize, 0, TypeSync, 0, 0, l.next-1, uint64(job.size), nil)
	}
	l.mu.Unlock()
	return nil
}

type dropReq struct {
	segs []*Segment
	done chan error
}

// drop removes segment files, or keeps them for reuse; only the writer
// goroutine calls it. When a file cannot be removed, it returns it and
// the segments after it in the request, untouched: they stay in the log.
func (l *Log) drop(req dropReq) (kept []*Segment, err error) {
	for i, s := range req.segs {
		l.unsynced = slices.DeleteFunc(l.unsynced, func(u *Segment) bool { return u == s })
		ok, rerr := l.keepDropped(s)
		if ok {
			continue
		}
		if rerr != nil && err == nil {
			err = rerr
		}
		if rerr := l.fs.Remove(l.path(s.name)); rerr != nil {
			if err == nil {
				err = fmt.Errorf("hrl: %w", rerr)
			}
			kept = req.segs[i:]
			break
		}
		l.closeFile(s.file)
	}
	if serr := l.fs.SyncDir(l.dir); serr != nil && err == nil {
		err = fmt.Errorf("hrl: %w", serr)
	}
	return kept, err
}

// keepDropped keeps a dropped segment's file for reuse, renamed to
// FIRST.free, if fewer than Recycle files are kept; only the writer
// goroutine calls it. A file it does not keep is for the caller to
// remove. The lock is held across the rename so that a spare the
// preparer finishes meanwhile cannot go past the bound.
func (l *Log) keepDropped(s *Segment) (bool, error) {
	l.freeMu.Lock()
	defer l.freeMu.Unlock()
	if len(l.free) >= l.opts.Recycle {
		return false, nil
	}
	name := strings.TrimSuffix(s.name, suffix) + freeSuffix
	if err := l.fs.Rename(l.path(s.name), l.path(name)); err != nil {
		return false, fmt.Errorf("hrl: %w", err)
	}
	// A reused file is at least as long as it was: a segment a point
	// sealed early in a spare leaves a long file.
	l.free = append(l.free, freeFile{name: name, file: s.file, size: max(s.wsize.Load(), s.zeroed)})
	return true, nil
}

// dropAll runs drop requests in order; only the writer goroutine calls it.
// A segment file that cannot be removed stays in the log, and so does
// every later segment whose drop is pending: a later segment removed
// while an earlier one stays would leave a gap in the chain, which
// recovery takes for lost records. Each request took a prefix of the
// segments in turn, so putting them back in request order restores the
// log; a later DropThrough tries again.
func (l *Log) dropAll(reqs []dropReq) {
	for i, req := range reqs {
		kept, err := l.drop(req)
		if kept == nil {
			req.done <- err
			continue
		}
		l.mu.Lock()
		later := append(reqs[i+1:len(reqs):len(reqs)], l.drops...)
		l.drops = nil
		for _, d := range later {
			kept = append(kept, d.segs...)
		}
		l.segs = append(slices.Clone(kept), l.segs...)
		l.mu.Unlock()
		req.done <- err
		for _, d := range later {
			d.done <- err
		}
		return
	}
}
