package store

import (
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
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

// applyRun applies total bytes of rec-sized write records at random
// offsets of a fully written size-byte image, in 8 MiB batches, with
// history off, in undo segments or inline in badger; it returns the
// seconds applying took and, with history, the undo bytes it kept.
func applyRun(b *testing.B, size, rec, total int64, mode string) (float64, int64) {
	dir := b.TempDir()
	d, err := OpenDisk(vfs.OS{}, filepath.Join(dir, histKey), size)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	base := randomBytes(9, int(size))
	d.WriteBase(0, base)
	d.FinishBase(0)
	var cat *Catalog
	if mode != "off" {
		if cat, err = OpenCatalog(CatalogConfig{Data: dir, Inline: mode == "inline"}); err != nil {
			b.Fatal(err)
		}
		defer cat.Close()
		if err := d.WithHistory(cat, histKey); err != nil {
			b.Fatal(err)
		}
	}
	payload := randomBytes(10, int(rec))
	r := rand.New(rand.NewPCG(1, 2))
	batch := int((8 << 20) / rec)
	recs := make([]hrl.Record, 0, batch)
	lsn := uint64(0)
	start := time.Now()
	for n := int64(0); n < total/rec; n++ {
		lsn++
		recs = append(recs, hrl.Record{Type: hrl.TypeWrite, LSN: lsn, Offset: uint64(r.Int64N(size/rec) * rec), Payload: payload, Span: uint32(rec)})
		if len(recs) == batch {
			if _, err := d.Apply(recs); err != nil {
				b.Fatal(err)
			}
			recs = recs[:0]
		}
	}
	sec := time.Since(start).Seconds()
	var hist int64
	if cat != nil {
		h, err := cat.History(histKey)
		if err != nil {
			b.Fatal(err)
		}
		hist = h.UndoBytes + int64(h.UndoEntries)*undoHeaderSize
		if mode == "inline" {
			hist = allocated(b, filepath.Join(dir, "index"))
		}
	}
	return sec, hist
}

// BenchmarkApplyHistory: applying with history (undo segments, or undo
// bytes inline in badger) against applying without, in one run, for 4 KiB
// and 64 KiB records overwriting a 256 MiB image. hist-B/B is the history
// kept per byte overwritten: entry headers and old bytes in segments, or
// the space badger's files take on disk.
func BenchmarkApplyHistory(b *testing.B) {
	const size, total = 256 << 20, 128 << 20
	for _, rec := range []int64{4 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("rec=%dk", rec>>10), func(b *testing.B) {
			secs := map[string]float64{}
			hist := map[string]int64{}
			for range b.N {
				for _, mode := range []string{"off", "segments", "inline"} {
					s, h := applyRun(b, size, rec, total, mode)
					secs[mode] += s
					hist[mode] += h
				}
			}
			mb := float64(total) / (1 << 20) * float64(b.N)
			b.ReportMetric(mb/secs["off"], "off-MB/s")
			b.ReportMetric(mb/secs["segments"], "segments-MB/s")
			b.ReportMetric(mb/secs["inline"], "inline-MB/s")
			b.ReportMetric(secs["off"]/secs["segments"], "segments/off")
			b.ReportMetric(secs["off"]/secs["inline"], "inline/off")
			over := float64(total) * float64(b.N)
			b.ReportMetric(float64(hist["segments"])/over, "segments-hist-B/B")
			b.ReportMetric(float64(hist["inline"])/over, "inline-hist-B/B")
		})
	}
}

// BenchmarkViewRead: 4 KiB random reads of a point view whose point has
// 128 MiB of 4 KiB overwrites after it (about 40% of its blocks come from
// undo entries), against the same reads of the replica image, one reader
// and four, in one run.
func BenchmarkViewRead(b *testing.B) {
	const size = 256 << 20
	dir := b.TempDir()
	base := randomBytes(9, size)
	cat, d := seededDisk(&testing.T{}, vfs.OS{}, dir, base, CatalogConfig{Retention: Retention{Window: time.Hour}})
	defer d.Close()
	defer cat.Close()
	if _, err := d.Apply([]hrl.Record{markerAt(1, 1, time.Now(), hrl.KindCrash)}); err != nil {
		b.Fatal(err)
	}
	payload := randomBytes(10, 4096)
	r := rand.New(rand.NewPCG(1, 2))
	var recs []hrl.Record
	for lsn := uint64(2); lsn < 2+(128<<20)/4096; lsn++ {
		recs = append(recs, hrl.Record{Type: hrl.TypeWrite, LSN: lsn, Offset: uint64(r.Int64N(size/4096) * 4096), Payload: payload, Span: 4096})
		if len(recs) == 2048 {
			if _, err := d.Apply(recs); err != nil {
				b.Fatal(err)
			}
			recs = recs[:0]
		}
	}
	v, err := cat.OpenView(histKey, 1)
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	read := func(dev interface {
		ReadAt([]byte, int64) (int, error)
	}, readers, n int) float64 {
		start := time.Now()
		var wg sync.WaitGroup
		for g := range readers {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(g), 7))
				buf := make([]byte, 4096)
				for range n / readers {
					if _, err := dev.ReadAt(buf, r.Int64N(size/4096)*4096); err != nil {
						panic(err)
					}
				}
			})
		}
		wg.Wait()
		return float64(n) / time.Since(start).Seconds()
	}
	const n = 200000
	read(v, 1, n) // the entries' checksums are verified on first use
	for _, readers := range []int{1, 4} {
		b.Run(fmt.Sprintf("readers=%d", readers), func(b *testing.B) {
			var img, view float64
			for range b.N {
				img += read(d, readers, n)
				view += read(v, readers, n)
			}
			b.ReportMetric(img/float64(b.N), "image-IOPS")
			b.ReportMetric(view/float64(b.N), "view-IOPS")
			b.ReportMetric(view/img, "view/image")
		})
	}
}

// allocated returns the bytes the files under dir take on disk.
func allocated(b *testing.B, dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			var st syscall.Stat_t
			if syscall.Stat(path, &st) == nil {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}
