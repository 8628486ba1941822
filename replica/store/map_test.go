package store

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/vfs"
)

// TestViewMap: a point view maps the image's holes as holes and blocks
// with history after the point as data; an overlay adds its writes.
// sparseDisk is a replica disk whose initial copy wrote 64 KiB only,
// then recs applied.
func sparseDisk(t *testing.T, size int64, recs []hrl.Record) *Catalog {
	data := t.TempDir()
	cat, err := OpenCatalog(CatalogConfig{Data: data, FS: vfs.OS{}, Index: filepath.Join(t.TempDir(), "index"), Retention: Retention{Window: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cat.Close() })
	d, err := OpenDisk(vfs.OS{}, filepath.Join(data, histKey), size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.WithHistory(cat, histKey); err != nil {
		t.Fatal(err)
	}
	// The initial copy skips zero chunks: only 64 KiB are written.
	if err := d.WriteBase(0, bytes.Repeat([]byte{1}, 64<<10)); err != nil {
		t.Fatal(err)
	}
	if err := d.FinishBase(0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Apply(recs); err != nil {
		t.Fatal(err)
	}
	return cat
}

func TestViewMap(t *testing.T) {
	const size = 8 << 20
	recs := []hrl.Record{
		{Type: hrl.TypeWrite, LSN: 1, Offset: 1 << 20, Span: 1 << 20, Payload: bytes.Repeat([]byte{2}, 1<<20)},
		markerAt(2, 1, time.Now(), hrl.KindCrash),
		{Type: hrl.TypeWrite, LSN: 3, Offset: 4 << 20, Span: 4096, Payload: bytes.Repeat([]byte{3}, 4096)},
		markerAt(4, 2, time.Now(), hrl.KindCrash),
	}
	cat := sparseDisk(t, size, recs)
	v, err := cat.OpenView(histKey, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	hole := func(n int64) blockdev.Extent { return blockdev.Extent{Length: n, Hole: true, Zero: true} }
	data1 := func(n int64) blockdev.Extent { return blockdev.Extent{Length: n} }
	got, err := v.Map(0, size)
	if err != nil {
		t.Fatal(err)
	}
	// The block written after the point reads as zeros at the point, but
	// has history: data, as far as the view can say without reading it.
	want := []blockdev.Extent{data1(64 << 10), hole(1<<20 - 64<<10), data1(1 << 20), hole(2 << 20), data1(4096), hole(size - 4<<20 - 4096)}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("view at point 1 maps %v, want %v", got, want)
	}
	o, err := NewOverlay(vfs.OS{}, filepath.Join(t.TempDir(), "overlay"), v)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Discard()
	o.WriteAt(make([]byte, 4096), 6<<20)
	got, err = o.Map(4<<20, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	if want := []blockdev.Extent{data1(4096), hole(2<<20 - 4096), data1(4096), hole(2<<20 - 4096)}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("overlay maps %v, want %v", got, want)
	}
}

// TestChangedSince: the blocks between two points come from the undo
// index: every block a record touched (unaligned ones widened to whole
// blocks), none outside; an overlay adds its own writes; a point that
// is not older, or not a point, is refused.
func TestChangedSince(t *testing.T) {
	const size = 8 << 20
	recs := []hrl.Record{
		{Type: hrl.TypeWrite, LSN: 1, Offset: 1 << 20, Span: 1 << 20, Payload: bytes.Repeat([]byte{2}, 1<<20)},
		markerAt(2, 1, time.Now(), hrl.KindCrash),
		{Type: hrl.TypeWrite, LSN: 3, Offset: 4<<20 + 100, Span: 5000, Payload: bytes.Repeat([]byte{3}, 5000)},
		{Type: hrl.TypeTrim, LSN: 4, Offset: 1 << 20, Span: 8192},
		markerAt(5, 2, time.Now(), hrl.KindCrash),
		{Type: hrl.TypeWrite, LSN: 6, Offset: 6 << 20, Span: 4096, Payload: bytes.Repeat([]byte{4}, 4096)},
		markerAt(7, 3, time.Now(), hrl.KindCrash),
	}
	cat := sparseDisk(t, size, recs)
	v, err := cat.OpenView(histKey, 5)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	ch, err := v.ChangedSince(2)
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	for b := range int64(size / UndoBlock) {
		if ch.Has(b) {
			got = append(got, b)
		}
	}
	// Blocks 256-257 (the trim), 1024-1025 (the write at 4 MiB + 100);
	// not block 1536 (written after the view's point).
	if fmt.Sprint(got) != "[256 257 1024 1025]" || ch.Bytes() != 4*UndoBlock {
		t.Fatalf("changed blocks %v (%d bytes)", got, ch.Bytes())
	}
	for _, since := range []uint64{5, 7, 3} {
		if _, err := v.ChangedSince(since); !errors.Is(err, ErrNoPoint) {
			t.Errorf("ChangedSince(%d) = %v, want ErrNoPoint", since, err)
		}
	}
	o, err := NewOverlay(vfs.OS{}, filepath.Join(t.TempDir(), "overlay"), v)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Discard()
	o.WriteAt(make([]byte, 10), 2<<20)
	runs, err := o.ChangedRuns(ch, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	want := "[{1048576 false} {8192 true} {1040384 false} {4096 true} {2093056 false} {8192 true} {4186112 false}]"
	if fmt.Sprint(runs) != want {
		t.Fatalf("overlay changed runs %v, want %s", runs, want)
	}
}
