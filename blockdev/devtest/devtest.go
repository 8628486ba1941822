// Package devtest is the conformance suite for blockdev.Device: every
// device in vrep (file, memory, tracked volume, and later point views and
// overlays, and the frontends through real clients) runs it.
package devtest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/vrep-io/vrep/blockdev"
)

// Factory makes a fresh device of the given size whose content is
// arbitrary but stable. Cleanup is the factory's business (t.Cleanup).
type Factory func(t *testing.T, size int64) blockdev.Device

// Size is the device size the suite asks for: 8 MiB, enough to cross
// the 1 MiB index buckets of the tracked volume several times.
const Size = 8 << 20

// Run runs the whole suite against devices made by f.
func Run(t *testing.T, f Factory) {
	t.Run("Size", func(t *testing.T) {
		if got := f(t, Size).Size(); got != Size {
			t.Fatalf("Size() = %d, want %d", got, Size)
		}
	})
	t.Run("Bounds", func(t *testing.T) { testBounds(t, f(t, Size)) })
	t.Run("ReadWrite", func(t *testing.T) { testReadWrite(t, f(t, Size)) })
	t.Run("Zeroes", func(t *testing.T) { testZeroes(t, f(t, Size)) })
	t.Run("RandomOps", func(t *testing.T) { testRandom(t, f(t, Size), 1) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, f(t, Size)) })
	t.Run("Submit", func(t *testing.T) {
		d, ok := f(t, Size).(blockdev.Submitter)
		if !ok {
			t.Skip("not a blockdev.Submitter")
		}
		testSubmit(t, d.(blockdev.Device), d)
	})
	t.Run("Map", func(t *testing.T) {
		d := f(t, Size)
		if _, ok := d.(blockdev.Mapper); !ok {
			t.Skip("not a blockdev.Mapper")
		}
		// Data, a trimmed range inside it, zeroes, and data at the edges.
		for _, w := range []struct{ off, n int64 }{{0, 4096}, {1 << 20, 3 << 20}, {Size - 8192, 8192}, {5<<20 + 100, 1000}} {
			if _, err := d.WriteAt(fill(uint64(w.off)|1, int(w.n)), w.off); err != nil {
				t.Fatal(err)
			}
		}
		if err := blockdev.Trim(d, 2<<20, 64<<10); err != nil {
			t.Fatal(err)
		}
		if err := blockdev.WriteZeroes(d, 3<<20, 4096, false); err != nil {
			t.Fatal(err)
		}
		testMap(t, d, snapshot(t, d))
	})
}

// testMap checks a Mapper against the content it must read: extents are
// consecutive, start where asked and stay inside the range, and none
// that claims a hole or zeros covers a byte that is not zero. Whole-device
// walks and random ranges, aligned or not; ranges past the end refused.
func testMap(t *testing.T, d blockdev.Device, want []byte) {
	t.Helper()
	m := d.(blockdev.Mapper)
	size := d.Size()
	check := func(off, n int64) {
		t.Helper()
		for end := off + n; off < end; {
			ext, err := m.Map(off, end-off)
			if err != nil {
				t.Fatalf("Map(%d, %d): %v", off, end-off, err)
			}
			if len(ext) == 0 {
				t.Fatalf("Map(%d, %d) returned no extent", off, end-off)
			}
			for _, e := range ext {
				if e.Length <= 0 || off+e.Length > end {
					t.Fatalf("Map: extent of %d bytes at %d leaves [%d, %d)", e.Length, off, off, end)
				}
				if e.Hole || e.Zero {
					if i := bytes.IndexFunc(want[off:off+e.Length], func(r rune) bool { return r != 0 }); i >= 0 {
						t.Fatalf("Map: [%d, +%d) reported hole=%v zero=%v, but byte %d is not zero", off, e.Length, e.Hole, e.Zero, off+int64(i))
					}
				}
				off += e.Length
			}
		}
	}
	check(0, size)
	r := rand.New(rand.NewPCG(5, 5))
	for range 200 {
		n := 1 + r.Int64N(2<<20)
		check(r.Int64N(size-n+1), n)
	}
	for _, off := range []int64{-1, size, size - 4095} {
		if _, err := m.Map(off, 4096); !errors.Is(err, blockdev.ErrOutOfRange) {
			t.Errorf("Map(%d, 4096) = %v, want ErrOutOfRange", off, err)
		}
	}
}

// testSubmit submits overlapping writes with up to 32 outstanding: each
// completed write reads back at once, and in the end the device holds
// what the writes give in submission order.
func testSubmit(t *testing.T, d blockdev.Device, s blockdev.Submitter) {
	size := d.Size()
	if _, err := s.Submit(make([]byte, 4096), size-2048); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Errorf("Submit past the end: %v, want ErrOutOfRange", err)
	}
	if p, err := s.Submit(nil, 0); err != nil || p.Wait() != nil {
		t.Errorf("empty Submit: %v", err)
	}
	type sub struct {
		p   blockdev.Pending
		off int64
		buf []byte
	}
	r := rand.New(rand.NewPCG(7, 7))
	model := snapshot(t, d)
	var out []sub
	wait := func(x sub) {
		t.Helper()
		if err := x.p.Wait(); err != nil {
			t.Fatalf("Wait: %v", err)
		}
		select {
		case <-x.p.Done():
		default:
			t.Fatal("Done is open after Wait returned")
		}
		got := make([]byte, len(x.buf))
		if _, err := d.ReadAt(got, x.off); err != nil {
			t.Fatal(err)
		}
		// Later writes may already cover parts: compare with the model.
		if want := model[x.off : x.off+int64(len(x.buf))]; !bytes.Equal(got, want) {
			t.Fatalf("a completed write at %d reads back wrong at +%s", x.off, firstDiff(got, want))
		}
	}
	for i := range 400 {
		n := int64(4096 * (1 + r.IntN(8)))
		off := r.Int64N(64) * 4096 // a small area: writes overlap
		p := fill(uint64(i)+1000, int(n))
		pend, err := s.Submit(p, off)
		if err != nil {
			t.Fatal(err)
		}
		copy(model[off:], p)
		out = append(out, sub{pend, off, p})
		if len(out) == 32 {
			wait(out[0])
			out = out[1:]
		}
	}
	for _, x := range out {
		wait(x)
	}
	if got := snapshot(t, d); !bytes.Equal(got, model) {
		t.Fatalf("device differs from the submitted writes at %s", firstDiff(got, model))
	}
}

func snapshot(t *testing.T, d blockdev.Device) []byte {
	t.Helper()
	buf := make([]byte, d.Size())
	if _, err := d.ReadAt(buf, 0); err != nil {
		t.Fatalf("read whole device: %v", err)
	}
	return buf
}

func testBounds(t *testing.T, d blockdev.Device) {
	size := d.Size()
	buf := make([]byte, 4096)
	for _, off := range []int64{-1, -4096, size - 4095, size, size + 1, 1 << 62} {
		if _, err := d.ReadAt(buf, off); !errors.Is(err, blockdev.ErrOutOfRange) {
			t.Errorf("ReadAt(4096, %d) = %v, want ErrOutOfRange", off, err)
		}
		if _, err := d.WriteAt(buf, off); !errors.Is(err, blockdev.ErrOutOfRange) {
			t.Errorf("WriteAt(4096, %d) = %v, want ErrOutOfRange", off, err)
		}
		if err := blockdev.WriteZeroes(d, off, 4096, false); !errors.Is(err, blockdev.ErrOutOfRange) {
			t.Errorf("WriteZeroes(%d, 4096) = %v, want ErrOutOfRange", off, err)
		}
	}
	if err := blockdev.Trim(d, 0, 0); !errors.Is(err, blockdev.ErrEmpty) {
		t.Errorf("Trim(0, 0) = %v, want ErrEmpty", err)
	}
	if n, err := d.ReadAt(nil, 0); n != 0 || err != nil {
		t.Errorf("ReadAt(nil, 0) = %d, %v; want 0, nil", n, err)
	}
	// The last byte is in range.
	if _, err := d.ReadAt(buf[:1], size-1); err != nil {
		t.Errorf("ReadAt(1, size-1) = %v", err)
	}
}

func fill(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func testReadWrite(t *testing.T, d blockdev.Device) {
	want := snapshot(t, d)
	cases := []struct{ off, n int64 }{
		{0, 4096}, {4096, 512}, {1, 1}, {4095, 2}, {(1 << 20) - 100, 200},
		{3 << 20, 1 << 20}, {5<<20 + 17, 3<<20 - 17 - 1}, {d.Size() - 1, 1},
	}
	for i, c := range cases {
		p := fill(uint64(i), int(c.n))
		if n, err := d.WriteAt(p, c.off); err != nil || n != len(p) {
			t.Fatalf("WriteAt(%d, %d) = %d, %v", c.off, c.n, n, err)
		}
		copy(want[c.off:], p)
		got := make([]byte, c.n)
		if _, err := d.ReadAt(got, c.off); err != nil {
			t.Fatalf("ReadAt(%d, %d): %v", c.off, c.n, err)
		}
		if !bytes.Equal(got, p) {
			t.Fatalf("ReadAt(%d, %d) does not return what was written", c.off, c.n)
		}
	}
	if err := d.Sync(); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if got := snapshot(t, d); !bytes.Equal(got, want) {
		t.Fatalf("whole device differs from the model at %s", firstDiff(got, want))
	}
	// A caller's buffer is not retained.
	p := fill(99, 4096)
	if _, err := d.WriteAt(p, 8192); err != nil {
		t.Fatal(err)
	}
	copy(want[8192:], p)
	clear(p)
	if got := snapshot(t, d); !bytes.Equal(got, want) {
		t.Fatal("device changed when the caller reused its buffer")
	}
}

func testZeroes(t *testing.T, d blockdev.Device) {
	p := fill(5, 3<<20)
	if _, err := d.WriteAt(p, 1<<20); err != nil {
		t.Fatal(err)
	}
	want := snapshot(t, d)
	for _, c := range []struct {
		off, n int64
		trim   bool
	}{{1 << 20, 4096, true}, {1<<20 + 100, 10000, false}, {2<<20 - 7, 1<<20 + 14, true}, {3 << 20, 512, false}} {
		var err error
		if c.trim {
			err = blockdev.Trim(d, c.off, c.n)
		} else {
			err = blockdev.WriteZeroes(d, c.off, c.n, true)
		}
		if err != nil {
			t.Fatalf("zero %+v: %v", c, err)
		}
		clear(want[c.off : c.off+c.n])
		if got := snapshot(t, d); !bytes.Equal(got, want) {
			t.Fatalf("after zeroing %+v the device differs at %s", c, firstDiff(got, want))
		}
	}
}

// testRandom runs seeded random writes, zeroes and reads against a model.
func testRandom(t *testing.T, d blockdev.Device, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 1))
	model := snapshot(t, d)
	size := d.Size()
	for i := range 400 {
		n := int64(1 + r.IntN(64<<10))
		if r.IntN(3) == 0 {
			n = int64(4096 * (1 + r.IntN(16)))
		}
		off := r.Int64N(size - n + 1)
		switch r.IntN(8) {
		case 0:
			if err := blockdev.WriteZeroes(d, off, n, r.IntN(2) == 0); err != nil {
				t.Fatal(err)
			}
			clear(model[off : off+n])
		case 1:
			if err := d.Sync(); err != nil {
				t.Fatal(err)
			}
		case 2, 3:
			got := make([]byte, n)
			if _, err := d.ReadAt(got, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, model[off:off+n]) {
				t.Fatalf("op %d: read %d@%d differs from the model at +%s", i, n, off, firstDiff(got, model[off:off+n]))
			}
		default:
			p := fill(uint64(i), int(n))
			if _, err := d.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			copy(model[off:], p)
		}
	}
	if got := snapshot(t, d); !bytes.Equal(got, model) {
		t.Fatalf("device differs from the model at %s", firstDiff(got, model))
	}
}

// testConcurrent runs writers on disjoint stripes and readers everywhere,
// then checks every stripe holds its writer's last write.
func testConcurrent(t *testing.T, d blockdev.Device) {
	const workers, stripe = 8, 256 << 10
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers)
	for w := range workers {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := range 50 {
				p := bytes.Repeat([]byte{byte(w*50 + i)}, stripe)
				if _, err := d.WriteAt(p, int64(w)*stripe); err != nil {
					errs <- err
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, 64<<10)
			for i := range 100 {
				if _, err := d.ReadAt(buf, int64((w+i)%workers)*stripe); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	buf := make([]byte, stripe)
	for w := range workers {
		if _, err := d.ReadAt(buf, int64(w)*stripe); err != nil {
			t.Fatal(err)
		}
		if want := bytes.Repeat([]byte{byte(w*50 + 49)}, stripe); !bytes.Equal(buf, want) {
			t.Fatalf("stripe %d does not hold its last write (first diff %s)", w, firstDiff(buf, want))
		}
	}
}

func firstDiff(a, b []byte) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return fmt.Sprintf("byte %d (%#x != %#x)", i, a[i], b[i])
		}
	}
	return fmt.Sprintf("length %d vs %d", len(a), len(b))
}

// ReadOnlyFactory makes a read-only device of the given size and returns
// the content it must read back (point views).
type ReadOnlyFactory func(t *testing.T, size int64) (blockdev.Device, []byte)

// RunReadOnly runs the read side of the suite against read-only devices:
// size, bounds, every write refused with ErrReadOnly and changing
// nothing, random reads of any alignment, and concurrent readers.
func RunReadOnly(t *testing.T, f ReadOnlyFactory) {
	t.Run("Size", func(t *testing.T) {
		if d, _ := f(t, Size); d.Size() != Size {
			t.Fatalf("Size() = %d, want %d", d.Size(), Size)
		}
	})
	t.Run("Bounds", func(t *testing.T) {
		d, want := f(t, Size)
		buf := make([]byte, 4096)
		for _, off := range []int64{-1, -4096, Size - 4095, Size, Size + 1, 1 << 62} {
			if _, err := d.ReadAt(buf, off); !errors.Is(err, blockdev.ErrOutOfRange) {
				t.Errorf("ReadAt(4096, %d) = %v, want ErrOutOfRange", off, err)
			}
		}
		if n, err := d.ReadAt(nil, 0); n != 0 || err != nil {
			t.Errorf("ReadAt(nil, 0) = %d, %v; want 0, nil", n, err)
		}
		if _, err := d.ReadAt(buf[:1], Size-1); err != nil || buf[0] != want[Size-1] {
			t.Errorf("ReadAt(1, size-1) = %v, byte %#x want %#x", err, buf[0], want[Size-1])
		}
	})
	t.Run("WritesRefused", func(t *testing.T) {
		d, want := f(t, Size)
		buf := bytes.Repeat([]byte{0x5a}, 8192)
		for _, off := range []int64{0, 4096, 12345, Size - 8192} {
			if _, err := d.WriteAt(buf, off); !errors.Is(err, blockdev.ErrReadOnly) {
				t.Errorf("WriteAt(8192, %d) = %v, want ErrReadOnly", off, err)
			}
		}
		if err := blockdev.WriteZeroes(d, 0, 4096, false); err == nil {
			t.Error("WriteZeroes on a read-only device succeeded")
		}
		if err := d.Sync(); err != nil {
			t.Errorf("Sync() = %v", err)
		}
		if !bytes.Equal(snapshot(t, d), want) {
			t.Fatal("content changed after refused writes")
		}
	})
	t.Run("RandomReads", func(t *testing.T) {
		d, want := f(t, Size)
		if !bytes.Equal(snapshot(t, d), want) {
			t.Fatal("whole-device read differs from the expected content")
		}
		r := rand.New(rand.NewPCG(3, 3))
		buf := make([]byte, 1<<20)
		for range 400 {
			n := 1 + r.Int64N(3*4096)
			if r.IntN(8) == 0 {
				n = 1 + r.Int64N(1<<20)
			}
			off := r.Int64N(Size - n + 1)
			if _, err := d.ReadAt(buf[:n], off); err != nil {
				t.Fatalf("ReadAt(%d, %d): %v", n, off, err)
			}
			if !bytes.Equal(buf[:n], want[off:off+n]) {
				t.Fatalf("ReadAt(%d, %d) differs from the expected content", n, off)
			}
		}
	})
	t.Run("Map", func(t *testing.T) {
		d, want := f(t, Size)
		if _, ok := d.(blockdev.Mapper); !ok {
			t.Skip("not a blockdev.Mapper")
		}
		testMap(t, d, want)
	})
	t.Run("Concurrent", func(t *testing.T) {
		d, want := f(t, Size)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := range 8 {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(g), 9))
				buf := make([]byte, 64<<10)
				for range 200 {
					n := 1 + r.Int64N(64<<10)
					off := r.Int64N(Size - n + 1)
					if _, err := d.ReadAt(buf[:n], off); err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(buf[:n], want[off:off+n]) {
						errs <- fmt.Errorf("concurrent ReadAt(%d, %d) differs", n, off)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	})
}
