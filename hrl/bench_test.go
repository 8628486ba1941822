package hrl

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/vfs"
	"golang.org/x/sys/unix"
)

// BenchmarkAppend compares the log (32 appenders, group commit, one fsync
// at the end) with a plain sequential write of the same bytes to the same
// file system (one writer, one fsync), in one run, and reports both rates
// and their ratio.
func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{4 << 10, 1 << 20} {
		b.Run(byteSize(size), func(b *testing.B) {
			const total = 256 << 20
			n := total / size
			payload := make([]byte, size)
			for i := range payload {
				payload[i] = byte(i * 7)
			}
			var logSec, plainSec float64
			for range b.N {
				dir := b.TempDir()
				plainSec += timeIt(func() { plainWrite(b, filepath.Join(dir, "plain"), payload, n) })
				logSec += timeIt(func() { logWrite(b, filepath.Join(dir, "log"), payload, n) })
				os.RemoveAll(dir)
			}
			mb := float64(total) / (1 << 20) * float64(b.N)
			b.ReportMetric(mb/logSec, "log-MB/s")
			b.ReportMetric(mb/plainSec, "plain-MB/s")
			b.ReportMetric(plainSec/logSec, "ratio")
		})
	}
}

func byteSize(n int) string {
	if n >= 1<<20 {
		return "1MiB"
	}
	return "4KiB"
}

func timeIt(fn func()) float64 {
	t := time.Now()
	fn()
	return time.Since(t).Seconds()
}

func plainWrite(b *testing.B, path string, p []byte, n int) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	for i := range n {
		if _, err := f.WriteAt(p, int64(i*len(p))); err != nil {
			b.Fatal(err)
		}
	}
	f.Sync()
}

func logWrite(b *testing.B, dir string, p []byte, n int) {
	l, err := Open(vfs.OS{}, dir, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	const workers = 32
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				_, batch, err := l.Append(Entry{Type: TypeWrite, Offset: uint64(i * len(p)), Payload: p})
				if err == nil {
					err = batch.Wait()
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := l.Sync(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkReusedColdSync: 4 KiB appends, each followed by Sync, into a
// reused segment file whose pages were dropped from the page cache (a
// file kept since long ago, or after memory pressure), with the batches
// padded to the next page (padded) and without (unpadded): a write that
// ends inside an uncached page of an allocated file reads the page first.
// Run with a fixed count, e.g. -bench ReusedColdSync -benchtime 2000x
// -count 3: each run writes one segment of 64 MiB at most.
func BenchmarkReusedColdSync(b *testing.B) {
	for _, pad := range []bool{true, false} {
		name := "unpadded"
		if pad {
			name = "padded"
		}
		b.Run(name, func(b *testing.B) {
			defer func(old bool) { padReused = old }(padReused)
			padReused = pad
			dir := b.TempDir()
			l, err := Open(vfs.OS{}, dir, Options{Recycle: 1, FlushBound: 1 << 30})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			big := make([]byte, 1<<20)
			fill := func(segs int) { // appends until the log has segs segments
				for segCount(l) != segs {
					_, batch, err := l.Append(Entry{Type: TypeWrite, Payload: big})
					if err == nil {
						err = batch.Wait()
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			}
			fill(2)
			if err := l.Sync(); err != nil {
				b.Fatal(err)
			}
			l.mu.Lock()
			first := l.segs[0].last
			l.mu.Unlock()
			if err := l.DropThrough(first); err != nil {
				b.Fatal(err)
			}
			kept, _ := filepath.Glob(filepath.Join(dir, "*.free"))
			if len(kept) != 1 {
				b.Fatalf("kept files %v, want one", kept)
			}
			dropPages(b, kept[0])
			fill(2) // the next segment is the kept file
			l.mu.Lock()
			reused := l.segs[1].reused
			l.mu.Unlock()
			if !reused {
				b.Fatal("the new segment is not the kept file")
			}
			if int64(b.N)*(4096+RecHeaderSize) > DefaultSegmentSize/2 {
				b.Fatalf("%d appends do not fit the reused segment: use -benchtime with a count", b.N)
			}
			p := make([]byte, 4096)
			b.ResetTimer()
			for i := range b.N {
				_, batch, err := l.Append(Entry{Type: TypeWrite, Offset: uint64(i) << 12, Payload: p})
				if err == nil {
					err = batch.Wait()
				}
				if err == nil {
					err = l.Sync()
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// dropPages writes back a file's dirty pages and drops them from the page
// cache.
func dropPages(b *testing.B, path string) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkScanBatches reads a 64 MiB segment of 4 KiB writes in batches
// of 64 records, as a shipper sends a log: each batch by Scan from its
// LSN (which reads the segment from its start) and by ScanFrom from the
// cursor the batch before returned, in one run; it reports both times
// per batch and their ratio.
func BenchmarkScanBatches(b *testing.B) {
	l, err := Open(vfs.OS{}, b.TempDir(), Options{SegmentSize: 64 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	p := make([]byte, 4096)
	const records = 16000 // 64 MiB with headers, one segment
	for i := range records {
		if _, _, err := l.Append(Entry{Type: TypeWrite, Offset: uint64(i) * 4096, Payload: p}); err != nil {
			b.Fatal(err)
		}
	}
	if err := l.Sync(); err != nil {
		b.Fatal(err)
	}
	const batch = 64
	full := errors.New("batch full")
	read := func(cursor bool) float64 {
		return timeIt(func() {
			var c Cursor
			for from := uint64(1); from <= records; from += batch {
				n := 0
				fn := func(Record) error {
					if n == batch {
						return full
					}
					n++
					return nil
				}
				if cursor {
					c, err = l.ScanFrom(c, from, fn)
				} else {
					err = l.Scan(from, fn)
				}
				if err != nil && !errors.Is(err, full) {
					b.Fatal(err)
				}
			}
		})
	}
	var scanSec, cursorSec float64
	for range b.N {
		scanSec += read(false)
		cursorSec += read(true)
	}
	batches := float64(b.N) * records / batch
	b.ReportMetric(scanSec/batches*1e6, "scan-µs/batch")
	b.ReportMetric(cursorSec/batches*1e6, "cursor-µs/batch")
	b.ReportMetric(scanSec/cursorSec, "ratio")
}
