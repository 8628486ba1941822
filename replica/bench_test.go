package replica

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/vfs"
)

// BenchmarkApply compares applying 64 KiB write records at random offsets
// of a 1 GiB replica image (an fsync and a state publish per 8 MiB batch)
// with a plain sequential write of the same bytes with the same fsyncs,
// in one run.
func BenchmarkApply(b *testing.B) {
	const (
		image = 1 << 30
		rec   = 64 << 10
		batch = 128 // records: 8 MiB
		total = 512 << 20
	)
	payload := make([]byte, rec)
	for i := range payload {
		payload[i] = byte(i * 31)
	}
	var applySec, plainSec float64
	for range b.N {
		dir := b.TempDir()
		// Plain: the same bytes, sequentially, an fsync per batch.
		f, _ := os.Create(filepath.Join(dir, "plain"))
		start := time.Now()
		for off := int64(0); off < total; off += rec {
			f.WriteAt(payload, off)
			if (off/rec+1)%batch == 0 {
				f.Sync()
			}
		}
		f.Sync()
		plainSec += time.Since(start).Seconds()
		f.Close()
		os.Remove(f.Name())

		d, err := OpenDisk(vfs.OS{}, filepath.Join(dir, "disk"), image)
		if err != nil {
			b.Fatal(err)
		}
		d.FinishBase(0)
		r := rand.New(rand.NewPCG(1, 2))
		recs := make([]hrl.Record, 0, batch)
		lsn := uint64(0)
		start = time.Now()
		for n := 0; n < total/rec; n++ {
			lsn++
			recs = append(recs, hrl.Record{Type: hrl.TypeWrite, LSN: lsn, Offset: uint64(r.Int64N(image/rec)) * rec, Payload: payload, Span: rec})
			if len(recs) == batch {
				if _, err := d.Apply(recs); err != nil {
					b.Fatal(err)
				}
				recs = recs[:0]
			}
		}
		applySec += time.Since(start).Seconds()
		d.Close()
	}
	mb := float64(total) / (1 << 20) * float64(b.N)
	b.ReportMetric(mb/applySec, "apply-MB/s")
	b.ReportMetric(mb/plainSec, "plain-MB/s")
	b.ReportMetric(plainSec/applySec, "ratio")
}
