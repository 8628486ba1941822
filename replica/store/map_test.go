package store

import (
	"bytes"
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
func TestViewMap(t *testing.T) {
	const size = 8 << 20
	data := t.TempDir()
	cat, err := OpenCatalog(CatalogConfig{Data: data, FS: vfs.OS{}, Index: filepath.Join(t.TempDir(), "index"), Retention: Retention{Window: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	d, err := OpenDisk(vfs.OS{}, filepath.Join(data, histKey), size)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
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
	recs := []hrl.Record{
		{Type: hrl.TypeWrite, LSN: 1, Offset: 1 << 20, Span: 1 << 20, Payload: bytes.Repeat([]byte{2}, 1<<20)},
		markerAt(2, 1, time.Now(), hrl.KindCrash),
		{Type: hrl.TypeWrite, LSN: 3, Offset: 4 << 20, Span: 4096, Payload: bytes.Repeat([]byte{3}, 4096)},
		markerAt(4, 2, time.Now(), hrl.KindCrash),
	}
	if _, err := d.Apply(recs); err != nil {
		t.Fatal(err)
	}
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
