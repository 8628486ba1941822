package seed

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// memDisk is an image in memory that is a WriterAt and a ReaderAt.
type memDisk []byte

func (m memDisk) ReadAt(p []byte, off int64) (int, error)  { return copy(p, m[off:]), nil }
func (m memDisk) WriteAt(p []byte, off int64) (int, error) { return copy(m[off:], p), nil }

// halfWritten returns a disk of size bytes whose even chunks hold random
// data and odd ones zeros; the last chunk is partial.
func halfWritten(size, chunk int64, seed uint64) memDisk {
	img := make(memDisk, size)
	r := rand.New(rand.NewPCG(seed, 1))
	for off := int64(0); off < size; off += 2 * chunk {
		for i := off; i < min(off+chunk, size); i++ {
			img[i] = byte(r.Uint32())
		}
	}
	return img
}

func export(t *testing.T, n, parity int, disks map[string]memDisk) ([]string, *Manifest) {
	t.Helper()
	root := t.TempDir()
	var dirs []string
	for i := range n {
		dirs = append(dirs, filepath.Join(root, "drive"+string(rune('a'+i))))
	}
	var srcs []Source
	for _, name := range []string{"disk0", "disk1"} {
		if d, ok := disks[name]; ok {
			srcs = append(srcs, Source{Name: name, Dev: d, Size: int64(len(d)), LSN: 42, PointID: 7, Marker: []byte("marker")})
		}
	}
	var last int64
	m, err := Export(context.Background(), dirs, srcs, Options{VM: "vm1", Primary: "pri", ChunkSize: MinChunk, Parity: parity, Workers: 3,
		Progress: func(done, total int64) { last = done }})
	if err != nil {
		t.Fatal(err)
	}
	if last == 0 {
		t.Fatal("no progress reported")
	}
	return dirs, m
}

func restore(t *testing.T, dirs []string, disk string, size int64) (memDisk, Report, error) {
	t.Helper()
	s, err := Open(dirs)
	if err != nil {
		return nil, Report{}, err
	}
	out := make(memDisk, size)
	rep, err := s.Restore(context.Background(), disk, out, 3, nil)
	return out, rep, err
}

func TestRoundTrip(t *testing.T) {
	const chunk = MinChunk
	d0 := halfWritten(20*chunk+1000, chunk, 1)
	d1 := halfWritten(3*chunk, chunk, 2)
	dirs, m := export(t, 4, 2, map[string]memDisk{"disk0": d0, "disk1": d1})
	if m.DataShards != 2 || m.ParityShards != 2 || m.Stored(m.Disk("disk0")) != 11 {
		t.Fatalf("manifest: %d+%d shards, %d stored chunks", m.DataShards, m.ParityShards, m.Stored(m.Disk("disk0")))
	}
	// Bytes on media: half the chunks, times (data+parity)/data.
	var media int64
	for _, dir := range dirs {
		fi, _ := os.Stat(filepath.Join(dir, "disk0"+ShardExt))
		media += fi.Size()
	}
	if want := int64(11) * chunk * 2; media < want || media > want+want/50 {
		t.Fatalf("%d bytes on media for disk0, want about %d", media, want)
	}
	for name, want := range map[string]memDisk{"disk0": d0, "disk1": d1} {
		got, rep, err := restore(t, dirs, name, int64(len(want)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) || rep.Damaged() || rep.Rebuilt != 0 {
			t.Fatalf("%s: restored image differs (damaged %v, rebuilt %d)", name, rep.Damaged(), rep.Rebuilt)
		}
		if bad, err := m.Verify(context.Background(), name, got, 2); err != nil || len(bad) != 0 {
			t.Fatalf("%s: verify: %v %v", name, bad, err)
		}
	}
}

func TestRebuildLostAndDamaged(t *testing.T) {
	const chunk = MinChunk
	d0 := halfWritten(16*chunk, chunk, 3)
	dirs, _ := export(t, 4, 2, map[string]memDisk{"disk0": d0})
	// One drive gone; another with a flipped byte in a piece and its
	// manifest damaged; the directories given out of order.
	if err := os.RemoveAll(dirs[1]); err != nil {
		t.Fatal(err)
	}
	flip(t, filepath.Join(dirs[3], "disk0"+ShardExt), HeaderSize+100)
	flip(t, filepath.Join(dirs[3], ManifestName), 30)
	got, rep, err := restore(t, []string{dirs[3], dirs[2], dirs[1], dirs[0]}, "disk0", int64(len(d0)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, d0) {
		t.Fatal("restored image differs")
	}
	if rep.Rebuilt == 0 || rep.Shards[1].Path != "" || rep.Shards[3].BadPieces != 1 || rep.Shards[3].HashOK || !rep.Shards[0].HashOK {
		t.Fatalf("report: %+v", rep)
	}
}

func TestTruncatedShard(t *testing.T) {
	const chunk = MinChunk
	d0 := halfWritten(16*chunk, chunk, 4)
	dirs, _ := export(t, 3, 1, map[string]memDisk{"disk0": d0})
	p := filepath.Join(dirs[0], "disk0"+ShardExt)
	fi, _ := os.Stat(p)
	if err := os.Truncate(p, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	got, rep, err := restore(t, dirs, "disk0", int64(len(d0)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, d0) || !rep.Shards[0].Truncated || rep.Rebuilt == 0 {
		t.Fatalf("truncated shard not rebuilt: %+v", rep)
	}
}

func TestBeyondParity(t *testing.T) {
	const chunk = MinChunk
	d0 := halfWritten(16*chunk, chunk, 5)
	t.Run("missing", func(t *testing.T) {
		dirs, _ := export(t, 4, 1, map[string]memDisk{"disk0": d0})
		os.RemoveAll(dirs[0])
		os.RemoveAll(dirs[2])
		_, _, err := restore(t, dirs, "disk0", int64(len(d0)))
		if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "the parity covers 1") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("damaged", func(t *testing.T) {
		dirs, _ := export(t, 4, 1, map[string]memDisk{"disk0": d0})
		os.RemoveAll(dirs[0])
		flip(t, filepath.Join(dirs[1], "disk0"+ShardExt), HeaderSize+5)
		_, _, err := restore(t, dirs, "disk0", int64(len(d0)))
		if !errors.Is(err, ErrDamaged) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("no parity", func(t *testing.T) {
		dirs, _ := export(t, 2, 0, map[string]memDisk{"disk0": d0})
		flip(t, filepath.Join(dirs[1], "disk0"+ShardExt), HeaderSize+5)
		_, _, err := restore(t, dirs, "disk0", int64(len(d0)))
		if !errors.Is(err, ErrDamaged) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestOpenRefuses(t *testing.T) {
	const chunk = MinChunk
	d0 := halfWritten(4*chunk, chunk, 6)
	a, _ := export(t, 2, 1, map[string]memDisk{"disk0": d0})
	b, _ := export(t, 2, 1, map[string]memDisk{"disk0": d0})
	if _, err := Open([]string{a[0], b[1]}); !errors.Is(err, ErrBadArgs) || !strings.Contains(err.Error(), "different seeds") {
		t.Fatalf("mixed seeds: %v", err)
	}
	if _, err := Open([]string{a[0], a[0]}); !errors.Is(err, ErrBadArgs) || !strings.Contains(err.Error(), "same shard") {
		t.Fatalf("twice: %v", err)
	}
	if _, err := Open([]string{t.TempDir()}); !errors.Is(err, ErrNoSeed) {
		t.Fatalf("empty: %v", err)
	}
	// Export refuses a directory that holds a seed, and a parity that
	// leaves no data shard.
	if _, err := Export(context.Background(), a, []Source{{Name: "disk0", Dev: d0, Size: int64(len(d0))}}, Options{VM: "vm1", Primary: "p"}); !errors.Is(err, ErrBadArgs) {
		t.Fatalf("export over a seed: %v", err)
	}
	if _, err := Export(context.Background(), []string{t.TempDir(), t.TempDir()}, []Source{{Name: "disk0", Dev: d0, Size: int64(len(d0))}}, Options{VM: "vm1", Primary: "p", Parity: 2}); !errors.Is(err, ErrBadArgs) {
		t.Fatalf("parity 2 of 2: %v", err)
	}
}

func flip(t *testing.T, p string, off int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, off)
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func FuzzDecodeManifest(f *testing.F) {
	m := &Manifest{SeedID: strings.Repeat("ab", 16), VM: "vm1", Primary: "p", ChunkSize: MinChunk, DataShards: 2, ParityShards: 1,
		Disks: []Disk{{Name: "d", Size: 3 * MinChunk, LSN: 5, Zero: []byte{2}, Hashes: make([]byte, 32),
			Shards: make([]ShardFile, 3)}}}
	for i := range m.Disks[0].Shards {
		m.Disks[0].Shards[i] = ShardFile{Size: m.ShardSize(2), Hash: strings.Repeat("0", 32)}
	}
	b, err := m.Encode()
	if err != nil {
		f.Fatal(err)
	}
	if _, err := DecodeManifest(b); err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add(b[:len(b)-1])
	f.Add([]byte("VRSEEDMF"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeManifest(b)
		if err != nil {
			if !errors.Is(err, ErrManifest) {
				t.Fatalf("error not ErrManifest: %v", err)
			}
			return
		}
		// A manifest that decodes re-encodes to one that decodes the same.
		b2, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		m2, err := DecodeManifest(b2)
		if err != nil || m2.SeedID != m.SeedID || len(m2.Disks) != len(m.Disks) {
			t.Fatalf("round trip: %v", err)
		}
		for i := range m.Disks {
			m.Stored(&m.Disks[i])
			for c := range m.Chunks(&m.Disks[i]) {
				m.Disks[i].IsZero(c)
			}
		}
	})
}

// TestVerifyFile: the read-back of a restored image in a sparse file
// skips the zero chunks that are holes, and still finds a zero chunk
// that holds a byte, and a stored chunk that differs.
func TestVerifyFile(t *testing.T) {
	disk := halfWritten(10*MinChunk+100, MinChunk, 9)
	dirs, m := export(t, 4, 2, map[string]memDisk{"disk0": disk})
	s, err := Open(dirs)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "image"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(int64(len(disk)))
	if _, err := s.Restore(context.Background(), "disk0", f, 2, nil); err != nil {
		t.Fatal(err)
	}
	if bad, err := m.Verify(context.Background(), "disk0", f, 2); err != nil || len(bad) != 0 {
		t.Fatalf("a good image: %v %v", bad, err)
	}
	if !isHole(f, 3*MinChunk, MinChunk) || isHole(f, 2*MinChunk, MinChunk) {
		t.Fatal("the zero chunk 3 should be a hole, the stored chunk 2 data")
	}
	f.WriteAt([]byte{1}, 3*MinChunk+7) // a zero chunk
	f.WriteAt([]byte{1}, 4*MinChunk+9) // a stored chunk
	if bad, err := m.Verify(context.Background(), "disk0", f, 2); err != nil || !slices.Equal(bad, []int64{3, 4}) {
		t.Fatalf("planted in chunks 3 and 4, found %v (%v)", bad, err)
	}
}
