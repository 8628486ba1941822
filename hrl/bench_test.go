package hrl

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/vfs"
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
