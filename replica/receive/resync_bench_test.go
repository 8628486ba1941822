package receive

import (
	"crypto/rand"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/vrep-io/vrep/replica/wire"
)

// BenchmarkResync measures one resync between a real shipper and a real
// replica server over loopback TLS: an image of random data (64 MiB, or
// VREP_BENCH_RESYNC_MIB), replicated once, then per iteration 1% of its
// chunks overwritten at random in the replica's image and resynced (the
// same path as bench/resync.sh, without the processes). Profile it with
//
//	go test -run - -bench Resync -benchtime 5x -cpuprofile cpu.out -blockprofile block.out ./replica/receive
func BenchmarkResync(b *testing.B) {
	size := int64(64 << 20)
	if s := os.Getenv("VREP_BENCH_RESYNC_MIB"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		size = int64(n) << 20
	}
	rg := newResyncRig(b, size)
	// Random data in the base, so the chunks and the initial copy are
	// not all zero.
	p := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(p)) {
		rand.Read(p)
		if _, err := rg.base.WriteAt(p, off); err != nil {
			b.Fatal(err)
		}
	}
	addr, _, _ := rg.serveHistory(b, "")
	sh := rg.shipper(b, "primary1", addr, always)
	runJoined(b, sh)
	for sh.Status().Initial != 100 || !sh.Status().Connected {
		time.Sleep(time.Millisecond)
	}
	img := filepath.Join(rg.data, "primary1", "vm1", "disk0", "image")
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	chunks := int(wire.Chunks(size, wire.ChunkSize))
	rnd := mrand.New(mrand.NewPCG(1, 1))
	junk := make([]byte, wire.ChunkSize)
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		for _, c := range rnd.Perm(chunks)[:chunks/100] {
			rand.Read(junk)
			if _, err := f.WriteAt(junk, int64(c)*wire.ChunkSize); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		if err := sh.Resync(true); err != nil {
			b.Fatal(err)
		}
		for {
			r := sh.Status().Resync
			if r != nil && r.State == "done" {
				if r.Sent != uint64(chunks/100) {
					b.Fatalf("resync sent %d chunks, %d differ", r.Sent, chunks/100)
				}
				break
			}
			if r != nil && r.State == "failed" {
				b.Fatal(r.Error)
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Seconds())/float64(b.N), "s/resync")
}
