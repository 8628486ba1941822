package hrl

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"

	"github.com/vrep-io/vrep/internal/vfs"
)

// spareName is the file name of a spare: a segment file filled with
// zeros ahead of need, so that a new segment writes over written blocks
// even when no dropped file is kept (see "Reused files" in the package
// documentation). The suffix makes Open adopt a spare like any file kept
// for reuse; no segment is named so, so a drop never renames a file
// over it, and there is one spare at most: one is prepared only when no
// file is kept.
const spareName = "spare" + freeSuffix

// spareChunk is the size of the writes that fill a spare (a variable so
// that tests can cut the power between them).
var spareChunk int64 = 1 << 20

// spareHook, when set by a test, is called once a spare preparation is
// over: err is nil when the spare was kept.
var spareHook func(l *Log, err error)

// errStopped says that Close stopped a spare's preparation.
var errStopped = errors.New("hrl: closing")

// A spare is made only for a log that is flush-bound: synced at least
// flushBoundSyncs times in a row within its active segment with less than
// flushBoundBytes written between two syncs (a guest flushing after each
// small write). There the journal commit is a large part of every flush.
// A log written in bulk and synced rarely gains little from a spare and
// would pay for it with SegmentSize more bytes written per segment; a log
// sealed often with little in it (points on an idle disk) would pay that
// for every seal. Variables so that tests can lower them.
var (
	flushBoundSyncs       = atomicInt(16)
	flushBoundBytes int64 = 1 << 20
)

func atomicInt(n int32) *atomic.Int32 {
	var a atomic.Int32
	a.Store(n)
	return &a
}

// noteSync counts the small syncs of the active segment once job is
// durable, and asks for a spare while the log is flush-bound; only the
// syncer calls it.
func (l *Log) noteSync(job syncJob) {
	seg := job.segs[len(job.segs)-1]
	if seg != l.syncSeg {
		l.syncSeg, l.syncOff, l.smallSyncs = seg, 0, 0
	}
	if job.size-l.syncOff < flushBoundBytes {
		l.smallSyncs++
	} else {
		l.smallSyncs = 0
	}
	l.syncOff = job.size
	need := int(flushBoundSyncs.Load())
	if l.opts.FlushBound > 0 {
		need = l.opts.FlushBound
	}
	bound := l.smallSyncs >= need
	l.flushBound.Store(bound)
	if bound {
		l.kickSpare()
	}
}

// rollToSpareLocked reports whether Append should seal the active segment
// early, to go on in a file kept for reuse: the log is flush-bound, the
// active segment is in the writer's hands, the n bytes to append and a
// sync record after them would go past the blocks its file had written
// (a new file has none; a reused one, the whole pages of its earlier
// use: a short one, or a new log's zeroed head), where each flush after
// an append commits the journal, and a long kept file is there. A new
// file's unused reservation is given back when it is sealed.
func (l *Log) rollToSpareLocked(seg *Segment, n int64) bool {
	if !l.flushBound.Load() || l.wsegPub.Load() != seg || seg.size+n+RecHeaderSize <= seg.zeroed {
		return false
	}
	return !l.needSpare()
}

// kickSpare asks the preparer for a spare when no file is kept for reuse.
func (l *Log) kickSpare() {
	if l.opts.Recycle <= 0 || !l.needSpare() {
		return
	}
	select {
	case l.spareKick <- struct{}{}:
	default:
	}
}

// needSpare reports whether the log keeps no long file for reuse (a
// segment sealed early by a point leaves a short one, which appends
// would extend, block by block).
func (l *Log) needSpare() bool {
	l.freeMu.Lock()
	defer l.freeMu.Unlock()
	return !slices.ContainsFunc(l.free, l.long)
}

// preparer is the goroutine that prepares a spare when the writer asks
// for one (kickSpare) and the log keeps no file for reuse. It never holds
// up the writer: the writer takes a kept file if one is there, and
// creates a new one otherwise. Close stops it between two writes.
func (l *Log) preparer() {
	defer l.wg.Done()
	for {
		select {
		case <-l.spareKick:
		case <-l.quit:
			return
		}
		if !l.spareOff && l.needSpare() {
			l.addSpare(l.quit)
		}
	}
}

// addSpare prepares a spare and keeps it for reuse. A failure (a full
// disk, an I/O error) does not fail the log: it is logged, and the log
// goes on creating new segment files, as it does without spares, until
// it is opened again.
func (l *Log) addSpare(quit <-chan struct{}) {
	f, err := l.prepareSpare(l.opts.SegmentSize, quit)
	if err == nil {
		l.freeMu.Lock()
		var evict *freeFile
		if len(l.free) >= l.opts.Recycle { // kept files are all short: the spare takes one's place
			if i := slices.IndexFunc(l.free, func(ff freeFile) bool { return !l.long(ff) }); i >= 0 {
				evict = &freeFile{}
				*evict = l.free[i]
				l.free = slices.Delete(l.free, i, i+1)
			}
		}
		kept := len(l.free) < l.opts.Recycle // drops may have filled the list meanwhile
		if kept {
			l.free = append(l.free, freeFile{name: spareName, file: f, size: l.opts.SegmentSize})
		}
		l.freeMu.Unlock()
		if evict != nil {
			evict.file.Close()
			l.fs.Remove(l.path(evict.name))
		}
		if !kept {
			f.Close()
			l.fs.Remove(l.path(spareName))
			err = errStopped
		}
	} else if !errors.Is(err, errStopped) {
		l.spareOff = true
		slog.Warn("hrl: cannot prepare a spare segment file; new segments go to new files", "dir", l.dir, "err", err)
	}
	if spareHook != nil {
		spareHook(l, err)
	}
}

// headZeros is how many bytes of zeros a new log writes, durably, before
// its first segment, which then writes over them (a variable so that
// tests can change it). It covers a flush-bound guest's first writes
// while the spare is prepared: without it those flushes each commit the
// journal, for the quarter of a second a 64 MiB spare takes here. It is
// small, since a log written in bulk pays for it too, once.
var headZeros int64 = 8 << 20

// prepareHead keeps a short spare of headZeros bytes for the first
// segment of a log that has none and keeps no file for reuse, when the
// log recycles files. Like a spare's, a failure does not fail the log:
// it is logged, and the first segment is a new file.
func (l *Log) prepareHead() {
	if l.opts.Recycle <= 0 || len(l.free) > 0 || headZeros <= 0 {
		return
	}
	size := min(headZeros, l.opts.SegmentSize)
	f, err := l.prepareSpare(size, nil)
	if err != nil {
		slog.Warn("hrl: cannot prepare a new log's first segment file; it starts in a new file", "dir", l.dir, "err", err)
		return
	}
	l.free = append(l.free, freeFile{name: spareName, file: f, size: size})
}

// prepareSpare creates the spare file and fills it with size zeros,
// durably. A spare that fails or is stopped halfway is removed: left in
// place (the removal failed, or a crash came first), it is a file Open
// adopts for reuse like any other, whatever it holds.
func (l *Log) prepareSpare(size int64, quit <-chan struct{}) (vfs.File, error) {
	f, err := l.fs.Create(l.path(spareName))
	if err != nil {
		return nil, fmt.Errorf("hrl: %w", err)
	}
	if err := l.fillZeros(f, size, quit); err != nil {
		f.Close()
		l.fs.Remove(l.path(spareName))
		return nil, err
	}
	return f, nil
}

func (l *Log) fillZeros(f vfs.File, size int64, quit <-chan struct{}) error {
	zeros := make([]byte, min(spareChunk, size))
	for off := int64(0); off < size; {
		select {
		case <-quit:
			return errStopped
		default:
		}
		n := min(int64(len(zeros)), size-off)
		if _, err := f.WriteAt(zeros[:n], off); err != nil {
			return fmt.Errorf("hrl: %w", err)
		}
		off += n
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("hrl: %w", err)
	}
	if err := l.fs.SyncDir(l.dir); err != nil {
		return fmt.Errorf("hrl: %w", err)
	}
	return nil
}
