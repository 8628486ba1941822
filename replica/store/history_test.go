package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"github.com/vrep-io/vrep/replica/ship"
	"github.com/vrep-io/vrep/replica/wire"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/blockdev/devtest"
	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/vfs"
)

const histKey = "r/vm1/disk0"

// seededDisk opens a catalog over data (on fsys, the index on the real
// file system) and a disk with history whose initial copy is base.
func seededDisk(t *testing.T, fsys vfs.FS, data string, base []byte, cfg CatalogConfig) (*Catalog, *Disk) {
	t.Helper()
	cfg.Data, cfg.FS = data, fsys
	if cfg.Index == "" {
		cfg.Index = filepath.Join(t.TempDir(), "index")
	}
	cat, err := OpenCatalog(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cat.Close() })
	d, err := OpenDisk(fsys, filepath.Join(data, histKey), int64(len(base)))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WithHistory(cat, histKey); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteBase(0, base); err != nil {
		t.Fatal(err)
	}
	if err := d.FinishBase(0); err != nil {
		t.Fatal(err)
	}
	return cat, d
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, (n+7)&^7)
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:n]
}

func readAll(t *testing.T, d blockdev.Device) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	if _, err := d.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// checkViews opens a view at every marker of recs the disk applied and
// compares it with the disk as the records left it at that point.
func checkViews(t *testing.T, cat *Catalog, base []byte, recs []hrl.Record) int {
	t.Helper()
	h, err := cat.History(histKey)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range h.Points {
		v, err := cat.OpenView(histKey, p.LSN)
		if err != nil {
			t.Fatalf("view at %d: %v", p.LSN, err)
		}
		if !bytes.Equal(readAll(t, v), model(base, recs[:p.LSN])) {
			t.Fatalf("the view at point LSN %d differs from the disk at that point", p.LSN)
		}
		v.Close()
		n++
	}
	return n
}

// TestPointViews: records applied in random batches; a view at every
// point reads the disk exactly as it was then, including a view opened
// early and kept open while the rest is applied underneath it.
func TestPointViews(t *testing.T) {
	for _, inline := range []bool{false, true} {
		data := t.TempDir()
		base := randomBytes(1, diskSize)
		cat, d := seededDisk(t, vfs.OS{}, data, base, CatalogConfig{Inline: inline, Retention: Retention{Window: time.Hour}})
		recs := stream(7, 1, 600)
		r := rand.New(rand.NewPCG(7, 7))
		var early *View
		var earlyLSN uint64
		for pos := 0; pos < len(recs); {
			n := min(1+r.IntN(40), len(recs)-pos)
			if _, err := d.Apply(recs[:pos+n]); err != nil {
				t.Fatal(err)
			}
			pos += n
			if early == nil && pos > 150 {
				h, err := cat.History(histKey)
				if err != nil || len(h.Points) == 0 {
					t.Fatalf("no points after 150 records: %v", err)
				}
				earlyLSN = h.Points[len(h.Points)-1].LSN
				if early, err = cat.OpenView(histKey, earlyLSN); err != nil {
					t.Fatal(err)
				}
			}
		}
		if !bytes.Equal(readAll(t, early), model(base, recs[:earlyLSN])) {
			t.Fatal("a view changed while records were applied underneath it")
		}
		early.Close()
		if n := checkViews(t, cat, base, recs); n < 30 {
			t.Fatalf("only %d points checked", n)
		}
		if _, err := cat.OpenView(histKey, 2); !errors.Is(err, ErrNoPoint) {
			t.Fatalf("a view at an LSN that is no point: %v", err)
		}
		d.Close()
	}
}

// TestHistoryPowerCut: batches applied with history on, power cut at
// random I/Os of the image and undo segments. After the stream converges,
// every point reads back exactly: no replay recorded overwritten bytes as
// history.
func TestHistoryPowerCut(t *testing.T) {
	seeds := uint64(60)
	if testing.Short() {
		seeds = 20
	}
	for seed := range seeds {
		r := rand.New(rand.NewPCG(seed, 8))
		fs := vfs.NewMem(seed)
		base := randomBytes(seed, diskSize)
		cat, d := seededDisk(t, fs, "/data", base, CatalogConfig{Retention: Retention{Window: time.Hour}})
		recs := stream(seed, 1, 150)
		var acked uint64
		for cuts := 0; ; cuts++ {
			if cuts < 3 {
				fs.CutAfter(5 + r.IntN(120))
			}
			pos := int(acked)
			for pos < len(recs) {
				n := min(1+r.IntN(12), len(recs)-pos)
				lsn, err := d.Apply(recs[:pos+n])
				if err != nil {
					break
				}
				acked, pos = lsn, pos+n
			}
			if pos == len(recs) {
				break
			}
			fs.Cut()
			d.Close()
			fs.Revive()
			var err error
			if d, err = OpenDisk(fs, filepath.Join("/data", histKey), diskSize); err != nil {
				t.Fatalf("seed %d: reopen after a cut: %v", seed, err)
			}
			if err := d.WithHistory(cat, histKey); err != nil {
				t.Fatal(err)
			}
			applied, _ := d.Applied()
			if applied < acked {
				t.Fatalf("seed %d: acknowledged %d, but only %d survived the cut", seed, acked, applied)
			}
			acked = applied
		}
		if !bytes.Equal(image(t, d), model(base, recs)) {
			t.Fatalf("seed %d: the replica did not converge", seed)
		}
		checkViews(t, cat, base, recs)
		d.Close()
		cat.Close()
	}
}

// markerAt makes a marker record.
func markerAt(lsn uint64, id uint64, at time.Time, kind uint8) hrl.Record {
	p, _ := hrl.Marker{ID: id, Time: at.UnixNano(), Kind: kind, Group: "vm1"}.Encode()
	return hrl.Record{Type: hrl.TypeMarker, LSN: lsn, Payload: p}
}

// TestPruneRetention: pruning keeps exactly the points inside the window,
// the newest point, pinned points and the newest app-consistent points by
// count; the kept points still read back exactly; the history older than
// the oldest kept point is gone, segment files with it.
func TestPruneRetention(t *testing.T) {
	data := t.TempDir()
	base := randomBytes(3, diskSize)
	now := time.Unix(1_000_000, 0)
	cat, d := seededDisk(t, vfs.OS{}, data, base, CatalogConfig{
		Retention: Retention{Window: 30 * time.Minute, KeepApp: 1},
		Now:       func() time.Time { return now },
	})
	// 12 points, one every 10 minutes, 20 writes between; point 2 is
	// app-consistent.
	var recs []hrl.Record
	writes := stream(3, 1, 2000)
	wi := 0
	for p := range 12 {
		for range 20 {
			for writes[wi].Type == hrl.TypeMarker {
				wi++
			}
			w := writes[wi]
			wi++
			w.LSN = uint64(len(recs) + 1)
			recs = append(recs, w)
		}
		kind := hrl.KindCrash
		if p == 2 {
			kind = hrl.KindApp
		}
		recs = append(recs, markerAt(uint64(len(recs)+1), uint64(p+1), now.Add(time.Duration(p-11)*10*time.Minute), kind))
		// Apply point by point with small segments, so pruning has files
		// to drop.
		if _, err := d.Apply(recs); err != nil {
			t.Fatal(err)
		}
		d.undo.off = undoSegmentMax // start a new segment with the next batch
	}
	segsBefore, _ := listSegments(vfs.OS{}, filepath.Join(data, histKey, "undo"))
	// A test failover holds point 5 (older than the window).
	h, _ := cat.History(histKey)
	pinned := h.Points[4].LSN
	v, err := cat.OpenView(histKey, pinned)
	if err != nil {
		t.Fatal(err)
	}
	if err := cat.Prune(); err != nil {
		t.Fatal(err)
	}
	h, _ = cat.History(histKey)
	var ids []uint64
	for _, p := range h.Points {
		ids = append(ids, p.ID)
	}
	// Window 30 min: points at -30, -20, -10, 0 (ids 9..12); the app point
	// (id 3) by count; id 5 pinned.
	if want := []uint64{3, 5, 9, 10, 11, 12}; !equalU64(ids, want) {
		t.Fatalf("kept points %v, want %v", ids, want)
	}
	if !bytes.Equal(readAll(t, v), model(base, recs[:pinned])) {
		t.Fatal("the pinned view changed across pruning")
	}
	checkViews(t, cat, base, recs)
	lsns, _, _ := cat.undoSizes(histKey)
	if len(lsns) == 0 || lsns[0] <= h.Points[0].LSN {
		t.Fatalf("history before the oldest kept point (LSN %d) survived: first undo %v", h.Points[0].LSN, lsns[:1])
	}
	segsAfter, _ := listSegments(vfs.OS{}, filepath.Join(data, histKey, "undo"))
	if len(segsAfter) >= len(segsBefore) {
		t.Fatalf("no undo segment removed: %d before, %d after", len(segsBefore), len(segsAfter))
	}
	// Unpinned and without the app count, the next prune drops 3 and 5.
	v.Close()
	cat.cfg.Retention.KeepApp = 0
	if err := cat.Prune(); err != nil {
		t.Fatal(err)
	}
	h, _ = cat.History(histKey)
	if len(h.Points) != 4 || h.Points[0].ID != 9 {
		t.Fatalf("after unpinning: %d points, oldest %d", len(h.Points), h.Points[0].ID)
	}
	checkViews(t, cat, base, recs)
	// "Latest point only": the newest point stays, with its history.
	cat.cfg.Retention.Window = 0
	if err := cat.Prune(); err != nil {
		t.Fatal(err)
	}
	h, _ = cat.History(histKey)
	if len(h.Points) != 1 || h.Points[0].ID != 12 {
		t.Fatalf("latest only: %d points", len(h.Points))
	}
	checkViews(t, cat, base, recs)
	d.Close()
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestViewConformance: a point view passes the read-only suite, an
// overlay on it the full suite, and an overlay's writes never reach the
// view or the replica image.
func TestViewConformance(t *testing.T) {
	view := func(t *testing.T, size int64) (*View, []byte, *Disk) {
		base := randomBytes(uint64(size), int(size))
		cat, d := seededDisk(t, vfs.OS{}, t.TempDir(), base, CatalogConfig{Retention: Retention{Window: time.Hour}})
		r := rand.New(rand.NewPCG(5, 5))
		var recs []hrl.Record
		for i := range 200 {
			n := int64(1 + r.IntN(64<<10))
			off := r.Int64N(size - n)
			recs = append(recs, hrl.Record{Type: hrl.TypeWrite, LSN: uint64(len(recs) + 1), Offset: uint64(off), Span: uint32(n), Payload: randomBytes(uint64(i), int(n))})
			if i == 100 {
				recs = append(recs, markerAt(uint64(len(recs)+1), 1, time.Now(), hrl.KindCrash))
			}
		}
		if _, err := d.Apply(recs); err != nil {
			t.Fatal(err)
		}
		v, err := cat.OpenView(histKey, 102)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { v.Close(); d.Close() })
		return v, model(base, recs[:102]), d
	}
	devtest.RunReadOnly(t, func(t *testing.T, size int64) (blockdev.Device, []byte) {
		v, want, _ := view(t, size)
		return v, want
	})
	t.Run("Overlay", func(t *testing.T) {
		devtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
			v, _, _ := view(t, size)
			o, err := NewOverlay(vfs.OS{}, filepath.Join(t.TempDir(), "overlay"), v)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { o.Discard() })
			return o
		})
	})
	t.Run("OverlayIsolation", func(t *testing.T) {
		v, want, d := view(t, devtest.Size)
		img := image(t, d)
		o, err := NewOverlay(vfs.OS{}, filepath.Join(t.TempDir(), "overlay"), v)
		if err != nil {
			t.Fatal(err)
		}
		junk := bytes.Repeat([]byte{0xee}, 1<<20)
		for _, off := range []int64{0, 4095, 1 << 20, devtest.Size - 1<<20} {
			if _, err := o.WriteAt(junk, off); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(readAll(t, v), want) || !bytes.Equal(image(t, d), img) {
			t.Fatal("overlay writes reached the point view or the replica image")
		}
		got := readAll(t, o)
		if !bytes.Equal(got[4095:4095+1<<20], junk) || !bytes.Equal(got[:4095], junk[:4095]) {
			t.Fatal("overlay does not read back its writes")
		}
		if !bytes.Equal(got[2<<20+4095:devtest.Size-1<<20], want[2<<20+4095:devtest.Size-1<<20]) {
			t.Fatal("overlay changed blocks it never wrote")
		}
		o.Discard()
	})
}

// TestUndoSegmentReopen: a segment allocated in full is reopened after a
// crash at the end of its last intact entry, never truncated and never
// overwritten, whatever follows that entry.
func TestUndoSegmentReopen(t *testing.T) {
	base := randomBytes(4, diskSize)
	_, d := seededDisk(t, vfs.OS{}, t.TempDir(), base, CatalogConfig{})
	if _, err := d.Apply(stream(4, 1, 40)); err != nil {
		t.Fatal(err)
	}
	end, first, f := d.undo.off, d.undo.first, d.undo.f
	if end == 0 {
		t.Fatal("no history written")
	}
	// A torn entry after the last intact one: a header that fails its CRC.
	junk := append([]byte("VUND"), randomBytes(5, 60)...)
	if _, err := f.WriteAt(junk, end); err != nil {
		t.Fatal(err)
	}
	f.Close()
	d.undo = undoWriter{}
	if err := d.rollUndo(first); err != nil {
		t.Fatal(err)
	}
	if d.undo.off != end || d.undo.first != first {
		t.Fatalf("reopened at %d of segment %d, want %d of %d", d.undo.off, d.undo.first, end, first)
	}
	d.Close()
}

// FuzzDecodeUndoRef: whatever bytes the index holds, decoding an undo
// entry never panics, and what decodes re-encodes to the same bytes.
func FuzzDecodeUndoRef(f *testing.F) {
	f.Add((&undoRef{lsn: 1, off: 4096, length: 8192, crc: 7, seg: 1, segOff: 32}).encode())
	f.Add((&undoRef{lsn: 2, off: 0, length: 3, crc: 9, inline: []byte("abc")}).encode())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeUndoRef(5, b)
		if err != nil {
			return
		}
		if r.length <= 0 || r.off < 0 || r.segOff < 0 {
			t.Fatalf("decoded an entry out of range: %+v", r)
		}
		if got := r.encode(); !bytes.Equal(got, b[:len(got)]) || len(got) != len(b) && r.inline == nil {
			t.Fatalf("re-encoding differs: %x vs %x", got, b)
		}
	})
}

// TestCoalesce: records wholly overwritten later in the same span go,
// markers stay, nothing is dropped across a marker, and the coalesced
// records applied as a range leave the disk, and every point's view,
// exactly as the full stream does.
func TestCoalesce(t *testing.T) {
	w := func(lsn, off, n uint64) hrl.Record {
		return hrl.Record{Type: hrl.TypeWrite, LSN: lsn, Offset: off, Span: uint32(n), Payload: randomBytes(lsn, int(n))}
	}
	recs := []hrl.Record{
		w(1, 0, 4096), w(2, 4096, 4096), w(3, 0, 8192), // 1 and 2 covered by 3
		w(4, 100, 10), markerAt(5, 1, time.Now(), hrl.KindCrash), // 4 not: a point follows
		w(6, 0, 8192), w(7, 50, 100), w(8, 0, 4096), w(9, 4096, 4096), // 6 covered by 8+9; 7 by 8
		{Type: hrl.TypeZero, LSN: 10, Offset: 8192, Span: 4096}, w(11, 8192, 4096), // the zero covered
	}
	var lsns []uint64
	for _, r := range ship.Coalesce(slices.Clone(recs)) {
		lsns = append(lsns, r.LSN)
	}
	if want := []uint64{3, 4, 5, 8, 9, 11}; !equalU64(lsns, want) {
		t.Fatalf("kept %v, want %v", lsns, want)
	}
	// Random streams: the full stream and the coalesced ranges agree.
	for seed := range uint64(20) {
		recs := stream(seed, 1, 300)
		base := randomBytes(seed, diskSize)
		_, full := seededDisk(t, vfs.OS{}, t.TempDir(), base, CatalogConfig{})
		if _, err := full.Apply(recs); err != nil {
			t.Fatal(err)
		}
		cat, co := seededDisk(t, vfs.OS{}, t.TempDir(), base, CatalogConfig{Retention: Retention{Window: time.Hour}})
		for from := 0; from < len(recs); from += 50 {
			batch := ship.Coalesce(slices.Clone(recs[from : from+50]))
			if lsn, err := co.ApplyRange(batch, uint64(from+1), uint64(from+50)); err != nil || lsn != uint64(from+50) {
				t.Fatalf("ApplyRange: %d, %v", lsn, err)
			}
		}
		if !bytes.Equal(image(t, full), image(t, co)) {
			t.Fatalf("seed %d: coalesced apply differs from the full stream", seed)
		}
		checkViews(t, cat, base, recs)
		// A resent range is skipped; a range after a gap is a broken chain.
		if lsn, err := co.ApplyRange(nil, 251, 300); err != nil || lsn != 300 {
			t.Fatalf("a resent range: %d, %v", lsn, err)
		}
		if _, err := co.ApplyRange(nil, 302, 310); !errors.Is(err, wire.ErrBrokenChain) {
			t.Fatalf("a range after a gap: %v", err)
		}
		full.Close()
		co.Close()
	}
}

// overlaps.before lists exactly the earlier records a pairwise scan finds,
// in batch order, with long trims among short writes.
func TestOverlapsMatchesPairwise(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	for range 200 {
		recs := make([]hrl.Record, 1+r.IntN(300))
		for i := range recs {
			typ, span := hrl.TypeWrite, uint32(512*(1+r.IntN(16)))
			switch r.IntN(10) {
			case 0:
				typ = hrl.TypeMarker
			case 1:
				typ, span = hrl.TypeTrim, uint32(r.IntN(4<<20)) // some past longSpan
			}
			recs[i] = hrl.Record{LSN: uint64(i + 1), Type: typ, Offset: uint64(r.IntN(4 << 20)), Span: span}
		}
		o := newOverlaps(recs)
		for j := range recs {
			a := int64(r.IntN(4 << 20))
			b := a + int64(r.IntN(64<<10))
			var want []int
			for k, q := range recs[:j] {
				if q.Type != hrl.TypeMarker && int64(q.Offset) < b && int64(q.Offset)+int64(q.Span) > a {
					want = append(want, k)
				}
			}
			if got := o.before(j, a, b); !slices.Equal(got, want) {
				t.Fatalf("record %d, [%d, %d): overlaps %v, pairwise %v", j, a, b, got, want)
			}
		}
	}
}
