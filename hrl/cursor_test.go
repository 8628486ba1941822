package hrl

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/vrep-io/vrep/internal/vfs"
)

var errEnough = errors.New("enough")

// scanBatch reads up to n records from from on, through ScanFrom at c.
func scanBatch(t *testing.T, l *Log, c Cursor, from uint64, n int) (Cursor, []Record) {
	t.Helper()
	var got []Record
	c, err := l.ScanFrom(c, from, func(r Record) error {
		if len(got) == n {
			return errEnough
		}
		r.Payload = bytes.Clone(r.Payload)
		got = append(got, r)
		return nil
	})
	if err != nil && !errors.Is(err, errEnough) {
		t.Fatalf("ScanFrom(%d): %v", from, err)
	}
	return c, got
}

// TestScanFromMatchesScan: batches read through the cursor each returns
// (as a shipper reads them) are exactly what Scan reads from the same
// LSN, while the log grows across segments, is synced, drops what was
// read, and a reader sometimes starts over from an earlier LSN (a
// reconnect whose replica had less).
func TestScanFromMatchesScan(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 7))
		l := mustOpen(t, vfs.OS{}, t.TempDir(), Options{SegmentSize: 32 << 10, Recycle: int(seed % 3)})
		var c Cursor
		from := uint64(1)
		for step := range 300 {
			for range r.IntN(6) {
				p := make([]byte, 512*(1+r.IntN(6)))
				for i := range p {
					p[i] = byte(r.Uint32())
				}
				appendWait(t, l, Entry{Type: TypeWrite, Offset: uint64(r.IntN(1<<20)) &^ 511, Payload: p})
			}
			if r.IntN(3) == 0 {
				if err := l.Sync(); err != nil {
					t.Fatal(err)
				}
			}
			if r.IntN(10) == 0 && from > 1 {
				from -= uint64(r.IntN(int(min(from-1, 40)) + 1)) // start over a little earlier
			}
			var want []Record
			n := 1 + r.IntN(20)
			if err := l.Scan(from, func(rec Record) error {
				if len(want) == n {
					return errEnough
				}
				rec.Payload = bytes.Clone(rec.Payload)
				want = append(want, rec)
				return nil
			}); err != nil && !errors.Is(err, errEnough) {
				t.Fatal(err)
			}
			var got []Record
			c, got = scanBatch(t, l, c, from, n)
			if len(got) != len(want) {
				t.Fatalf("seed %d step %d: ScanFrom(%d) read %d records, Scan %d", seed, step, from, len(got), len(want))
			}
			for i := range got {
				if got[i].LSN != want[i].LSN || got[i].Offset != want[i].Offset || !bytes.Equal(got[i].Payload, want[i].Payload) {
					t.Fatalf("seed %d step %d: record %d: ScanFrom gave LSN %d, Scan LSN %d", seed, step, i, got[i].LSN, want[i].LSN)
				}
			}
			if len(got) > 0 {
				from = got[len(got)-1].LSN + 1
			}
			if r.IntN(8) == 0 {
				if err := l.DropThrough(from - 1); err != nil {
					t.Fatal(err)
				}
			}
		}
		l.Close()
	}
}

// TestScanFromReadsOn: a scan from a cursor does not read the segment's
// bytes before it again. Bytes there are overwritten with garbage: Scan
// from the segment's start reports the corruption, the cursor's scan
// reads the records after it.
func TestScanFromReadsOn(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, vfs.OS{}, dir, Options{SegmentSize: 1 << 20})
	defer l.Close()
	p := bytes.Repeat([]byte{0xAB}, 4096)
	for i := range 20 {
		appendWait(t, l, Entry{Type: TypeWrite, Offset: uint64(i) * 4096, Payload: p})
	}
	c, got := scanBatch(t, l, Cursor{}, 1, 10)
	if len(got) != 10 || got[9].LSN != 10 {
		t.Fatalf("first batch: %d records", len(got))
	}
	segs := l.Segments()
	f, err := os.OpenFile(filepath.Join(dir, segs[0].Name), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xFF}, 64), HeaderSize+8); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := l.Scan(11, func(Record) error { return nil }); !IsCorruption(err) {
		t.Fatalf("Scan from the segment's start over garbage: %v", err)
	}
	_, got = scanBatch(t, l, c, 11, 100)
	if len(got) != 10 || got[0].LSN != 11 || got[9].LSN != 20 {
		t.Fatalf("the scan from the cursor read %d records", len(got))
	}
}

// TestAppendRefusesWhatReadsAsCorrupt: a write of no bytes, or a trim or
// zero with no span or with a payload, is refused with an error, and the
// log after it reads back whole (a reader would have taken such a record
// for corruption and stopped there).
func TestAppendRefusesWhatReadsAsCorrupt(t *testing.T) {
	l := mustOpen(t, vfs.OS{}, t.TempDir(), Options{})
	defer l.Close()
	appendWait(t, l, Entry{Type: TypeWrite, Offset: 0, Payload: make([]byte, 512)})
	for _, e := range []Entry{
		{Type: TypeWrite, Offset: 512},
		{Type: TypeTrim, Offset: 512},
		{Type: TypeZero, Offset: 512, Span: 512, Payload: make([]byte, 512)},
	} {
		if _, _, err := l.Append(e); err == nil {
			t.Fatalf("Append(%v with span %d, %d bytes) succeeded", e.Type, e.Span, len(e.Payload))
		}
	}
	appendWait(t, l, Entry{Type: TypeWrite, Offset: 1024, Payload: make([]byte, 512)})
	n := 0
	if err := l.Scan(1, func(Record) error { n++; return nil }); err != nil || n != 2 {
		t.Fatalf("the log reads back %d records: %v", n, err)
	}
}
