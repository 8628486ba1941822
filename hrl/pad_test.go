package hrl

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/vrep-io/vrep/internal/vfs"
)

// TestReusedFilePaddedToPage: a batch written over a reused file is
// followed by zeros to the next page boundary (so the write never reads a
// page from the disk first), the bytes past that page keep what the
// earlier use left, and the log reads back whole, before and after a
// reopen.
func TestReusedFilePaddedToPage(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 256 << 10, Recycle: 1, FlushBound: 1 << 30}
	l := mustOpen(t, vfs.OS{}, dir, opts)
	old := bytes.Repeat([]byte{0xab}, 10000)
	lsn := uint64(0)
	fill := func(segs int) {
		for segCount(l) != segs {
			lsn++
			appendWait(t, l, Entry{Type: TypeWrite, Offset: lsn, Payload: old})
		}
	}
	fill(2)
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := l.DropThrough(l.Segments()[0].Last); err != nil {
		t.Fatal(err)
	}
	fill(2) // the next segment is written over the dropped one's file
	l.mu.Lock()
	seg := l.segs[1]
	l.mu.Unlock()
	if !seg.reused {
		t.Fatal("the new segment is not the kept file")
	}
	for i := range 5 {
		lsn++
		appendWait(t, l, write(lsn, string(bytes.Repeat([]byte{'x'}, 100+i*1000))))
		end := seg.wsize.Load()
		b, err := os.ReadFile(filepath.Join(dir, seg.name))
		if err != nil {
			t.Fatal(err)
		}
		next := (end + pageSize - 1) / pageSize * pageSize
		if z := b[end:next]; !bytes.Equal(z, make([]byte, len(z))) {
			t.Fatalf("after a batch ending at %d, bytes %d to %d are not all zeros", end, end, next)
		}
		if b[next] == 0 {
			t.Fatalf("byte %d, past the page the batch ends in, was written over", next)
		}
	}
	want := lsn - l.Segments()[0].First + 1
	check := func(l *Log) {
		t.Helper()
		if got := scanAll(t, l, 0); uint64(len(got)) != want {
			t.Fatalf("%d records, want %d", len(got), want)
		}
	}
	check(l)
	closeCheckReopen(t, l, vfs.OS{}, dir, opts, check)
}

// segCount returns how many segments the log has.
func segCount(l *Log) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.segs)
}
