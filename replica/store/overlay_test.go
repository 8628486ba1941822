package store

import (
	"bytes"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/blockdev/devtest"
	"github.com/vrep-io/vrep/blockdev/tracked"
	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/vfs"
)

// TestPersistentOverlayConformance: a persistent overlay passes the
// device suite, over a point view and reopened from its files.
func TestPersistentOverlayConformance(t *testing.T) {
	devtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
		base := blockdev.NewMem(size)
		base.WriteAt(randomBytes(uint64(size), int(size)), 0)
		o, err := CreateOverlay(vfs.OS{}, filepath.Join(t.TempDir(), "ov"), base)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { o.Discard() })
		return o
	})
}

// TestPersistentOverlayReopen: what was written before a Sync reads
// back from the reopened overlay; the base never changes.
func TestPersistentOverlayReopen(t *testing.T) {
	const size = 1 << 20
	want := randomBytes(3, size)
	base := blockdev.NewMem(size)
	base.WriteAt(want, 0)
	orig := bytes.Clone(want)
	path := filepath.Join(t.TempDir(), "ov")
	o, err := CreateOverlay(vfs.OS{}, path, base)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 1))
	for range 50 {
		n := int64(1 + r.IntN(20000))
		off := r.Int64N(size - n)
		p := randomBytes(r.Uint64(), int(n))
		if _, err := o.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
	if err := o.Sync(); err != nil {
		t.Fatal(err)
	}
	o.Close()
	o, err = OpenOverlay(vfs.OS{}, path, base)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(t, o), want) {
		t.Fatal("the reopened overlay does not read what was written before its Sync")
	}
	if !bytes.Equal(readAll(t, base), orig) {
		t.Fatal("overlay writes reached the base")
	}
	if _, err := OpenOverlay(vfs.OS{}, path, blockdev.NewMem(size/2)); err == nil {
		t.Fatal("an overlay reopened over a base of another size")
	}
	o.Discard()
	if _, err := OpenOverlay(vfs.OS{}, path, base); err == nil {
		t.Fatal("a discarded overlay reopened")
	}
}

// TestOverlayPowerCut: a tracked volume over a persistent overlay (a
// failed-over disk), random writes, zeroes, flushes and merges, the power
// cut at a random I/O; after reopening the overlay and the volume the
// disk is the state after a prefix of the operations that holds every
// flushed one.
func TestOverlayPowerCut(t *testing.T) {
	seeds := 60
	if testing.Short() {
		seeds = 20
	}
	for seed := range uint64(seeds) {
		overlayPowerCut(t, seed)
	}
}

func overlayPowerCut(t *testing.T, seed uint64) {
	const size = 1 << 20
	r := rand.New(rand.NewPCG(seed, 9))
	fs := vfs.NewMem(seed)
	fs.MkdirAll("/")
	base := blockdev.NewMem(size)
	start := randomBytes(seed+100, size)
	base.WriteAt(start, 0)
	o, err := CreateOverlay(fs, "/ov", base)
	if err != nil {
		t.Fatal(err)
	}
	opts := tracked.Options{FS: fs, SegmentSize: 64 << 10, MergeAfter: int64(16<<10 + r.IntN(128<<10)), MergeIdle: -1}
	v, err := tracked.Open("/vol", o, opts)
	if err != nil {
		t.Fatal(err)
	}
	type op struct {
		off  int64
		data []byte // nil: a flush
	}
	var ops []op
	durable := 0
	fs.CutAfter(20 + r.IntN(300))
	for i := 0; i < 300; i++ {
		var o op
		var err error
		switch k := r.IntN(10); {
		case k < 7:
			n := int64(512 * (1 + r.IntN(24)))
			if r.IntN(3) == 0 {
				n = int64(1 + r.IntN(10000))
			}
			o.off = r.Int64N(size - n)
			o.data = randomBytes(seed<<20|uint64(i), int(n))
			if r.IntN(4) == 0 {
				clear(o.data)
				err = v.WriteZeroes(o.off, n, true)
			} else {
				_, err = v.WriteAt(o.data, o.off)
			}
		case k < 9:
			err = v.Sync()
		default:
			err = v.Merge()
		}
		ops = append(ops, o)
		if err != nil {
			break
		}
		if o.data == nil {
			durable = len(ops)
		}
	}
	fs.Cut()
	v.Close()
	fs.Revive()
	o, err = OpenOverlay(fs, "/ov", base)
	if err != nil {
		t.Fatalf("seed %d: reopening the overlay after the cut: %v", seed, err)
	}
	if v, err = tracked.Open("/vol", o, opts); err != nil {
		t.Fatalf("seed %d: reopening the volume after the cut: %v", seed, err)
	}
	defer v.Close()
	img := readAll(t, v)
	state := bytes.Clone(start)
	for k := 0; k <= len(ops); k++ {
		if k >= durable && bytes.Equal(img, state) {
			return
		}
		if k < len(ops) && ops[k].data != nil {
			copy(state[ops[k].off:], ops[k].data)
		}
	}
	t.Fatalf("seed %d: after the cut the disk is no prefix of the operations that keeps the %d flushed ones (of %d)", seed, durable, len(ops))
}

// TestRollBackFoldDrop: the image rolled back to a point reads as the
// point's view; folding an overlay's writes in makes it read as the
// overlay; dropping the history leaves no point and no undo segment.
func TestRollBackFoldDrop(t *testing.T) {
	base := randomBytes(8, diskSize)
	data := t.TempDir()
	cat, d := seededDisk(t, vfs.OS{}, data, base, CatalogConfig{Retention: Retention{Window: time.Hour}})
	recs := stream(11, 1, 400)
	if _, err := d.Apply(recs); err != nil {
		t.Fatal(err)
	}
	h, err := cat.History(histKey)
	if err != nil || len(h.Points) < 3 {
		t.Fatalf("history: %v, %d points", err, len(h.Points))
	}
	p := h.Points[len(h.Points)/3]
	v, err := cat.OpenView(histKey, p.LSN)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	atPoint := model(base, recs[:p.LSN])
	o, err := CreateOverlay(vfs.OS{}, filepath.Join(data, "ov"), v)
	if err != nil {
		t.Fatal(err)
	}
	o.WriteAt(bytes.Repeat([]byte{0xab}, 10000), 5000)
	o.WriteAt(bytes.Repeat([]byte{0xcd}, 3), int64(diskSize)-3)
	want := readAll(t, o)
	for range 2 { // a second pass, as after a crash, changes nothing
		if _, err := cat.RollBack(histKey, p.LSN); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(image(t, d), atPoint) {
			t.Fatal("the rolled-back image is not the disk at the point")
		}
		if !bytes.Equal(readAll(t, v), atPoint) {
			t.Fatal("the view at the point changed under the rollback")
		}
	}
	if _, err := cat.Fold(histKey, o); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(image(t, d), want) {
		t.Fatal("the folded image is not the overlay")
	}
	v.Close()
	if err := cat.DropHistory(histKey); err != nil {
		t.Fatal(err)
	}
	if h, err := cat.History(histKey); err != nil || len(h.Points) != 0 || h.UndoEntries != 0 {
		t.Fatalf("after the drop: %v, %d points, %d undo entries", err, len(h.Points), h.UndoEntries)
	}
	if segs, _ := listSegments(vfs.OS{}, filepath.Join(data, histKey, "undo")); len(segs) != 0 {
		t.Fatalf("undo segments left: %v", segs)
	}
	_ = hrl.TypeMarker
}
