package wocheck

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vrep-io/vrep/blockdev"
)

const blocks = 256

// run writes a history to a memory device and returns it.
func run(t *testing.T, seed uint64) *History {
	dev := blockdev.NewMem(blocks * BlockSize)
	w := Workload{Disk: 1, Run: 7, Blocks: blocks, Seed: seed, FlushEvery: 10}
	return w.Write(context.Background(), dev, 400)
}

// apply builds the image of writes up to k of h, with op filtering.
func apply(h *History, k uint64, skip func(Op) bool, order func([]Op) []Op) []byte {
	img := make([]byte, blocks*BlockSize)
	var ws []Op
	for _, op := range h.Ops {
		if !op.Flush && op.Seq <= k && (skip == nil || !skip(op)) {
			ws = append(ws, op)
		}
	}
	if order != nil {
		ws = order(ws)
	}
	for _, op := range ws {
		for i := range op.Blocks {
			lba := op.LBA + uint64(i)
			Encode(img[lba*BlockSize:(lba+1)*BlockSize], Stamp{Disk: h.Disk, Run: h.Run, Seq: op.Seq, LBA: lba, Part: uint16(i), Parts: uint16(op.Blocks)})
		}
	}
	return img
}

func check(t *testing.T, h *History, img []byte) Report {
	after, err := ReadImage(bytes.NewReader(img), blocks)
	if err != nil {
		t.Fatal(err)
	}
	rep := CheckSerial(make(Image, blocks), after, h)
	// With one write in flight at a time the concurrent rule is the
	// serial one: both must agree on every image.
	if conc := CheckConcurrent(make(Image, blocks), after, h); conc.OK() != rep.OK() {
		t.Errorf("the rules disagree: serial %v, concurrent %v", rep.Violations, conc.Violations)
	}
	return rep
}

func TestEveryPrefixAfterTheFlushPasses(t *testing.T) {
	h := run(t, 1)
	full := check(t, h, apply(h, 1<<62, nil, nil))
	if !full.OK() || full.Required == 0 {
		t.Fatalf("full image: %+v", full)
	}
	for k := full.Required; k <= uint64(full.Writes); k++ {
		if rep := check(t, h, apply(h, k, nil, nil)); !rep.OK() {
			t.Fatalf("prefix %d: %v", k, rep.Violations)
		}
	}
}

// The self-test: the checker catches each planted bug.
func TestCatchesPlantedBugs(t *testing.T) {
	h := run(t, 2)
	last := uint64(0)
	for _, op := range h.Ops {
		last = max(last, op.Seq)
	}
	expectViolation := func(name string, img []byte, want string) {
		t.Helper()
		rep := check(t, h, img)
		if rep.OK() {
			t.Fatalf("%s: not caught", name)
		}
		if !strings.Contains(strings.Join(rep.Violations, "\n"), want) {
			t.Fatalf("%s: caught as %v, want %q", name, rep.Violations, want)
		}
	}
	// A dropped record: a write whose blocks no later write covers.
	later := map[uint64]uint64{}
	for _, op := range h.Ops {
		for i := range op.Blocks {
			later[op.LBA+uint64(i)] = op.Seq
		}
	}
	var lone uint64
	for _, op := range h.Ops {
		if !op.Flush && op.Seq < last-5 && later[op.LBA] == op.Seq && op.Blocks == 1 {
			lone = op.Seq
		}
	}
	expectViolation("dropped record", apply(h, last, func(op Op) bool { return op.Seq == lone }, nil), "dropped")
	// Two applies swapped: find two writes to one block.
	var a, b uint64
	seen := map[uint64]uint64{}
	for _, op := range h.Ops {
		if op.Flush {
			continue
		}
		if s, ok := seen[op.LBA]; ok && later[op.LBA] == op.Seq {
			a, b = s, op.Seq
		}
		seen[op.LBA] = op.Seq
	}
	expectViolation("swapped applies", apply(h, last, nil, func(ws []Op) []Op {
		var ia, ib int
		for i, op := range ws {
			if op.Seq == a {
				ia = i
			}
			if op.Seq == b {
				ib = i
			}
		}
		ws[ia], ws[ib] = ws[ib], ws[ia]
		return ws
	}), "stale")
	// An ack before fsync: the image lacks flushed writes.
	full := check(t, h, apply(h, last, nil, nil))
	expectViolation("lost flush", apply(h, full.Required-1, nil, nil), "acknowledged write lost")
	// A torn write: one sector from another write.
	img := apply(h, last, nil, nil)
	lba := h.Ops[len(h.Ops)-1].LBA
	other := make([]byte, BlockSize)
	Encode(other, Stamp{Disk: 1, Run: 7, Seq: 1, LBA: lba})
	copy(img[lba*BlockSize+1024:lba*BlockSize+1536], other[1024:1536])
	expectViolation("torn write", img, "torn")
	// A misdirected write: a block's content lands one block further.
	img = apply(h, last, nil, nil)
	var src uint64
	for l := uint64(0); l+1 < blocks; l++ {
		if later[l] != 0 && later[l+1] == 0 {
			src = l
			break
		}
	}
	copy(img[(src+1)*BlockSize:(src+2)*BlockSize], img[src*BlockSize:(src+1)*BlockSize])
	expectViolation("misdirected write", img, "misdirected")
	// A flipped bit in a block.
	img = apply(h, last, nil, nil)
	img[lba*BlockSize+2000] ^= 1
	expectViolation("corrupt block", img, "corrupt")
}

func FuzzDecode(f *testing.F) {
	b := make([]byte, BlockSize)
	Encode(b, Stamp{Disk: 1, Run: 2, Seq: 3, LBA: 4, Parts: 1})
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		st, state := Decode(b)
		if state == Valid {
			again := make([]byte, BlockSize)
			Encode(again, st)
			if !bytes.Equal(again, b) {
				t.Fatal("a block decoded as valid does not re-encode to itself")
			}
		}
	})
}

// TestCheckPoint: a point at time T must hold every write acknowledged
// before T and none submitted after it.
func TestCheckPoint(t *testing.T) {
	h := run(t, 3)
	var mid Op
	for _, op := range h.Ops {
		if !op.Flush && op.Seq == 200 {
			mid = op
		}
	}
	at := mid.Ack.Add(time.Nanosecond) // write 200 acknowledged, 201 not yet submitted
	for _, op := range h.Ops {
		if op.Seq == 201 {
			at = mid.Ack.Add(op.Submit.Sub(mid.Ack) / 2)
		}
	}
	pt := func(k uint64) Report {
		after, err := ReadImage(bytes.NewReader(apply(h, k, nil, nil)), blocks)
		if err != nil {
			t.Fatal(err)
		}
		return CheckPoint(make(Image, blocks), after, h, at)
	}
	if rep := pt(200); !rep.OK() {
		t.Fatalf("the exact point: %v", rep.Violations)
	}
	if rep := pt(199); rep.OK() || !strings.Contains(strings.Join(rep.Violations, "\n"), "acknowledged write lost") {
		t.Fatalf("a point missing a write acknowledged before it: %v", rep.Violations)
	}
	if rep := pt(230); rep.OK() || !strings.Contains(strings.Join(rep.Violations, "\n"), "submitted after the point") {
		t.Fatalf("a point holding later writes: %v", rep.Violations)
	}
}
