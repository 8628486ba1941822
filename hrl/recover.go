package hrl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/vrep-io/vrep/internal/vfs"
)

// layout is what reading a log directory finds, decided without
// changing anything: the segments whose records are kept, and the torn
// tail after them, if any. Open then cuts the tail; Check reports it.
type layout struct {
	names []string   // segment file names, in LSN order
	files []vfs.File // open, one per name
	sizes []int64
	segs  []*Segment // kept, whole or up to the tail
	cut   int        // index of the first file the tail touches; len(names) if none
	torn  *Torn
}

// close closes the files of segments not kept.
func (lay *layout) close(keepSegs bool) {
	for _, f := range lay.files {
		if f != nil && !(keepSegs && slices.ContainsFunc(lay.segs, func(s *Segment) bool { return s.file == f })) {
			f.Close()
		}
	}
}

// readLayout reads every segment of a log, in order, and finds where its
// good records end. fn, if not nil, gets every record kept (sync records
// aside). A bad spot (a bad header or record, or a gap between segments)
// is where the records end: a torn tail, unless a valid sync record after
// it says it had been made durable, which makes it damage
// (*CorruptionError). A sealed segment whose next segment starts right
// after its last good record is whole: what follows is what a recycled
// file held before (a torn record would leave a gap instead). An I/O
// error is neither: it is returned as it is, and nothing is judged.
func readLayout(fs vfs.FS, dir string, names []string, fn func(Record)) (_ *layout, err error) {
	lay := &layout{names: names, files: make([]vfs.File, len(names)), sizes: make([]int64, len(names)), cut: len(names)}
	defer func() {
		if err != nil {
			lay.close(false)
		}
	}()
	for i, name := range names {
		if lay.files[i], err = fs.Open(filepath.Join(dir, name)); err != nil {
			return nil, fmt.Errorf("hrl: %w", err)
		}
		if lay.sizes[i], err = lay.files[i].Size(); err != nil {
			return nil, fmt.Errorf("hrl: %w", err)
		}
	}
	var it recordIter
	var next uint64 // the LSN after the last segment kept
	for i, name := range names {
		f, size := lay.files[i], lay.sizes[i]
		first, ok := nameFirst(name)
		if !ok {
			return nil, &CorruptionError{Segment: name, Reason: "segment file name is not 16 hex digits"}
		}
		hdr := make([]byte, HeaderSize)
		if _, err := f.ReadAt(hdr, 0); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("hrl: reading %s: %w", name, err)
		}
		hfirst, herr := decodeSegmentHeader(hdr)
		headerOK := herr == nil && hfirst == first
		chained := headerOK && (i == 0 || first == next)
		var bad error // why the records stop in this segment
		var end int64 // where they stop
		last := first - 1
		switch {
		case herr != nil:
			bad = herr
		case !headerOK:
			bad = fmt.Errorf("header says first LSN %d", hfirst)
		case !chained:
			// The previous segment ends early: records are missing.
			bad = fmt.Errorf("broken chain: expected first LSN %d", next)
		default:
			it.reset(f, first, size)
			for r, ok := it.next(); ok; r, ok = it.next() {
				if fn != nil && r.Type != TypeSync {
					fn(r)
				}
			}
			if it.err != nil {
				return nil, fmt.Errorf("hrl: reading %s: %w", name, it.err)
			}
			end, last, bad = it.off, it.last, it.bad
		}
		if bad != nil && chained && i+1 < len(names) && headerFirst(lay.files[i+1], names[i+1]) == last+1 {
			bad = nil
		}
		if bad == nil {
			lay.segs = append(lay.segs, openedSegment(name, first, last, f, end))
			next = last + 1
			continue
		}
		// A bad spot is a torn end of unsynced data, unless a sync record
		// written after it says it had been made durable.
		badSeg, badOff := i, end
		if headerOK && !chained {
			badSeg, badOff = i-1, lay.segs[len(lay.segs)-1].size // the gap is at the end of the previous one
		}
		if vouched(names, lay.files, lay.sizes, badSeg, badOff) {
			return nil, &CorruptionError{Segment: names[badSeg], Offset: badOff, Reason: bad.Error() + " (in data a completed sync had made durable)"}
		}
		lay.cut = i
		lay.torn = &Torn{Segment: name, Reason: bad.Error()}
		if chained {
			// Records before the bad one stay: the segment is cut there.
			lay.segs = append(lay.segs, openedSegment(name, first, last, f, end))
			lay.torn.Offset = end
		}
		for j := i; j < len(names); j++ {
			lay.torn.Bytes += lay.sizes[j]
		}
		lay.torn.Bytes -= lay.torn.Offset
		break
	}
	return lay, nil
}

// openedSegment is a segment found at Open, holding records up to last
// in its first end bytes.
func openedSegment(name string, first, last uint64, f vfs.File, end int64) *Segment {
	s := &Segment{first: first, name: name, file: f, last: last, size: end}
	s.wsize.Store(end)
	return s
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
	lay, err := readLayout(l.fs, l.dir, files, nil)
	if err != nil {
		return err
	}
	defer lay.close(true)
	l.segs, l.torn = lay.segs, lay.torn // Open closes them if this fails
	if lay.torn != nil {
		if err := l.cutTail(lay); err != nil {
			return err
		}
	}
	l.next = max(1, l.opts.FirstLSN)
	if len(l.segs) == 0 {
		l.prepareHead()
		seg, err := l.createSegment(l.next, nil)
		if err != nil {
			return err
		}
		l.segs = append(l.segs, seg)
		return l.fs.SyncDir(l.dir)
	}
	l.next = l.segs[len(l.segs)-1].last + 1
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
	size, err := f.Size()
	if err != nil {
		f.Close()
		return fmt.Errorf("hrl: %w", err)
	}
	l.free = append(l.free, freeFile{name: name, file: f, size: size})
	return nil
}

// cutTail cuts the torn tail a layout found: the segment where it starts
// is cut short (or removed when none of it is kept) and every later one
// removed, as a torn end may span segments.
func (l *Log) cutTail(lay *layout) error {
	for j := len(lay.names) - 1; j > lay.cut; j-- {
		if err := l.fs.Remove(l.path(lay.names[j])); err != nil {
			return fmt.Errorf("hrl: cutting torn tail: %w", err)
		}
	}
	if i := lay.cut; len(lay.segs) > 0 && lay.segs[len(lay.segs)-1].file == lay.files[i] {
		if err := lay.files[i].Truncate(lay.torn.Offset); err != nil {
			return fmt.Errorf("hrl: cutting torn tail: %w", err)
		}
		if err := lay.files[i].Sync(); err != nil {
			return fmt.Errorf("hrl: cutting torn tail: %w", err)
		}
	} else if err := l.fs.Remove(l.path(lay.names[i])); err != nil {
		return fmt.Errorf("hrl: cutting torn tail: %w", err)
	}
	return l.fs.SyncDir(l.dir)
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
