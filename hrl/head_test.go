package hrl

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/vrep-io/vrep/internal/vfs"
)

// headSize sets how many bytes of zeros a new log writes ahead of its
// first segment, for the test.
func headSize(t *testing.T, n int64) {
	t.Helper()
	old := headZeros
	headZeros = n
	t.Cleanup(func() { headZeros = old })
}

// checkRecords fails the test unless l holds the records flushEach
// appended, LSNs 1 to n.
func checkRecords(t *testing.T, l *Log, n uint64, what string) {
	t.Helper()
	got := scanAll(t, l, 1)
	if uint64(len(got)) != n {
		t.Fatalf("%s: %d records, want %d", what, len(got), n)
	}
	for i, r := range got {
		if lsn := uint64(i) + 1; r.LSN != lsn || r.P != recyclePayload(lsn) {
			t.Fatalf("%s: record %d is LSN %d %.24q, want LSN %d %.24q", what, i, r.LSN, r.P, lsn, recyclePayload(lsn))
		}
	}
}

// TestNewLogStartsOverZeros: a new log that recycles files writes its
// first records over zeros made durable at Open, so that a flush after
// each small write overwrites written blocks from the first write on.
// Once the log is flush-bound and its spare is ready, the append that
// would go past those zeros (with the sync record after it) rolls onto
// the spare instead of extending the file. The log reads back whole and
// checks clean. Heads of several sizes, and a first record of many sizes
// that shifts the rest, so that some record ends just short of a head's
// end.
func TestNewLogStartsOverZeros(t *testing.T) {
	flushBound(t, 4)
	const segSize = 32 << 10
	for _, head := range []int64{4 << 10, 8 << 10, 12<<10 + 512} {
		for shift := 8; shift <= 400; shift += 8 {
			headSize(t, head)
			spares := watchSpares(t)
			what := fmt.Sprintf("head %d, first record %d bytes", head, shift)
			fs := vfs.NewMem(uint64(shift))
			opts := Options{SegmentSize: segSize, Recycle: 1}
			l := mustOpen(t, fs, "/log", opts)
			first := "/log/" + l.Segments()[0].Name
			if n := fileSize(t, fs, first); n != head {
				t.Fatalf("%s: a new log's first segment file holds %d bytes, want the zeros written ahead", what, n)
			}
			lsn := uint64(1)
			appendWait(t, l, write(lsn, strings.Repeat("s", shift)))
			flushEach(t, l, &lsn, 4)
			if err := nextSpare(t, spares); err != nil {
				t.Fatal(err)
			}
			for len(l.Segments()) == 1 {
				flushEach(t, l, &lsn, 1)
				if n := fileSize(t, fs, first); n != head {
					t.Fatalf("%s: the first segment's file grew to %d bytes past its zeros while a spare was ready", what, n)
				}
			}
			segs := l.Segments()
			if segs[0].Size > head {
				t.Fatalf("%s: the first segment holds %d bytes of records, more than its zeros", what, segs[0].Size)
			}
			if n := fileSize(t, fs, "/log/"+segs[1].Name); n != segSize {
				t.Fatalf("%s: the second segment's file holds %d bytes, want %d: it is not the spare", what, n, segSize)
			}
			closeCheckReopen(t, l, fs, "/log", opts, func(l *Log) {
				got := scanAll(t, l, 1)
				if uint64(len(got)) != lsn || got[0].P != strings.Repeat("s", shift) {
					t.Fatalf("%s: reopened, %d records, want %d", what, len(got), lsn)
				}
				for _, r := range got[1:] {
					if r.P != recyclePayload(r.LSN) {
						t.Fatalf("%s: reopened, LSN %d reads %.24q", what, r.LSN, r.P)
					}
				}
			})
		}
	}
}

// TestLongFileSealedEarlyStaysLong: a spare whose segment a point seals
// a few records in is still a long file when it is dropped: the log keeps
// it as one, and a flush-bound log writes over it instead of preparing a
// new spare.
func TestLongFileSealedEarlyStaysLong(t *testing.T) {
	headSize(t, 0)
	spares := watchSpares(t)
	flushBound(t, 4)
	const segSize = 16 << 10
	fs := vfs.NewMem(9)
	opts := Options{SegmentSize: segSize, Recycle: 2}
	l := mustOpen(t, fs, "/log", opts)
	defer l.Close()
	var lsn uint64
	flushEach(t, l, &lsn, 4)
	if err := nextSpare(t, spares); err != nil {
		t.Fatal(err)
	}
	flushBoundSyncs.Store(1 << 30) // no further spare
	flushEach(t, l, &lsn, 1)       // rolls onto the spare
	if segs := l.Segments(); len(segs) != 2 || fileSize(t, fs, "/log/"+segs[1].Name) != segSize {
		t.Fatalf("the log did not roll onto its spare: %+v", segs)
	}
	if _, err := l.Seal(); err != nil { // a point, one record into the spare
		t.Fatal(err)
	}
	flushEach(t, l, &lsn, 1)
	if err := l.DropThrough(l.Segments()[1].Last); err != nil {
		t.Fatal(err)
	}
	l.freeMu.Lock()
	kept := slices.Clone(l.free)
	l.freeMu.Unlock()
	if !slices.ContainsFunc(kept, l.long) {
		t.Fatalf("the dropped spare is kept as a short file: %+v", kept)
	}
}

// TestNewLogWithoutRecycleHasNoHead: a log that does not recycle files
// never writes zeros ahead; its first segment is a new file.
func TestNewLogWithoutRecycleHasNoHead(t *testing.T) {
	headSize(t, 8<<10)
	fs := vfs.NewMem(8)
	l := mustOpen(t, fs, "/log", Options{SegmentSize: 32 << 10})
	defer l.Close()
	if n := fileSize(t, fs, "/log/"+l.Segments()[0].Name); n != HeaderSize {
		t.Fatalf("the first segment file of a log that does not recycle holds %d bytes, want its %d-byte header", n, HeaderSize)
	}
}

// TestNewLogHeadPowerCut: the power is cut at each step of a new log's
// Open in turn: the writes of the zeros, their sync, the directory syncs,
// the rename to the first segment. The log opened after the cut takes
// records flushed one by one across several segments, reads them back,
// and checks clean once closed.
func TestNewLogHeadPowerCut(t *testing.T) {
	headSize(t, 8<<10)
	defer func(n int64) { spareChunk = n }(spareChunk)
	spareChunk = 1 << 10 // several writes, for cuts between them
	opts := Options{SegmentSize: 16 << 10, Recycle: 1}
	for n := 0; ; n++ {
		fs := vfs.NewMem(uint64(n))
		fs.CutAfter(n)
		l, err := Open(fs, "/log", opts)
		if !fs.IsCut() {
			if err != nil {
				t.Fatal(err)
			}
			l.Close()
			if n < 8 {
				t.Fatalf("Open made only %d changes: the zeros were not written ahead", n)
			}
			return
		}
		if err == nil {
			t.Fatalf("cut before change %d: Open succeeded on a file system without power", n)
		}
		fs.Revive()
		l = mustOpen(t, fs, "/log", opts)
		var lsn uint64
		flushEach(t, l, &lsn, 100)
		if len(l.Segments()) < 2 {
			t.Fatalf("cut before change %d: 100 records stayed in one segment", n)
		}
		closeCheckReopen(t, l, fs, "/log", opts, func(l *Log) { checkRecords(t, l, lsn, "reopened") })
	}
}
