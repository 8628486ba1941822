package hrl

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/vfs"
	"github.com/vrep-io/vrep/internal/waitfor"
)

// watchSpares reports the end of every spare preparation of any log, as
// the error it ended with (nil: the spare is kept).
func watchSpares(t *testing.T) <-chan error {
	t.Helper()
	ch := make(chan error, 1000)
	spareHook = func(_ *Log, err error) {
		select {
		case ch <- err:
		default:
		}
	}
	t.Cleanup(func() { spareHook = nil })
	return ch
}

// nextSpare waits for the next spare preparation to end and returns its
// error.
func nextSpare(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(waitfor.Patience):
		t.Fatalf("waited %v for a spare segment file", waitfor.Patience)
		return nil
	}
}

func fileSize(t *testing.T, fs vfs.FS, name string) int64 {
	t.Helper()
	b, err := vfs.ReadFile(fs, name)
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(b))
}

// flushBound lowers the number of small syncs in a row that make a log
// flush-bound to n for the test.
func flushBound(t *testing.T, n int) {
	t.Helper()
	old := flushBoundSyncs.Load()
	flushBoundSyncs.Store(int32(n))
	t.Cleanup(func() { flushBoundSyncs.Store(old) })
}

// flushEach appends n records to l, each followed by a Sync: what a guest
// flushing after every small write does.
func flushEach(t *testing.T, l *Log, lsn *uint64, n int) {
	t.Helper()
	for range n {
		*lsn++
		appendWait(t, l, write(*lsn, recyclePayload(*lsn)))
		if err := l.Sync(); err != nil {
			t.Fatal(err)
		}
	}
}

// fillSegment appends records to l until it rolls to a new segment, and
// returns the new segment's file name.
func fillSegment(t *testing.T, l *Log, lsn *uint64) string {
	t.Helper()
	n := len(l.Segments())
	for len(l.Segments()) == n {
		*lsn++
		appendWait(t, l, write(*lsn, recyclePayload(*lsn)))
	}
	return "/log/" + l.Segments()[n].Name
}

// noSpares fails the test if any log prepares a spare.
func noSpares(t *testing.T, why string) {
	t.Helper()
	spareHook = func(*Log, error) { t.Errorf("a spare was prepared %s", why) }
	t.Cleanup(func() { spareHook = nil })
}

// TestFlushBoundLogWritesOverSpares: a new log starts in a new file; once
// it is flushed after every write, it prepares a spare, seals its first
// segment early at the next append and goes on in the spare: a file
// SegmentSize long from the start, zeros past the records. The next
// segment is a spare too, and the log reads back and checks clean.
func TestFlushBoundLogWritesOverSpares(t *testing.T) {
	spares := watchSpares(t)
	headSize(t, 0) // a new file, as when the zeros ahead could not be written
	flushBound(t, 4)
	fs := vfs.NewMem(31)
	const segSize = 4096
	opts := Options{SegmentSize: segSize, Recycle: 1}
	l := mustOpen(t, fs, "/log", opts)
	first := "/log/" + l.Segments()[0].Name
	var lsn uint64
	flushEach(t, l, &lsn, 4)
	if err := nextSpare(t, spares); err != nil {
		t.Fatal(err)
	}
	lsn++
	appendWait(t, l, write(lsn, recyclePayload(lsn)))
	segs := l.Segments()
	if len(segs) != 2 {
		t.Fatalf("%d segments after the spare was ready: the first, a new file, was not sealed early", len(segs))
	}
	if n := fileSize(t, fs, first); n != segs[0].Size {
		t.Fatalf("the sealed first segment's file holds %d bytes for %d of records", n, segs[0].Size)
	}
	second := "/log/" + segs[1].Name
	b, err := vfs.ReadFile(fs, second)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != segSize {
		t.Fatalf("the second segment's file holds %d bytes, want %d: it is not the spare", len(b), segSize)
	}
	if end := segs[1].Size; !isZero(b[end:]) {
		t.Fatalf("the spare holds more than zeros past the records (%d bytes)", end)
	}
	flushEach(t, l, &lsn, 4) // flush-bound in the second segment too
	if err := nextSpare(t, spares); err != nil {
		t.Fatal(err)
	}
	third := fillSegment(t, l, &lsn)
	if n := fileSize(t, fs, third); n != segSize {
		t.Fatalf("the third segment's file holds %d bytes, want %d: it is not a spare", n, segSize)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if torn, err := Check(fs, "/log", func(Record) {}); err != nil || torn != nil {
		t.Fatalf("Check after Close: %v, %v", err, torn)
	}
	l = mustOpen(t, fs, "/log", opts)
	defer l.Close()
	got := scanAll(t, l, 1)
	if len(got) != int(lsn) || got[len(got)-1].P != recyclePayload(lsn) {
		t.Fatalf("%d records after reopening, want %d", len(got), lsn)
	}
}

// TestNoSpareUnlessFlushBound: a log written without syncs, one synced
// with more than flushBoundBytes between syncs, and one sealed after
// every sync (points on an idle disk) prepare no spare: zeros would cost
// them a segment's worth of writes each.
func TestNoSpareUnlessFlushBound(t *testing.T) {
	noSpares(t, "for a log that is not flush-bound")
	flushBound(t, 4)
	opts := Options{SegmentSize: 4096, Recycle: 2}
	t.Run("bulk", func(t *testing.T) {
		l := mustOpen(t, vfs.NewMem(35), "/log", opts)
		defer l.Close()
		var lsn uint64
		for range 4 {
			fillSegment(t, l, &lsn)
		}
	})
	t.Run("large syncs", func(t *testing.T) {
		defer func(n int64) { flushBoundBytes = n }(flushBoundBytes)
		flushBoundBytes = 16 // every record is larger
		l := mustOpen(t, vfs.NewMem(36), "/log", opts)
		defer l.Close()
		var lsn uint64
		flushEach(t, l, &lsn, 40)
	})
	t.Run("sealed often", func(t *testing.T) {
		l := mustOpen(t, vfs.NewMem(37), "/log", opts)
		defer l.Close()
		var lsn uint64
		for range 20 {
			flushEach(t, l, &lsn, 2)
			if _, err := l.Seal(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestReopenedLogUsesItsSpare: a spare left by a closed log is the file
// the reopened log's next segment is written over.
func TestReopenedLogUsesItsSpare(t *testing.T) {
	spares := watchSpares(t)
	flushBound(t, 4)
	fs := vfs.NewMem(32)
	const segSize = 4096
	opts := Options{SegmentSize: segSize, Recycle: 1}
	l := mustOpen(t, fs, "/log", opts)
	var lsn uint64
	flushEach(t, l, &lsn, 4)
	if err := nextSpare(t, spares); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// Mark the spare past its segment's bytes, to know it when it comes
	// back as a segment (a batch written over a reused file is padded
	// with zeros to the end of its page).
	const mark = "this spare"
	f, err := fs.Open("/log/" + spareName)
	if err != nil {
		t.Fatalf("no spare left by the closed log: %v", err)
	}
	f.WriteAt([]byte(mark), segSize+100)
	f.Sync()
	l = mustOpen(t, fs, "/log", opts)
	defer l.Close()
	next := fillSegment(t, l, &lsn)
	b, err := vfs.ReadFile(fs, next)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(mark)) {
		t.Fatalf("the reopened log's new segment (%d bytes) is not written over the spare it found", len(b))
	}
	if got := scanAll(t, l, 1); len(got) != int(lsn) {
		t.Fatalf("%d records, want %d", len(got), lsn)
	}
}

// TestNoSpareWithoutRecycle: with Recycle 0 a log keeps no spare: every
// segment is a new file as long as what it holds.
func TestNoSpareWithoutRecycle(t *testing.T) {
	spareHook = func(*Log, error) { t.Error("a spare was prepared with Recycle 0") }
	t.Cleanup(func() { spareHook = nil })
	flushBound(t, 1) // every sync would ask for one
	fs := vfs.NewMem(33)
	l := mustOpen(t, fs, "/log", Options{SegmentSize: 4096})
	var lsn uint64
	for range 3 {
		fillSegment(t, l, &lsn)
		flushEach(t, l, &lsn, 2)
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	segs := l.Segments()
	for _, s := range segs[:len(segs)-1] {
		if n := fileSize(t, fs, "/log/"+s.Name); n != s.Size {
			t.Errorf("segment %s: file of %d bytes for %d bytes of records", s.Name, n, s.Size)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	names, _ := fs.List("/log")
	for _, n := range names {
		if strings.HasSuffix(n, freeSuffix) {
			t.Errorf("file %s kept with Recycle 0", n)
		}
	}
}

// TestSpareFailureKeepsTheLogGoing: a spare that cannot be written (a
// full disk) is removed and the log goes on with new files: no error
// reaches a caller, and no further spare is tried.
func TestSpareFailureKeepsTheLogGoing(t *testing.T) {
	spares := watchSpares(t)
	fs := vfs.NewMem(34)
	errFull := errors.New("injected ENOSPC")
	fs.Inject = func(op, name string) error {
		if op == "write" && filepath.Base(name) == spareName {
			return errFull
		}
		return nil
	}
	flushBound(t, 4)
	opts := Options{SegmentSize: 4096, Recycle: 2}
	l := mustOpen(t, fs, "/log", opts)
	defer l.Close()
	var lsn uint64
	flushEach(t, l, &lsn, 4)
	if err := nextSpare(t, spares); !errors.Is(err, errFull) {
		t.Fatalf("spare preparation ended with %v, want the injected error", err)
	}
	flushEach(t, l, &lsn, 8) // still flush-bound: no second try
	for range 3 {
		fillSegment(t, l, &lsn)
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := scanAll(t, l, 1); len(got) != int(lsn) {
		t.Fatalf("%d records, want %d", len(got), lsn)
	}
	if err := l.Close(); err != nil { // waits for the preparer
		t.Fatal(err)
	}
	if _, err := fs.Open("/log/" + spareName); err == nil {
		t.Error("the failed spare was left in place")
	}
	select {
	case err := <-spares:
		t.Errorf("a spare was tried again after a failure (%v)", err)
	default:
	}
}

// TestSparePowerCut cuts the power at random moments of a log whose new
// segments are spares, no dropped file ever being kept: while a spare is
// half filled, and while records go into a segment that was a spare.
// Recovery keeps every synced record and a clean prefix of the rest, and
// never takes a spare's zeros for damage; Check agrees with Open.
func TestSparePowerCut(t *testing.T) {
	flushBound(t, 1) // every sync asks for a spare, and rolls early to it
	seeds := uint64(300)
	if testing.Short() {
		seeds = 100
	}
	defer func(n int64) { spareChunk = n }(spareChunk)
	spareChunk = 256 // several writes per spare, for the cut to land between
	var mu sync.Mutex
	cutSpares := map[*Log]bool{}
	spareHook = func(l *Log, err error) {
		if errors.Is(err, vfs.ErrCut) {
			mu.Lock()
			cutSpares[l] = true
			mu.Unlock()
		}
	}
	t.Cleanup(func() { spareHook = nil })
	var inSpare, inSpareSegment int
	headSize(t, headZeros)
	for seed := range seeds {
		opts := Options{SegmentSize: 2048, Recycle: 1 + int(seed%2)}
		// A new file first, or a reused head of zeros shorter than a
		// segment or a segment long. Both are under a page, which is all
		// the zeros count in, so the log leaves either for a spare as
		// soon as one is ready.
		headZeros = []int64{0, 512, 2048}[seed%3]
		fs := vfs.NewMem(seed)
		l := mustOpen(t, fs, "/log", opts)
		fs.CutAfter(5 + int(seed*7919%300))
		var lsn, synced uint64
		for i := 0; i < 2000; i++ {
			_, b, err := l.Append(write(lsn+1, recyclePayload(lsn+1)))
			if err != nil || b.Wait() != nil {
				break
			}
			lsn++
			if i%5 == 2 {
				if l.Sync() != nil {
					break
				}
				synced = lsn
			}
		}
		l.Close()
		if !fs.IsCut() {
			t.Fatalf("seed %d: the power was never cut", seed)
		}
		mu.Lock()
		if cutSpares[l] {
			inSpare++
		}
		mu.Unlock()
		if l.wseg.reused && l.wseg.first > 1 { // not the head a new log starts in
			inSpareSegment++
		}
		fs.Revive()
		what := fmt.Sprintf("seed %d (power cut, recycle %d)", seed, opts.Recycle)
		if v := checkAgrees(t, fs, opts, what); v == "corrupt" {
			t.Fatalf("%s: recovery reports corruption", what)
		}
		l = mustOpen(t, fs, "/log", opts)
		got := scanAll(t, l, 1)
		l.Close()
		for i, r := range got {
			if r.LSN != uint64(i+1) || r.P != recyclePayload(r.LSN) {
				t.Fatalf("%s: record %d (LSN %d) reads %.20q", what, i, r.LSN, r.P)
			}
		}
		if uint64(len(got)) < synced {
			t.Fatalf("%s: %d records survive, %d were synced", what, len(got), synced)
		}
	}
	t.Logf("of %d cuts, %d landed while a spare was being filled, %d while a segment that was a spare was written", seeds, inSpare, inSpareSegment)
	if inSpare == 0 || inSpareSegment == 0 {
		t.Errorf("the cuts do not cover spares: %d in a spare's filling, %d in a segment that was a spare", inSpare, inSpareSegment)
	}
}

// TestSpareWhileRolling rolls and drops segments as fast as records come,
// with one or two files kept, so that the preparer makes a spare just as
// the writer takes the one before. A new spare must never be created
// under the name of one the writer has taken and not yet renamed: it
// would truncate and zero the new segment, and its own name would then
// be gone ("rename spare.free: file does not exist"). The race is
// narrow: without the lock across the rename, a run of this test hit it
// about one time in three.
func TestSpareWhileRolling(t *testing.T) {
	flushBound(t, 1) // every sync asks for a spare, and rolls early to it
	for seed := range uint64(200) {
		l := mustOpen(t, vfs.NewMem(seed), "/log", Options{SegmentSize: 1024, Recycle: 1 + int(seed%2)})
		var lsn uint64
		for i := range 300 {
			lsn++
			appendWait(t, l, write(lsn, recyclePayload(lsn)))
			if i%4 == 0 {
				if err := l.Sync(); err != nil {
					t.Fatalf("seed %d: %v", seed, err)
				}
				if err := l.DropThrough(lsn - 2); err != nil {
					t.Fatalf("seed %d: %v", seed, err)
				}
			}
		}
		if got := scanAll(t, l, 1); len(got) == 0 || got[len(got)-1].LSN != lsn || got[len(got)-1].P != recyclePayload(lsn) {
			t.Fatalf("seed %d: %d records, the last of %d lost", seed, len(got), lsn)
		}
		if err := l.Close(); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
	}
}

// checkTimeline checks that l's records are consecutive, each the payload
// wrote holds for its LSN, and reach at least synced.
func checkTimeline(t *testing.T, l *Log, wrote map[uint64]string, synced uint64, what string) {
	t.Helper()
	got := scanAll(t, l, 1)
	for i, r := range got {
		if i > 0 && r.LSN != got[i-1].LSN+1 {
			t.Fatalf("%s: LSN %d follows %d", what, r.LSN, got[i-1].LSN)
		}
		if r.P != wrote[r.LSN] {
			t.Fatalf("%s: LSN %d reads %.24q, this timeline wrote %.24q", what, r.LSN, r.P, wrote[r.LSN])
		}
	}
	if last := l.LastLSN(); last < synced {
		t.Fatalf("%s: the log ends at LSN %d, %d were synced", what, last, synced)
	}
}

// TestReusedFileRenameDurableFirst: the power is cut after a segment
// written over a spare was fsynced and before the directory was, so the
// segment's records are durable in the file under the spare's name. The
// reopened log, sealed at once (a point does that), writes the same LSNs
// again over that file, records of the same sizes, syncs some and is cut
// again: the bytes past its last sync, where they fall back to the first
// timeline's, must not read as records. Without the rename made durable
// before a reused file is written, they do: writes lost at the first cut
// come back after the second.
func TestReusedFileRenameDurableFirst(t *testing.T) {
	flushBound(t, 1)
	headSize(t, 0) // the log starts in a new file: the spare is the first kept file
	for seed := range uint64(40) {
		flushBoundSyncs.Store(1)
		spares := watchSpares(t)
		fs := vfs.NewMem(seed)
		opts := Options{SegmentSize: 16 << 10, Recycle: 1}
		l := mustOpen(t, fs, "/log", opts)
		var lsn uint64
		flushEach(t, l, &lsn, 1) // flush-bound: a spare, and no append to roll onto it yet
		if err := nextSpare(t, spares); err != nil {
			t.Fatal(err)
		}
		// No further spare: its own directory sync would take the
		// injected failure below. The log stays flush-bound until its
		// next sync, so the next append still rolls onto this spare.
		flushBoundSyncs.Store(1 << 30)
		wrote := map[uint64]string{}
		for i := uint64(1); i <= lsn; i++ {
			wrote[i] = recyclePayload(i)
		}
		// The next append rolls onto the spare, renamed to a segment; the
		// first directory sync after its data was fsynced fails, and the
		// power goes. (The file keeps the name it was opened with.)
		errCut := errors.New("injected: the power goes before the directory is synced")
		var armed bool
		fs.SetInject(func(op, name string) error {
			switch {
			case op == "sync" && filepath.Base(name) == spareName:
				armed = true
			case op == "syncdir" && armed:
				return errCut
			}
			return nil
		})
		payload := func(timeline int, lsn uint64) string {
			return fmt.Sprintf("timeline %d LSN %4d %0300d", timeline, lsn, 0)
		}
		for range 30 {
			lsn++
			wrote[lsn] = payload(1, lsn) // kept if the cut leaves them
			appendWait(t, l, write(lsn, wrote[lsn]))
		}
		if err := l.Sync(); !errors.Is(err, errCut) {
			t.Fatalf("seed %d: Sync = %v, want the injected failure", seed, err)
		}
		fs.Cut()
		l.Close()
		fs.SetInject(nil)
		fs.Revive()
		l = mustOpen(t, fs, "/log", opts)
		if _, err := l.Seal(); err != nil {
			t.Fatal(err)
		}
		checkTimeline(t, l, wrote, 1, fmt.Sprintf("seed %d after the first cut", seed))
		lsn = l.LastLSN()
		for range 10 {
			lsn++
			wrote[lsn] = payload(2, lsn)
			appendWait(t, l, write(lsn, wrote[lsn]))
		}
		if err := l.Sync(); err != nil {
			t.Fatal(err)
		}
		synced := lsn
		for range 10 {
			lsn++
			wrote[lsn] = payload(2, lsn)
			appendWait(t, l, write(lsn, wrote[lsn]))
		}
		fs.Cut()
		l.Close()
		fs.Revive()
		l, err := Open(fs, "/log", opts)
		if err != nil {
			t.Fatalf("seed %d: Open after the second cut: %v", seed, err)
		}
		checkTimeline(t, l, wrote, synced, fmt.Sprintf("seed %d after the second cut", seed))
		l.Close()
	}
}

// TestShortKeptFileIsNoSpare: a segment sealed early (a point) and
// dropped is kept short; a flush-bound log does not take it for a spare
// (appends would extend it block by block): it prepares a spare and rolls
// onto that, SegmentSize long.
func TestShortKeptFileIsNoSpare(t *testing.T) {
	spares := watchSpares(t)
	headSize(t, 0)       // the first segment a new file, dropped short
	flushBound(t, 1<<30) // not flush-bound while the short file is made
	fs := vfs.NewMem(42)
	const segSize = 4096
	opts := Options{SegmentSize: segSize, Recycle: 2}
	l := mustOpen(t, fs, "/log", opts)
	defer l.Close()
	var lsn uint64
	flushEach(t, l, &lsn, 1)
	if _, err := l.Seal(); err != nil {
		t.Fatal(err)
	}
	flushEach(t, l, &lsn, 1)
	if err := l.DropThrough(1); err != nil {
		t.Fatal(err)
	}
	flushBoundSyncs.Store(1)
	flushEach(t, l, &lsn, 1)
	if err := nextSpare(t, spares); err != nil {
		t.Fatalf("no spare with only a short file kept: %v", err)
	}
	lsn++
	appendWait(t, l, write(lsn, recyclePayload(lsn)))
	segs := l.Segments()
	if n := fileSize(t, fs, "/log/"+segs[len(segs)-1].Name); n != segSize {
		t.Fatalf("the flush-bound log rolled onto a file of %d bytes, want a spare of %d", n, segSize)
	}
}
