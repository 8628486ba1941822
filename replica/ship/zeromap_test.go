package ship

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/vrep-io/vrep/blockdev"
)

// The initial copy skips, unread, only what reads as zeros: on a sparse
// file with data scattered over it (some at a chunk's edges, some in a
// chunk's middle), every chunk zeroMap calls zeros holds only zeros, and
// chunks that are holes throughout are known without reading.
func TestZeroMapSkipsOnlyZeros(t *testing.T) {
	const size, chunk = 64 << 20, 1 << 20
	path := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	data := map[int64]bool{} // chunks holding data
	for _, off := range []int64{0, 3*chunk - 1, 7*chunk + 12345, 20 * chunk, size - 1} {
		if _, err := f.WriteAt([]byte{1}, off); err != nil {
			t.Fatal(err)
		}
		data[off/chunk] = true
	}
	for range 10 {
		off := rng.Int64N(size - 4096)
		if off/chunk == 40 {
			continue // the chunk written with zeros below
		}
		if _, err := f.WriteAt([]byte{0xa5}, off); err != nil {
			t.Fatal(err)
		}
		data[off/chunk] = true
	}
	// A chunk written with zeros is allocated: it is read, and found zero.
	if _, err := f.WriteAt(make([]byte, chunk), 40*chunk); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dev, err := blockdev.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if ext, err := dev.Map(0, size); err != nil || len(ext) < 2 {
		t.Skipf("the file system here does not report holes (%v, %v)", ext, err)
	}
	z := zeroMap{dev: dev, size: size}
	buf := make([]byte, chunk)
	skipped := 0
	for off := int64(0); off < size; off += chunk {
		if !z.zeros(off, chunk) {
			continue
		}
		skipped++
		if data[off/chunk] {
			t.Fatalf("chunk %d holds data, zeroMap says it reads as zeros", off/chunk)
		}
		if _, err := dev.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if !blockdev.AllZero(buf) {
			t.Fatalf("chunk %d skipped but not zeros", off/chunk)
		}
	}
	// Every chunk without data is a hole but the one written with zeros.
	if want := size/chunk - len(data) - 1; skipped != want {
		t.Fatalf("skipped %d chunks unread, want the %d holes", skipped, want)
	}
}
