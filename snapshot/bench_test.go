package snapshot

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/blockdev/tracked"
	"github.com/vrep-io/vrep/hrl"
)

// BenchmarkBarrier runs 32 writers of 4 KiB random writes on a tracked
// volume over real files, first with no points, then with a point every
// second, then with one every 20 ms, and reports the write rate of each
// (as a ratio to the run without points) and the barrier hold p50/p99.
func BenchmarkBarrier(b *testing.B) {
	const dur = 4 * time.Second
	for range b.N {
		none, _ := barrierRun(b, dur, 0)
		perSec, _ := barrierRun(b, dur, time.Second)
		stress, g := barrierRun(b, dur, 20*time.Millisecond)
		p50, p99, mx := g.HoldStats()
		b.ReportMetric(none, "writes/s")
		b.ReportMetric(perSec/none, "ratio-1/s")
		b.ReportMetric(stress/none, "ratio-50/s")
		b.ReportMetric(float64(p50.Microseconds()), "hold-p50-µs")
		b.ReportMetric(float64(p99.Microseconds()), "hold-p99-µs")
		b.ReportMetric(float64(mx.Microseconds()), "hold-max-µs")
	}
}

func barrierRun(b *testing.B, dur, every time.Duration) (float64, *Group) {
	dir := b.TempDir()
	path := filepath.Join(dir, "disk.img")
	os.WriteFile(path, nil, 0o600)
	os.Truncate(path, 1<<30)
	base, err := blockdev.OpenFile(path)
	if err != nil {
		b.Fatal(err)
	}
	defer base.Close()
	v, err := tracked.Open(filepath.Join(dir, "state"), base, tracked.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	g, _ := NewGroup("bench", map[string]Disk{"vm1/disk0": v})
	var ops atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			p := make([]byte, 4096)
			for !stop.Load() {
				if _, err := v.WriteAt(p, r.Int64N(1<<18)*4096); err != nil {
					b.Error(err)
					return
				}
				ops.Add(1)
			}
		}()
	}
	start := time.Now()
	if every > 0 {
		for time.Since(start) < dur {
			time.Sleep(every)
			if _, err := g.Take(hrl.KindCrash, ""); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		time.Sleep(dur)
	}
	stop.Store(true)
	wg.Wait()
	return float64(ops.Load()) / time.Since(start).Seconds(), g
}
