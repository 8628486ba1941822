package hrl

import (
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
// would go past those zeros rolls onto the spare instead of extending the
// file. The log reads back whole and checks clean.
func TestNewLogStartsOverZeros(t *testing.T) {
	spares := watchSpares(t)
	flushBound(t, 4)
	const segSize, head = 32 << 10, 8 << 10
	headSize(t, head)
	fs := vfs.NewMem(7)
	opts := Options{SegmentSize: segSize, Recycle: 1}
	l := mustOpen(t, fs, "/log", opts)
	first := "/log/" + l.Segments()[0].Name
	if n := fileSize(t, fs, first); n != head {
		t.Fatalf("a new log's first segment file holds %d bytes, want the %d bytes of zeros written ahead", n, head)
	}
	var lsn uint64
	flushEach(t, l, &lsn, 4)
	if err := nextSpare(t, spares); err != nil {
		t.Fatal(err)
	}
	for len(l.Segments()) == 1 {
		flushEach(t, l, &lsn, 1)
		if n := fileSize(t, fs, first); n != head {
			t.Fatalf("the first segment's file grew to %d bytes past its %d of zeros while a spare was ready", n, head)
		}
	}
	segs := l.Segments()
	if segs[0].Size > head {
		t.Fatalf("the first segment holds %d bytes of records, more than its %d of zeros", segs[0].Size, head)
	}
	if n := fileSize(t, fs, "/log/"+segs[1].Name); n != segSize {
		t.Fatalf("the second segment's file holds %d bytes, want %d: it is not the spare", n, segSize)
	}
	closeCheckReopen(t, l, fs, "/log", opts, func(l *Log) { checkRecords(t, l, lsn, "reopened") })
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
