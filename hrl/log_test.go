package hrl

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/vfs"
	"github.com/vrep-io/vrep/internal/waitfor"
)

var update = flag.Bool("update", false, "rewrite golden fixtures")

func mustOpen(t *testing.T, fs vfs.FS, dir string, opts Options) *Log {
	t.Helper()
	l, err := Open(fs, dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}

func appendWait(t *testing.T, l *Log, e Entry) Pos {
	t.Helper()
	pos, b, err := l.Append(e)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	if err := b.Wait(); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	return pos
}

type rec struct {
	T   Type
	LSN uint64
	Off uint64
	P   string
}

func scanAll(t *testing.T, l *Log, from uint64) []rec {
	t.Helper()
	var out []rec
	err := l.Scan(from, func(r Record) error {
		out = append(out, rec{r.Type, r.LSN, r.Offset, string(r.Payload)})
		return nil
	})
	if err != nil {
		t.Fatalf("Scan: %v", err)
	}
	return out
}

func write(off uint64, s string) Entry {
	return Entry{Type: TypeWrite, Offset: off, Payload: []byte(s)}
}

func TestAppendScanReopen(t *testing.T) {
	fs := vfs.NewMem(1)
	l := mustOpen(t, fs, "/log", Options{SegmentSize: 200})
	var want []rec
	for i := range 20 {
		s := fmt.Sprintf("payload-%02d", i)
		pos := appendWait(t, l, write(uint64(i*4096), s))
		if pos.LSN != uint64(i+1) {
			t.Fatalf("LSN %d, want %d", pos.LSN, i+1)
		}
		got := make([]byte, len(s))
		if err := l.ReadAt(got, pos.Seg, pos.Off, pos.LSN); err != nil || string(got) != s {
			t.Fatalf("ReadAt = %q, %v", got, err)
		}
		want = append(want, rec{TypeWrite, uint64(i + 1), uint64(i * 4096), s})
	}
	mk, _ := Marker{ID: 7, Time: 99, Kind: KindApp, Group: "g1"}.Encode()
	appendWait(t, l, Entry{Type: TypeMarker, Payload: mk})
	want = append(want, rec{TypeMarker, 21, 0, string(mk)})
	appendWait(t, l, Entry{Type: TypeTrim, Offset: 8192, Span: 4096})
	want = append(want, rec{TypeTrim, 22, 8192, ""})
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if len(l.Segments()) < 3 {
		t.Fatalf("expected size-based sealing, got %d segments", len(l.Segments()))
	}
	if got := scanAll(t, l, 1); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("scan:\n got %v\nwant %v", got, want)
	}
	if got := scanAll(t, l, 15); fmt.Sprint(got) != fmt.Sprint(want[14:]) {
		t.Fatalf("scan from 15:\n got %v\nwant %v", got, want[14:])
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = mustOpen(t, fs, "/log", Options{SegmentSize: 200})
	defer l.Close()
	if got := scanAll(t, l, 1); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after reopen:\n got %v\nwant %v", got, want)
	}
	if pos := appendWait(t, l, write(0, "next")); pos.LSN != 23 {
		t.Fatalf("LSN after reopen %d, want 23", pos.LSN)
	}
}

func TestConcurrentAppendsGroupCommit(t *testing.T) {
	fs := vfs.NewMem(2)
	l := mustOpen(t, fs, "/log", Options{SegmentSize: 64 << 10})
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				appendWait(t, l, write(uint64(w), fmt.Sprintf("w%d-%d", w, i)))
			}
		}()
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = mustOpen(t, fs, "/log", Options{})
	defer l.Close()
	next := map[uint64]int{}
	got := scanAll(t, l, 1)
	if len(got) != 1600 {
		t.Fatalf("%d records, want 1600", len(got))
	}
	for i, r := range got {
		if r.LSN != uint64(i+1) {
			t.Fatalf("record %d has LSN %d", i, r.LSN)
		}
		// Each writer's records appear in its own order.
		if want := fmt.Sprintf("w%d-%d", r.Off, next[r.Off]); r.P != want {
			t.Fatalf("record %d = %q, want %q", i, r.P, want)
		}
		next[r.Off]++
	}
}

// build writes n records and syncs, returning the fs and the newest
// segment's path.
func build(t *testing.T, n int, segSize int64) (*vfs.Mem, string) {
	fs := vfs.NewMem(3)
	l := mustOpen(t, fs, "/log", Options{SegmentSize: segSize})
	for i := range n {
		appendWait(t, l, write(uint64(i), fmt.Sprintf("record-%03d", i)))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	segs, _ := fs.List("/log")
	return fs, "/log/" + segs[len(segs)-1]
}

func mutate(t *testing.T, fs vfs.FS, name string, fn func([]byte) []byte) {
	t.Helper()
	b, err := vfs.ReadFile(fs, name)
	if err != nil {
		t.Fatal(err)
	}
	b = fn(b)
	f, err := fs.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(b, 0)
	f.Sync()
	f.Close()
}

func TestTornTailIsCut(t *testing.T) {
	const recLen = RecHeaderSize + 10
	for _, cut := range []int{1, 10, 31, 32, 33, recLen - 1} {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			fs, seg := build(t, 10, 1<<20)
			mutate(t, fs, seg, func(b []byte) []byte { return b[:len(b)-cut] })
			l := mustOpen(t, fs, "/log", Options{})
			defer l.Close()
			got := scanAll(t, l, 1)
			// The tail record may have been a sync record: the last write
			// survives unless the cut reached into it.
			if len(got) < 9 || len(got) > 10 {
				t.Fatalf("%d records survive a %d-byte cut", len(got), cut)
			}
			if pos := appendWait(t, l, write(0, "after")); pos.LSN != uint64(len(got)+1) {
				t.Fatalf("append after the cut got LSN %d", pos.LSN)
			}
		})
	}
	t.Run("zeroed", func(t *testing.T) {
		fs, seg := build(t, 10, 1<<20)
		mutate(t, fs, seg, func(b []byte) []byte { return append(b, make([]byte, 4096)...) })
		l := mustOpen(t, fs, "/log", Options{})
		defer l.Close()
		if got := scanAll(t, l, 1); len(got) != 10 {
			t.Fatalf("%d records after a zeroed tail, want 10", len(got))
		}
	})
}

func TestCorruption(t *testing.T) {
	flip := func(at func(b []byte) int) func([]byte) []byte {
		return func(b []byte) []byte { b[at(b)] ^= 0x40; return b }
	}
	cases := []struct {
		name    string
		segSize int64
		file    func(fs *vfs.Mem, newest string) string
		fn      func([]byte) []byte
	}{
		{"sealed segment", 200, func(*vfs.Mem, string) string { return "/log/0000000000000001.hrl" },
			flip(func([]byte) int { return HeaderSize + RecHeaderSize + 3 })},
		{"header", 1 << 20, func(_ *vfs.Mem, s string) string { return s }, flip(func([]byte) int { return 2 })},
		{"bad version", 1 << 20, func(_ *vfs.Mem, s string) string { return s }, flip(func([]byte) int { return 8 })},
		// Close synced the log and left a sync record at its end, so a
		// bad record before it is damage to durable data.
		{"before a sync record", 1 << 20, func(_ *vfs.Mem, s string) string { return s },
			flip(func([]byte) int { return HeaderSize + 5 })},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fs, newest := build(t, 20, c.segSize)
			mutate(t, fs, c.file(fs, newest), c.fn)
			_, err := Open(fs, "/log", Options{})
			var ce *CorruptionError
			if !IsCorruption(err) || !errors.As(err, &ce) {
				t.Fatalf("Open = %v, want a corruption error", err)
			}
		})
	}
	t.Run("missing segment", func(t *testing.T) {
		fs, _ := build(t, 20, 200)
		segs, _ := fs.List("/log")
		fs.Remove("/log/" + segs[1])
		if _, err := Open(fs, "/log", Options{}); !IsCorruption(err) {
			t.Fatalf("Open = %v, want a broken chain", err)
		}
	})
}

func TestUnsyncedHoleIsTorn(t *testing.T) {
	// Records written but never synced, with a hole in the middle (as
	// writeback can leave them after a power cut): cut at the hole.
	fs := vfs.NewMem(4)
	l := mustOpen(t, fs, "/log", Options{})
	appendWait(t, l, write(0, "synced"))
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		appendWait(t, l, write(uint64(i), "unsynced!"))
	}
	l.Close()
	segs, _ := fs.List("/log")
	name := "/log/" + segs[0]
	mutate(t, fs, name, func(b []byte) []byte {
		// Find the third unsynced record and zero it, keeping those after.
		off := HeaderSize + RecHeaderSize + 6 + RecHeaderSize // first write + sync record
		off += 2 * (RecHeaderSize + 9)
		clear(b[off : off+RecHeaderSize+9])
		return b
	})
	// Close's sync record at the end would make this corruption: drop it.
	mutate(t, fs, name, func(b []byte) []byte { return b[:len(b)-RecHeaderSize] })
	l = mustOpen(t, fs, "/log", Options{})
	defer l.Close()
	if got := scanAll(t, l, 1); len(got) != 3 {
		t.Fatalf("%d records survive, want 3 (the synced one and two before the hole)", len(got))
	}
}

func TestSealAndDrop(t *testing.T) {
	fs := vfs.NewMem(5)
	l := mustOpen(t, fs, "/log", Options{})
	defer l.Close()
	appendWait(t, l, write(0, "a"))
	appendWait(t, l, write(0, "b"))
	last, err := l.Seal()
	if err != nil || last != 2 {
		t.Fatalf("Seal = %d, %v", last, err)
	}
	if last, _ := l.Seal(); last != 2 {
		t.Fatalf("sealing an empty segment = %d, want 2", last)
	}
	appendWait(t, l, write(0, "c"))
	segs := l.Segments()
	if len(segs) != 2 || !segs[0].Sealed || segs[0].Last != 2 || segs[1].First != 3 {
		t.Fatalf("segments %+v", segs)
	}
	if err := l.DropThrough(2); err != nil {
		t.Fatal(err)
	}
	if got := scanAll(t, l, 1); len(got) != 1 || got[0].P != "c" {
		t.Fatalf("after drop: %v", got)
	}
	// The active segment is never dropped.
	if err := l.DropThrough(100); err != nil || len(l.Segments()) != 1 {
		t.Fatalf("DropThrough(100) = %v, %d segments", err, len(l.Segments()))
	}
}

func TestWriteErrorIsSticky(t *testing.T) {
	fs := vfs.NewMem(6)
	l := mustOpen(t, fs, "/log", Options{})
	defer l.Close()
	appendWait(t, l, write(0, "ok"))
	fs.Inject = func(op, _ string) error {
		if op == "write" {
			return errors.New("injected EIO")
		}
		return nil
	}
	_, b, err := l.Append(write(0, "fails"))
	if err == nil {
		err = b.Wait()
	}
	if err == nil {
		t.Fatal("a failed write was acknowledged")
	}
	fs.Inject = nil
	if _, _, err := l.Append(write(0, "later")); err == nil {
		t.Fatal("the log accepted an append after a write error")
	}
	if err := l.Sync(); err == nil {
		t.Fatal("Sync succeeded after a write error")
	}
}

func TestGolden(t *testing.T) {
	fs := vfs.NewMem(7)
	l := mustOpen(t, fs, "/log", Options{})
	appendWait(t, l, write(4096, "hello, log"))
	appendWait(t, l, Entry{Type: TypeZero, Flags: FlagNoHole, Offset: 8192, Span: 4096})
	appendWait(t, l, Entry{Type: TypeTrim, Offset: 1 << 20, Span: 1 << 16})
	mk, _ := Marker{ID: 0x1122334455667788, Time: 1700000000000000000, Kind: KindCrash, Group: "vm1"}.Encode()
	appendWait(t, l, Entry{Type: TypeMarker, Payload: mk})
	l.Close()
	got, err := vfs.ReadFile(fs, "/log/0000000000000001.hrl")
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "golden.hrl")
	if *update {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./hrl -run Golden -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the log format changed; if on purpose, bump Version and run with -update")
	}
}

// FuzzOpen feeds arbitrary bytes as the newest segment: Open must return
// records or an error, never panic, and what it keeps must scan cleanly.
func FuzzOpen(f *testing.F) {
	seed, _ := os.ReadFile(filepath.Join("testdata", "golden.hrl"))
	f.Add(seed)
	f.Add(seed[:len(seed)/2])
	f.Add(encodeSegmentHeader(1))
	f.Fuzz(func(t *testing.T, data []byte) {
		fs := vfs.NewMem(1)
		fs.MkdirAll("/log")
		w, _ := fs.Create("/log/0000000000000001.hrl")
		w.WriteAt(data, 0)
		w.Sync()
		fs.SyncDir("/log")
		torn, cerr := Check(fs, "/log", func(Record) {})
		l, err := Open(fs, "/log", Options{})
		agree(t, torn, cerr, l, err)
		if err != nil {
			if !IsCorruption(err) {
				t.Fatalf("Open: unclassified error %v", err)
			}
			return
		}
		defer l.Close()
		if err := l.Scan(1, func(Record) error { return nil }); err != nil {
			t.Fatalf("Scan after a clean Open: %v", err)
		}
		if _, _, err := l.Append(write(0, "x")); err != nil {
			t.Fatalf("Append after a clean Open: %v", err)
		}
	})
}

// agree fails unless Check's verdict on a log (torn, cerr) is Open's
// (l, err): the same corruption, or the same torn tail cut.
func agree(t *testing.T, torn *Torn, cerr error, l *Log, err error) {
	t.Helper()
	switch {
	case IsCorruption(err) != IsCorruption(cerr):
		t.Fatalf("Open: %v; Check: %v", err, cerr)
	case err == nil && fmt.Sprint(torn) != fmt.Sprint(l.TornTail()):
		t.Fatalf("Open cut %v; Check: %v", l.TornTail(), torn)
	}
}

func FuzzDecodeMarker(f *testing.F) {
	mk, _ := Marker{ID: 1, Time: 2, Kind: KindApp, Group: "group"}.Encode()
	f.Add(mk)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMarker(b)
		if err != nil {
			return
		}
		again, err := m.Encode()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// TestTearAcrossUnsyncedRolls: segments rolled without a sync, then a
// power cut that keeps unsynced pages at random. Recovery must cut, never
// report corruption, and keep a prefix of what was appended.
func TestTearAcrossUnsyncedRolls(t *testing.T) {
	for seed := range uint64(60) {
		fs := vfs.NewMem(seed)
		l := mustOpen(t, fs, "/log", Options{SegmentSize: 4096})
		appendWait(t, l, write(0, "durable"))
		if err := l.Sync(); err != nil {
			t.Fatal(err)
		}
		for i := range 100 {
			appendWait(t, l, write(uint64(i), fmt.Sprintf("unsynced-%03d-%s", i, bytes.Repeat([]byte("x"), i))))
		}
		fs.Cut()
		l.Close()
		fs.Revive()
		l, err := Open(fs, "/log", Options{SegmentSize: 4096})
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		got := scanAll(t, l, 1)
		if len(got) < 1 || got[0].P != "durable" {
			t.Fatalf("seed %d: the synced record was lost", seed)
		}
		for i, r := range got[1:] {
			if want := fmt.Sprintf("unsynced-%03d-%s", i, bytes.Repeat([]byte("x"), i)); r.P != want || r.LSN != uint64(i+2) {
				t.Fatalf("seed %d: record %d is %q, not a prefix", seed, i+1, r.P)
			}
		}
		// The log goes on from where it was cut.
		if pos := appendWait(t, l, write(0, "after")); pos.LSN != uint64(len(got)+1) {
			t.Fatalf("seed %d: next LSN %d after %d records", seed, pos.LSN, len(got))
		}
		l.Close()
	}
}

// recyclePayload is the payload of record lsn in the recycling tests:
// lengths vary so that a reused file's old records never line up with
// the new ones.
func recyclePayload(lsn uint64) string {
	return fmt.Sprintf("r%d-%s", lsn, bytes.Repeat([]byte{byte('a' + lsn%26)}, int(lsn*37%300)))
}

func TestRecycleReusesDroppedFiles(t *testing.T) {
	fs := vfs.NewMem(1)
	creates, reuses := 0, 0
	fs.Inject = func(op, name string) error {
		switch {
		case op == "create" && filepath.Ext(name) == ".hrl":
			creates++
		case op == "rename" && filepath.Ext(name) == ".free":
			reuses++ // a kept file renamed to a new segment
		}
		return nil
	}
	opts := Options{SegmentSize: 4096, Recycle: 2}
	l := mustOpen(t, fs, "/log", opts)
	lsn := uint64(0)
	for round := range 20 {
		for range 40 {
			lsn++
			appendWait(t, l, write(lsn, recyclePayload(lsn)))
		}
		if err := l.Sync(); err != nil {
			t.Fatal(err)
		}
		if round%2 == 1 {
			if err := l.DropThrough(lsn); err != nil {
				t.Fatal(err)
			}
		}
	}
	segs := l.Segments()
	from := segs[0].First
	check := func(l *Log) {
		t.Helper()
		got := scanAll(t, l, from)
		if len(got) != int(lsn-from+1) {
			t.Fatalf("scan from %d: %d records, want %d", from, len(got), lsn-from+1)
		}
		for _, r := range got {
			if r.P != recyclePayload(r.LSN) {
				t.Fatalf("record %d reads %.20q", r.LSN, r.P)
			}
		}
	}
	check(l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// Counted once the log is closed: a spare being filled meanwhile is
	// given up then (or removed once filled, past the bound).
	names, _ := fs.List("/log")
	free := 0
	for _, n := range names {
		if filepath.Ext(n) == ".free" {
			free++
		}
	}
	if free != 2 {
		t.Errorf("%d files kept for reuse, want 2 (%v)", free, names)
	}
	n := 0
	if torn, err := Check(fs, "/log", func(Record) { n++ }); err != nil || torn != nil || n != int(lsn-from+1) {
		t.Fatalf("Check after close: %v, %v, %d records", err, torn, n)
	}
	l = mustOpen(t, fs, "/log", opts)
	check(l)
	l.Close()
	// Ten drops of about four segments each, two files kept each time and
	// both reused before the next drop: about twenty files created for
	// about thirty segments.
	if reuses < 8 {
		t.Errorf("%d files created, %d reused: dropped files are not reused", creates, reuses)
	}
}

// TestRecyclePowerCut cuts the power at random moments while segments are
// written over recycled files: every synced record that was not dropped
// survives, the rest is a prefix, and stale records from a file's earlier
// use are never read as records nor taken for damage.
func TestRecyclePowerCut(t *testing.T) {
	seeds := uint64(300)
	if testing.Short() {
		seeds = 60
	}
	for seed := range seeds {
		recyclePowerCut(t, seed)
	}
}

func recyclePowerCut(t *testing.T, seed uint64) {
	fs := vfs.NewMem(seed)
	opts := Options{SegmentSize: 2048, Recycle: 3}
	l := mustOpen(t, fs, "/log", opts)
	var lsn, synced, dropped uint64
	// Fill and drop some segments first, so that later ones reuse files.
	for range 60 {
		lsn++
		appendWait(t, l, write(lsn, recyclePayload(lsn)))
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	synced = lsn
	if err := l.DropThrough(lsn); err != nil {
		t.Fatal(err)
	}
	dropped = l.Segments()[0].First - 1
	fs.CutAfter(int(seed%97) + 5)
	for i := 0; ; i++ {
		_, b, err := l.Append(write(lsn+1, recyclePayload(lsn+1)))
		if err != nil {
			break
		}
		if b.Wait() != nil {
			break
		}
		lsn++
		if i%7 == 3 {
			if l.Sync() != nil {
				break
			}
			synced = lsn
		}
		if i%11 == 5 {
			if l.DropThrough(synced) != nil {
				break
			}
			dropped = max(dropped, l.Segments()[0].First-1)
		}
	}
	l.Close()
	fs.Revive()
	l, err := Open(fs, "/log", opts)
	if err != nil {
		t.Fatalf("seed %d: reopening: %v", seed, err)
	}
	defer l.Close()
	got := scanAll(t, l, 1)
	if len(got) == 0 {
		if synced > dropped {
			t.Fatalf("seed %d: log empty, records %d..%d were synced", seed, dropped+1, synced)
		}
		return
	}
	for i, r := range got {
		if r.P != recyclePayload(r.LSN) || (i > 0 && r.LSN != got[i-1].LSN+1) {
			t.Fatalf("seed %d: record %d (LSN %d) reads %.20q", seed, i, r.LSN, r.P)
		}
	}
	if first, last := got[0].LSN, got[len(got)-1].LSN; first > dropped+1 || last < synced {
		t.Fatalf("seed %d: log holds %d..%d; synced through %d, dropped through %d", seed, first, last, synced, dropped)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if torn, err := Check(fs, "/log", func(Record) {}); err != nil || torn != nil {
		t.Fatalf("seed %d: Check after reopen and close: %v, %v", seed, err, torn)
	}
}

// FuzzOpenChain fuzzes recovery across two segments, a stale tail and a
// file kept for reuse: Open succeeds or reports corruption, and what it
// keeps scans cleanly in sequence.
func FuzzOpenChain(f *testing.F) {
	seed, _ := os.ReadFile(filepath.Join("testdata", "golden.hrl"))
	f.Add(seed, uint64(3), []byte{})
	f.Add(seed, uint64(2), seed[HeaderSize:])
	f.Add(encodeSegmentHeader(1), uint64(1), []byte("stale"))
	f.Fuzz(func(t *testing.T, first []byte, next uint64, rest []byte) {
		if next == 0 || next > 1<<40 {
			return
		}
		fs := vfs.NewMem(1)
		fs.MkdirAll("/log")
		put := func(name string, data []byte) {
			w, _ := fs.Create("/log/" + name)
			w.WriteAt(data, 0)
			w.Sync()
		}
		put("0000000000000001.hrl", first)
		put(segmentName(next), append(encodeSegmentHeader(next), rest...))
		put("0000000000000005.free", rest)
		fs.SyncDir("/log")
		torn, cerr := Check(fs, "/log", func(Record) {})
		l, err := Open(fs, "/log", Options{Recycle: 1})
		agree(t, torn, cerr, l, err)
		if err != nil {
			if !IsCorruption(err) {
				t.Fatalf("Open: unclassified error %v", err)
			}
			return
		}
		defer l.Close()
		var prev uint64
		err = l.Scan(1, func(r Record) error {
			if prev != 0 && r.LSN != prev+1 {
				t.Fatalf("LSN %d after %d", r.LSN, prev)
			}
			prev = r.LSN
			return nil
		})
		if err != nil {
			t.Fatalf("Scan after a clean Open: %v", err)
		}
		if _, b, err := l.Append(write(0, "x")); err != nil || b.Wait() != nil {
			t.Fatalf("Append after a clean Open: %v", err)
		}
	})
}

// TestConcurrentSyncSealDrop runs appenders, flushes, seals and drops at
// once over recycled files, on the real file system: syncs overlap writes
// and drops wait for the sync job that may hold their segment. Every
// record left reads back in order with its payload.
func TestConcurrentSyncSealDrop(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 64 << 10, Recycle: 3}
	fs := &reuseCounter{FS: vfs.OS{}}
	l := mustOpen(t, fs, dir, opts)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var appended sync.Map // LSN → payload
	// loop runs step in a goroutine until stop or its first error.
	loop := func(step func(i int) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := step(i); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for w := range 4 {
		loop(func(i int) error {
			p := fmt.Sprintf("w%d-%d-%s", w, i, bytes.Repeat([]byte{'x'}, i%500))
			pos, b, err := l.Append(write(uint64(i), p))
			if err != nil {
				return err
			}
			appended.Store(pos.LSN, p)
			return b.Wait()
		})
	}
	loop(func(int) error { return l.Sync() })
	loop(func(int) error {
		last, err := l.Seal()
		if err != nil {
			return err
		}
		return l.DropThrough(min(last, l.SyncedLSN()))
	})
	// The loops run for a second, and on until dropped files have been
	// reused a few times, however slowly a busy machine runs them.
	time.Sleep(time.Second)
	waitfor.True(t, "dropped log files to be reused 5 times", func() bool { return fs.reuses.Load() >= 5 || t.Failed() })
	close(stop)
	wg.Wait()
	check := func(l *Log) {
		t.Helper()
		from := l.Segments()[0].First
		prev := from - 1 // the log may hold no record: all dropped, the active segment empty
		err := l.Scan(from, func(r Record) error {
			want, _ := appended.Load(r.LSN)
			if string(r.Payload) != want || r.LSN != prev+1 {
				return fmt.Errorf("record %d after %d reads %.20q", r.LSN, prev, r.Payload)
			}
			prev = r.LSN
			return nil
		})
		if err != nil || prev != l.LastLSN() {
			t.Fatalf("scan from %d: %v; ends at %d of %d", from, err, prev, l.LastLSN())
		}
	}
	check(l)
	closeCheckReopen(t, l, vfs.OS{}, dir, opts, check)
}

// closeCheckReopen closes l, checks that Check finds its log clean, and
// runs check on the log reopened.
func closeCheckReopen(t *testing.T, l *Log, fs vfs.FS, dir string, opts Options, check func(*Log)) {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if torn, err := Check(fs, dir, func(Record) {}); err != nil || torn != nil {
		t.Fatalf("Check after close: %v, %v", err, torn)
	}
	l = mustOpen(t, fs, dir, opts)
	defer l.Close()
	check(l)
}

// TestSyncRecordStaysInItsSegment: a segment rolls while a sync job is out;
// the job's sync record must not land in the new segment, where it would
// vouch for the old segment's unsynced tail and turn a torn tail after a
// power cut into reported corruption.
func TestSyncRecordStaysInItsSegment(t *testing.T) {
	defer func() { jobHook = nil }()
	for seed := range uint64(40) {
		fs := vfs.NewMem(seed)
		l := mustOpen(t, fs, "/log", Options{SegmentSize: 16 << 10})
		appendWait(t, l, write(0, "durable"))
		// A first segment, sealed and synced, for a drop to remove later.
		first, err := l.Seal()
		if err != nil {
			t.Fatal(err)
		}
		appendWait(t, l, write(0, "durable too"))
		rolled := false
		jobHook = func(l *Log, after bool) {
			if !after || rolled {
				return
			}
			rolled = true
			// Fill the active segment past its size: the last append rolls.
			for i := range 8 {
				_, b, _ := l.Append(write(uint64(i), string(bytes.Repeat([]byte{'u'}, 3000))))
				b.Wait()
			}
		}
		if err := l.Sync(); err != nil {
			t.Fatal(err)
		}
		jobHook = nil
		if len(l.Segments()) < 2 {
			t.Fatalf("seed %d: no roll while the sync job was out", seed)
		}
		// The drop syncs the directory: the new segment's name survives a
		// cut even though its data was never synced (ext4 commits names
		// on its own schedule too).
		if err := l.DropThrough(first); err != nil {
			t.Fatal(err)
		}
		appendWait(t, l, write(0, "after")) // writes out whatever the job appended
		fs.Cut()
		l.Close()
		fs.Revive()
		l, err = Open(fs, "/log", Options{SegmentSize: 16 << 10})
		if err != nil {
			t.Fatalf("seed %d: a torn unsynced tail was reported as damage: %v", seed, err)
		}
		if got := scanAll(t, l, 1); len(got) == 0 || got[0].P != "durable too" {
			t.Fatalf("seed %d: the synced record was lost", seed)
		}
		l.Close()
	}
}

// TestDropWaitsForSyncJob: a sealed segment the synced LSN already covers
// may still be in the sync job under way (it was synced as the active
// segment, then a roll queued it again); dropping it then would close the
// file under the job's fsync and fail the log.
func TestDropWaitsForSyncJob(t *testing.T) {
	defer func() { jobHook = nil }()
	l := mustOpen(t, vfs.OS{}, t.TempDir(), Options{})
	defer l.Close()
	appendWait(t, l, write(0, "a"))
	if err := l.Sync(); err != nil { // the segment is synced as the active one
		t.Fatal(err)
	}
	if _, err := l.Seal(); err != nil { // sealed: queued for the next sync job
		t.Fatal(err)
	}
	appendWait(t, l, write(0, "b"))
	dropped := make(chan error, 1)
	jobHook = func(l *Log, after bool) {
		if after {
			return
		}
		jobHook = nil
		go func() { dropped <- l.DropThrough(1) }()
		select { // give a drop that does not wait the time to happen
		case err := <-dropped:
			dropped <- err
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := l.Sync(); err != nil { // the job holds the sealed segment again
		t.Fatalf("Sync: %v", err)
	}
	if err := <-dropped; err != nil {
		t.Fatalf("DropThrough: %v", err)
	}
	if segs := l.Segments(); len(segs) != 1 || segs[0].First != 2 {
		t.Fatalf("segments after the drop: %+v", segs)
	}
	appendWait(t, l, write(0, "b"))
	if err := l.Sync(); err != nil {
		t.Fatalf("the log failed: %v", err)
	}
}

// reuseCounter counts kept files renamed to new segments.
type reuseCounter struct {
	vfs.FS
	reuses atomic.Int32
}

func (c *reuseCounter) Rename(oldname, newname string) error {
	if filepath.Ext(oldname) == ".free" && filepath.Ext(newname) == ".hrl" {
		c.reuses.Add(1)
	}
	return c.FS.Rename(oldname, newname)
}

// allocated returns the bytes of disk a file takes.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestReservedSegmentsGiveBackTheirSpace checks that a new segment file
// reserves its size on disk for appends and that a sealed or closed
// segment takes no more disk than it holds.
func TestReservedSegmentsGiveBackTheirSpace(t *testing.T) {
	dir := t.TempDir()
	const segSize = 8 << 20
	l := mustOpen(t, vfs.OS{}, dir, Options{SegmentSize: segSize})
	appendWait(t, l, write(0, "first"))
	segs := l.Segments()
	first := filepath.Join(dir, segs[0].Name)
	if allocated(t, first) < segSize {
		t.Skipf("this file system did not reserve blocks (%d bytes taken)", allocated(t, first))
	}
	if _, err := l.Seal(); err != nil {
		t.Fatal(err)
	}
	appendWait(t, l, write(0, "second")) // the writer opens the next segment
	if n := allocated(t, first); n > 1<<20 {
		t.Errorf("the sealed segment takes %d bytes of disk for a few bytes of records", n)
	}
	second := filepath.Join(dir, l.Segments()[1].Name)
	if allocated(t, second) < segSize {
		t.Errorf("the new segment reserved %d bytes, want %d", allocated(t, second), segSize)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n := allocated(t, second); n > 1<<20 {
		t.Errorf("the closed active segment takes %d bytes of disk for a few bytes of records", n)
	}
	l = mustOpen(t, vfs.OS{}, dir, Options{SegmentSize: segSize})
	defer l.Close()
	if got := scanAll(t, l, 1); len(got) != 2 || got[1].P != "second" {
		t.Errorf("records after reopening: %+v", got)
	}
}

// TestConcurrentClose: Close is idempotent even when called from several
// goroutines at once; every call returns once the log is closed, with the
// first call's result.
func TestConcurrentClose(t *testing.T) {
	for range 20 {
		l := mustOpen(t, vfs.NewMem(8), "/log", Options{})
		appendWait(t, l, write(0, "x"))
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make([]error, 4)
		for i := range errs {
			wg.Go(func() {
				<-start
				errs[i] = l.Close()
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("Close %d: %v", i, err)
			}
		}
		if _, _, err := l.Append(write(0, "y")); !errors.Is(err, ErrClosed) {
			t.Fatalf("Append after Close = %v, want ErrClosed", err)
		}
	}
}

// TestFailedDropKeepsTheChain: a segment file that cannot be removed
// stays in the log with every later one whose drop was asked for, so the
// directory never holds a segment followed by a gap (which recovery would
// take for lost records); the next drop removes them.
func TestFailedDropKeepsTheChain(t *testing.T) {
	fs := vfs.NewMem(9)
	opts := Options{SegmentSize: 256}
	l := mustOpen(t, fs, "/log", opts)
	for i := range 20 {
		appendWait(t, l, write(uint64(i), fmt.Sprintf("record-%03d-%s", i, bytes.Repeat([]byte("x"), 40))))
	}
	if _, err := l.Seal(); err != nil {
		t.Fatal(err)
	}
	segs := l.Segments()
	if len(segs) < 4 {
		t.Fatalf("%d segments, want at least 4", len(segs))
	}
	stuck := "/log/" + segs[1].Name
	fs.Inject = func(op, name string) error {
		if op == "remove" && name == stuck {
			return errors.New("injected EIO")
		}
		return nil
	}
	if err := l.DropThrough(l.LastLSN()); err == nil {
		t.Fatal("a drop whose remove failed reported no error")
	}
	fs.Inject = nil
	if got := l.Segments(); got[0].First != segs[1].First {
		t.Fatalf("after the failed drop the log starts at %d, want %d (the segment that stayed)", got[0].First, segs[1].First)
	}
	if got := scanAll(t, l, 1); len(got) != int(l.LastLSN()-segs[1].First+1) {
		t.Fatalf("%d records readable after the failed drop", len(got))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = mustOpen(t, fs, "/log", opts)
	defer l.Close()
	if got := l.Segments(); got[0].First != segs[1].First {
		t.Fatalf("reopened log starts at %d, want %d", got[0].First, segs[1].First)
	}
	if err := l.DropThrough(l.LastLSN()); err != nil {
		t.Fatal(err)
	}
	if n := len(segmentFiles(fs)); n != 1 {
		t.Fatalf("%d segment files after the next drop, want 1", n)
	}
}

// TestScanWhileRolling: Scan runs beside the writer while segments roll
// (the race detector checks that a new segment's file is never read
// before the writer has published what it wrote there), and every record
// it reports is one that was appended, in LSN order.
func TestScanWhileRolling(t *testing.T) {
	l := mustOpen(t, vfs.NewMem(21), "/log", Options{SegmentSize: 8 << 10})
	defer l.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 4000 {
			_, b, err := l.Append(write(0, string(bytes.Repeat([]byte("x"), 512))))
			if err == nil && i%64 == 0 {
				b.Wait()
			}
		}
	}()
	for scans := 0; ; scans++ {
		var last uint64
		err := l.Scan(l.LastLSN(), func(r Record) error { // the newest segments
			if r.LSN <= last {
				t.Fatalf("LSN %d after %d", r.LSN, last)
			}
			last = r.LSN
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
			if scans == 0 {
				t.Fatal("no scan ran beside the writer")
			}
			return
		default:
		}
	}
}
