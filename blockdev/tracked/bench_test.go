package tracked

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vrep-io/vrep/blockdev"
)

// BenchmarkRandom compares the tracked volume with the bare file device
// it wraps: 4 KiB random writes and reads at 1 and 32 workers, over a
// 1 GiB image, in one run. Reads go half to merged data, half to the log.
func BenchmarkRandom(b *testing.B) {
	for _, workers := range []int{1, 32} {
		for _, op := range []string{"write", "sustained", "read"} {
			b.Run(op+"/"+map[int]string{1: "1", 32: "32"}[workers], func(b *testing.B) {
				var bare, trk float64
				for range b.N {
					bare += randomOps(b, false, op, workers)
					trk += randomOps(b, true, op, workers)
				}
				b.ReportMetric(trk/float64(b.N), "tracked-ops/s")
				b.ReportMetric(bare/float64(b.N), "bare-ops/s")
				b.ReportMetric(trk/bare, "ratio")
			})
		}
	}
}

const benchImage = 1 << 30

func randomOps(b *testing.B, tracked bool, op string, workers int) float64 {
	dir := b.TempDir()
	path := filepath.Join(dir, "disk.img")
	f, _ := os.Create(path)
	// Fully allocated, as a VM image would be after its first fill.
	buf := make([]byte, 4<<20)
	for off := int64(0); off < benchImage; off += int64(len(buf)) {
		f.WriteAt(buf, off)
	}
	f.Close()
	base, err := blockdev.OpenFile(path)
	if err != nil {
		b.Fatal(err)
	}
	defer base.Close()
	var dev blockdev.Device = base
	if tracked {
		opts := Options{}
		if op == "sustained" {
			// Merges run during the timed writes: the whole cost is counted.
			opts.MergeAfter = 64 << 20
		}
		v, err := Open(filepath.Join(dir, "state"), base, opts)
		if err != nil {
			b.Fatal(err)
		}
		defer v.Close()
		dev = v
		if op == "read" {
			// Half the disk merged, half in the log.
			fill(b, v, 0, benchImage/2)
			v.Merge()
			fill(b, v, benchImage/2, benchImage/2)
		}
	}
	const perWorker = 200000
	n := perWorker / workers
	if workers == 1 {
		n = 50000
	}
	// The bare device in the sustained rows fsyncs as often as the tracked
	// one checkpoints (every 2 × 64 MiB) and at the end: the same promise,
	// the data on disk, for both.
	var written atomic.Int64
	const bareSyncEvery = 128 << 20
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			p := make([]byte, 4096)
			for range n {
				off := r.Int64N(benchImage/4096) * 4096
				var err error
				if op != "read" {
					_, err = dev.WriteAt(p, off)
					if n := written.Add(int64(len(p))); err == nil && !tracked && op == "sustained" && n%bareSyncEvery == 0 {
						err = dev.Sync()
					}
				} else {
					_, err = dev.ReadAt(p, off)
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if op == "sustained" {
		// What is left of the backlog counts too: a final merge and
		// checkpoint, or the bare device's fsync.
		if v, ok := dev.(*Volume); ok {
			v.Merge()
		} else {
			dev.Sync()
		}
	}
	return float64(n*workers) / time.Since(start).Seconds()
}

func fill(b *testing.B, d blockdev.Device, off, n int64) {
	p := make([]byte, 1<<20)
	for o := off; o < off+n; o += int64(len(p)) {
		if _, err := d.WriteAt(p, o); err != nil {
			b.Fatal(err)
		}
	}
}
