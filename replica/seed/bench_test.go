package seed

import (
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/vfs"
)

// benchImage writes a random image of size bytes to a file in dir.
func benchImage(b *testing.B, dir string, size int64) *os.File {
	b.Helper()
	f, err := os.Create(filepath.Join(dir, "image"))
	if err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		for i := 0; i < len(buf); i += 8 {
			v := r.Uint64()
			for j := range 8 {
				buf[i+j] = byte(v >> (8 * j))
			}
		}
		f.Write(buf)
	}
	f.Sync()
	return f
}

// BenchmarkSeed exports and imports a random image of SEED_BENCH_MIB
// (default 256) MiB over 4 directories with parity 2 on one file
// system, files to files with their fsyncs, beside a copy of the image
// with an fsync (what bench/seed.sh compares with cp). In process, for
// profiles: go test -run - -bench Seed -benchtime 1x -cpuprofile cpu.out.
func BenchmarkSeed(b *testing.B) {
	size := int64(256)
	if s := os.Getenv("SEED_BENCH_MIB"); s != "" {
		n, _ := strconv.Atoi(s)
		size = int64(n)
	}
	size <<= 20
	dir := b.TempDir()
	img := benchImage(b, dir, size)
	defer img.Close()
	var dirs []string
	for i := range 4 {
		dirs = append(dirs, filepath.Join(dir, "d"+strconv.Itoa(i)))
	}
	b.Run("copy", func(b *testing.B) {
		b.SetBytes(size)
		for range b.N {
			out, err := os.Create(filepath.Join(dir, "copy"))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(out, io.NewSectionReader(img, 0, size)); err != nil {
				b.Fatal(err)
			}
			out.Sync()
			out.Close()
			os.Remove(out.Name())
		}
	})
	b.Run("export", func(b *testing.B) {
		b.SetBytes(size)
		for range b.N {
			for _, d := range dirs {
				os.RemoveAll(d)
			}
			_, err := Export(context.Background(), dirs, []Source{{Name: "disk0", Dev: img, Size: size, LSN: 1}},
				Options{VM: "vm1", Primary: "p1", Parity: 2})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("import", func(b *testing.B) {
		b.SetBytes(size)
		for range b.N {
			s, err := Open(dirs)
			if err != nil {
				b.Fatal(err)
			}
			out, err := os.Create(filepath.Join(dir, "restored"))
			if err != nil {
				b.Fatal(err)
			}
			out.Truncate(size)
			t0 := time.Now()
			if _, err := s.Restore(context.Background(), "disk0", wbFile{out}, 0, nil); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			out.Sync()
			t2 := time.Now()
			if bad, err := s.M.Verify(context.Background(), "disk0", out, 0); err != nil || len(bad) > 0 {
				b.Fatal(err, bad)
			}
			b.Logf("restore %v, sync %v, verify %v", t1.Sub(t0), t2.Sub(t1), time.Since(t2))
			out.Close()
			os.Remove(out.Name())
		}
	})
}

// wbFile is a file that can start its writeback, as the replica's staged
// image can.
type wbFile struct{ *os.File }

func (f wbFile) StartWriteback(off, n int64) { vfs.StartWriteback(f.File, off, n) }
