package store

import (
	"bytes"
	"errors"
	"github.com/vrep-io/vrep/replica/wire"
	"math/rand/v2"
	"testing"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/vfs"
)

const diskSize = 1 << 20

// stream makes n records from LSN first on: writes, trims, zeros, markers.
func stream(seed uint64, first uint64, n int) []hrl.Record {
	r := rand.New(rand.NewPCG(seed, 4))
	var out []hrl.Record
	for i := range n {
		rec := hrl.Record{LSN: first + uint64(i)}
		size := int64(1 + r.IntN(16384))
		off := r.Int64N(diskSize - size)
		switch r.IntN(10) {
		case 0:
			rec.Type, rec.Offset, rec.Span = hrl.TypeTrim, uint64(off), uint32(size)
		case 1:
			rec.Type, rec.Offset, rec.Span = hrl.TypeZero, uint64(off), uint32(size)
		case 2:
			rec.Type = hrl.TypeMarker
			rec.Payload, _ = hrl.Marker{ID: uint64(i), Kind: hrl.KindCrash}.Encode()
		default:
			rec.Type, rec.Offset = hrl.TypeWrite, uint64(off)
			rec.Payload = make([]byte, size)
			for j := range rec.Payload {
				rec.Payload[j] = byte(r.Uint32())
			}
			rec.Span = uint32(size)
		}
		out = append(out, rec)
	}
	return out
}

func model(base []byte, recs []hrl.Record) []byte {
	img := append([]byte(nil), base...)
	for _, r := range recs {
		switch r.Type {
		case hrl.TypeWrite:
			copy(img[r.Offset:], r.Payload)
		case hrl.TypeTrim, hrl.TypeZero:
			clear(img[r.Offset : r.Offset+uint64(r.Span)])
		}
	}
	return img
}

func image(t *testing.T, d *Disk) []byte {
	b := make([]byte, d.Size())
	if _, err := d.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestApplyIsIdempotentByLSN(t *testing.T) {
	fs := vfs.NewMem(1)
	d, err := OpenDisk(fs, "/r/vm1/disk0", diskSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Apply(stream(1, 11, 1)); !errors.Is(err, ErrNotSeeded) {
		t.Fatalf("records before the initial copy: %v", err)
	}
	base := bytes.Repeat([]byte{0xab}, diskSize)
	for off := 0; off < diskSize; off += 64 << 10 {
		if err := d.WriteBase(int64(off), base[off:off+64<<10]); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.FinishBase(10); err != nil {
		t.Fatal(err)
	}
	recs := stream(2, 11, 30)
	if lsn, err := d.Apply(recs[:10]); err != nil || lsn != 20 {
		t.Fatalf("Apply 11..20 = %d, %v", lsn, err)
	}
	// A resumed stream overlaps what was applied: no record applies twice.
	if lsn, err := d.Apply(recs[5:20]); err != nil || lsn != 30 {
		t.Fatalf("Apply 16..30 = %d, %v", lsn, err)
	}
	if !bytes.Equal(image(t, d), model(base, recs[:20])) {
		t.Fatal("image differs from the records applied")
	}
	// A gap is a broken chain, and nothing of it is applied.
	if lsn, err := d.Apply(recs[21:]); !errors.Is(err, wire.ErrBrokenChain) || lsn != 30 {
		t.Fatalf("a gap: %d, %v", lsn, err)
	}
	// A record past the end of the disk is refused.
	bad := []hrl.Record{{Type: hrl.TypeWrite, LSN: 31, Offset: diskSize - 10, Payload: make([]byte, 20), Span: 20}}
	if _, err := d.Apply(bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a record past the end: %v", err)
	}
	d.Close()
	d, err = OpenDisk(fs, "/r/vm1/disk0", diskSize)
	if err != nil {
		t.Fatal(err)
	}
	if lsn, seeded := d.Applied(); lsn != 30 || !seeded {
		t.Fatalf("after reopen: applied %d seeded %v", lsn, seeded)
	}
	if _, err := OpenDisk(fs, "/r/vm1/disk0", diskSize*2); err == nil {
		t.Fatal("a disk of another size was opened")
	}
}

// TestApplyPowerCut: batches applied with power cuts at random I/Os. After
// each cut the applied LSN covers every acknowledged batch, and resuming
// the stream from the start (records below the applied LSN skipped)
// converges to the primary's disk.
func TestApplyPowerCut(t *testing.T) {
	seeds := uint64(100)
	if testing.Short() {
		seeds = 30
	}
	for seed := range seeds {
		r := rand.New(rand.NewPCG(seed, 8))
		fs := vfs.NewMem(seed)
		recs := stream(seed, 1, 120)
		d, err := OpenDisk(fs, "/r/d", diskSize)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.FinishBase(0); err != nil {
			t.Fatal(err)
		}
		var acked uint64
		for cuts := 0; ; cuts++ {
			if cuts < 3 {
				fs.CutAfter(5 + r.IntN(200))
			}
			pos := int(acked)
			for pos < len(recs) {
				n := min(1+r.IntN(12), len(recs)-pos)
				lsn, err := d.Apply(recs[:pos+n]) // resends from the start: must skip
				if err != nil {
					break
				}
				if lsn != uint64(pos+n) {
					t.Fatalf("seed %d: acked %d after applying through %d", seed, lsn, pos+n)
				}
				acked, pos = lsn, pos+n
			}
			if pos == len(recs) {
				break
			}
			fs.Cut()
			d.Close()
			fs.Revive()
			if d, err = OpenDisk(fs, "/r/d", diskSize); err != nil {
				t.Fatalf("seed %d: reopen after a cut: %v", seed, err)
			}
			applied, _ := d.Applied()
			if applied < acked {
				t.Fatalf("seed %d: acknowledged %d, but only %d survived the cut", seed, acked, applied)
			}
			acked = applied
		}
		if !bytes.Equal(image(t, d), model(make([]byte, diskSize), recs)) {
			t.Fatalf("seed %d: the replica did not converge to the primary's disk", seed)
		}
		d.Close()
	}
}
