package snapshot

import (
	"encoding/binary"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/blockdev/tracked"
	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/vfs"
)

func openVol(t *testing.T, fs vfs.FS, dir string, size int64) *tracked.Volume {
	v, err := tracked.Open(dir, blockdev.NewMem(size), tracked.Options{FS: fs, SegmentSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	v.PauseMerge() // the log keeps everything from LSN 1, to rebuild points
	t.Cleanup(func() { v.Close() })
	return v
}

// rebuild replays a disk's log from the start up to a marker's LSN.
func rebuild(t *testing.T, v *tracked.Volume, upTo uint64) *blockdev.Mem {
	d := blockdev.NewMem(v.Size())
	err := v.Log().Scan(1, func(r hrl.Record) error {
		if r.LSN > upTo {
			return errStop
		}
		if r.Type == hrl.TypeWrite {
			_, err := d.WriteAt(r.Payload, int64(r.Offset))
			return err
		}
		return nil
	})
	if err != nil && err != errStop {
		t.Fatal(err)
	}
	return d
}

type stop struct{}

func (stop) Error() string { return "stop" }

var errStop error = stop{}

// TestGroupNeverShowsCommitWithoutRecord: a workload writes record i to
// disk A and, once that is acknowledged, commit i to disk B. Points are
// taken all along; in every point, each commit has its record.
func TestGroupNeverShowsCommitWithoutRecord(t *testing.T) {
	fs := vfs.NewMem(1)
	const blocks = 2000
	a := openVol(t, fs, "/a", blocks*512)
	b := openVol(t, fs, "/b", blocks*512)
	g, err := NewGroup("app", map[string]Disk{"vm1/a": a, "vm2/b": b})
	if err != nil {
		t.Fatal(err)
	}
	var done atomic.Bool
	var taken atomic.Int64 // points taken so far
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer done.Store(true)
		blk := make([]byte, 512)
		for i := 1; i < blocks; i++ {
			// Eight times along the way the writer lets a point be taken
			// before it goes on, so that points fall inside the workload
			// however the machine schedules the two.
			if i%(blocks/8) == 0 {
				for want := taken.Load() + 1; taken.Load() < want; {
					runtime.Gosched()
				}
			}
			binary.LittleEndian.PutUint64(blk, uint64(i))
			if _, err := a.WriteAt(blk, int64(i)*512); err != nil {
				t.Error(err)
				return
			}
			if _, err := b.WriteAt(blk, int64(i)*512); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var points []Point
	for !done.Load() {
		p, err := g.Take(hrl.KindCrash, "")
		if err != nil {
			t.Fatal(err)
		}
		points = append(points, p)
		taken.Add(1)
		time.Sleep(200 * time.Microsecond) // pacing: fewer points to check
	}
	wg.Wait()
	mid := 0
	for _, p := range points {
		if p.LSNs["vm1/a"] == 0 || p.LSNs["vm2/b"] == 0 || p.Group != "app" {
			t.Fatalf("point %+v lacks a disk", p)
		}
		imgA := rebuild(t, a, p.LSNs["vm1/a"])
		imgB := rebuild(t, b, p.LSNs["vm2/b"])
		commits := 0
		buf := make([]byte, 8)
		for i := 1; i < blocks; i++ {
			imgB.ReadAt(buf, int64(i)*512)
			if binary.LittleEndian.Uint64(buf) != uint64(i) {
				continue
			}
			commits++
			imgA.ReadAt(buf, int64(i)*512)
			if binary.LittleEndian.Uint64(buf) != uint64(i) {
				t.Fatalf("point %d holds commit %d without its record", p.ID, i)
			}
		}
		if commits > 0 && commits < blocks-1 {
			mid++
		}
	}
	if mid < 3 {
		t.Fatalf("only %d of %d points fell inside the workload: the check proves little", mid, len(points))
	}
	p50, p99, mx := g.HoldStats()
	t.Logf("%d points (%d mid-workload); hold p50 %v p99 %v max %v", len(points), mid, p50, p99, mx)
}

// TestPointAfterAckedWrite: a write acknowledged before Take is in the
// point; one issued after Take returned is not.
func TestPointAfterAckedWrite(t *testing.T) {
	fs := vfs.NewMem(2)
	v := openVol(t, fs, "/v", 1<<20)
	g, _ := NewGroup("g", map[string]Disk{"vm1/d": v})
	v.WriteAt([]byte("before"), 0)
	p, err := g.Take(hrl.KindApp, "")
	if err != nil {
		t.Fatal(err)
	}
	v.WriteAt([]byte("after!"), 0)
	img := rebuild(t, v, p.LSNs["vm1/d"])
	got := make([]byte, 6)
	img.ReadAt(got, 0)
	if string(got) != "before" {
		t.Fatalf("point holds %q", got)
	}
	// The marker is in the log with the point's id, kind and group.
	var m hrl.Marker
	v.Log().Scan(p.LSNs["vm1/d"], func(r hrl.Record) error {
		if r.Type == hrl.TypeMarker {
			m, _ = hrl.DecodeMarker(r.Payload)
			return errStop
		}
		return nil
	})
	if m.ID != p.ID || m.Kind != hrl.KindApp || m.Group != "g" {
		t.Fatalf("marker %+v for point %+v", m, p)
	}
}

func TestIncompletePoint(t *testing.T) {
	fs := vfs.NewMem(3)
	v := openVol(t, fs, "/v", 1<<20)
	g, _ := NewGroup("g", map[string]Disk{"vm1/d": v})
	v.Close()
	if _, err := g.Take(hrl.KindCrash, ""); err == nil {
		t.Fatal("a point on a closed disk was reported complete")
	}
}

// TestHoldStats: the statistics come from the points' own hold times: the
// maximum is the longest hold, the median lies between the extremes.
func TestHoldStats(t *testing.T) {
	fs := vfs.NewMem(3)
	v := openVol(t, fs, "/v", 1<<20)
	g, _ := NewGroup("g", map[string]Disk{"vm1/d": v})
	if p50, p99, mx := g.HoldStats(); p50 != 0 || p99 != 0 || mx != 0 {
		t.Fatalf("no point yet: %v %v %v", p50, p99, mx)
	}
	var lo, hi time.Duration
	for i := range 50 {
		p, err := g.Take(hrl.KindCrash, "")
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 || p.Hold < lo {
			lo = p.Hold
		}
		hi = max(hi, p.Hold)
	}
	p50, p99, mx := g.HoldStats()
	near := func(a, b time.Duration) bool { return a-b < time.Microsecond && b-a < time.Microsecond }
	if !near(mx, hi) || p50 < lo-time.Microsecond || p50 > p99 || p99 > mx {
		t.Fatalf("p50 %v p99 %v max %v; holds ranged %v..%v", p50, p99, mx, lo, hi)
	}
}
