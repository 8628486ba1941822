package wocheck

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"sort"
	"time"
)

// Result is what the workload learned of an operation.
type Result int

// Results.
const (
	OK      Result = iota
	Unknown        // the call failed or never returned: it may or may not have landed
)

// Op is one logged operation.
type Op struct {
	Flush  bool
	Seq    uint64 // writes: unique, increasing in submit order
	LBA    uint64
	Blocks int
	Submit time.Time
	Ack    time.Time // zero if never acknowledged
	Result Result
}

// History is what one workload run did, in submit order.
type History struct {
	Disk, Run uint32
	Depth     int // operations kept in flight: above 1, the concurrent rule applies
	Conns     int // devices (connections) the operations were spread over
	Ops       []Op
}

// Device is what the workload writes to.
type Device interface {
	io.WriterAt
	Sync() error
}

// Workload writes stamped blocks at random, one at a time (queue depth 1:
// submit order is the order the device saw), flushing now and then.
type Workload struct {
	Disk, Run  uint32
	Blocks     int64  // disk size in blocks
	Seed       uint64 // for the LBAs and sizes
	FlushEvery int    // a flush after about this many writes (0: never)
	MaxBlocks  int    // blocks per write, 1 to this (default 4)
	Depth      int    // operations in flight (WriteConcurrent; default 1)
	FinalFlush bool   // WriteConcurrent: flush once after the last write
}

// Write writes until ctx ends, n operations are done, or the device fails.
func (w *Workload) Write(ctx context.Context, dev Device, n int) *History {
	h := &History{Disk: w.Disk, Run: w.Run}
	r := rand.New(rand.NewPCG(w.Seed, uint64(w.Run)))
	maxBlocks := max(w.MaxBlocks, 1)
	if w.MaxBlocks == 0 {
		maxBlocks = 4
	}
	buf := make([]byte, maxBlocks*BlockSize)
	var seq uint64
	for range n {
		if ctx.Err() != nil {
			break
		}
		op := Op{Submit: time.Now()}
		var err error
		if w.FlushEvery > 0 && r.IntN(w.FlushEvery) == 0 {
			op.Flush = true
			err = dev.Sync()
		} else {
			seq++
			op.Seq = seq
			op.Blocks = 1 + r.IntN(maxBlocks)
			op.LBA = uint64(r.Int64N(w.Blocks - int64(op.Blocks) + 1))
			for k := range op.Blocks {
				Encode(buf[k*BlockSize:(k+1)*BlockSize], Stamp{Disk: w.Disk, Run: w.Run, Seq: seq,
					LBA: op.LBA + uint64(k), Part: uint16(k), Parts: uint16(op.Blocks)})
			}
			_, err = dev.WriteAt(buf[:op.Blocks*BlockSize], int64(op.LBA)*BlockSize)
		}
		if err != nil {
			op.Result = Unknown
			h.Ops = append(h.Ops, op)
			break
		}
		op.Ack = time.Now()
		h.Ops = append(h.Ops, op)
	}
	return h
}

// Image is a decoded disk image.
type Image []Decoded

// Decoded is one decoded block.
type Decoded struct {
	Stamp Stamp
	State State
}

// ReadImage decodes every block of a disk.
func ReadImage(r io.ReaderAt, blocks int64) (Image, error) {
	img := make(Image, blocks)
	buf := make([]byte, 256*BlockSize)
	for b := int64(0); b < blocks; b += 256 {
		n := min(256, blocks-b)
		if _, err := r.ReadAt(buf[:n*BlockSize], b*BlockSize); err != nil {
			return nil, fmt.Errorf("wocheck: reading block %d: %w", b, err)
		}
		for i := range n {
			st, state := Decode(buf[i*BlockSize : (i+1)*BlockSize])
			img[b+i] = Decoded{st, state}
		}
	}
	return img, nil
}

// Report is the checker's verdict.
type Report struct {
	Highest    uint64   // K: the newest write of the run found in the image
	Required   uint64   // the newest write a completed flush made durable
	Writes     int      // writes in the history
	Present    int      // writes found in the image (concurrent rule)
	Lost       int      // durable writes missing from the image (concurrent rule)
	Violations []string // empty: the image is a valid prefix
}

// OK reports whether no violation was found.
func (r Report) OK() bool { return len(r.Violations) == 0 }

func (r *Report) add(format string, args ...any) {
	if len(r.Violations) < 50 {
		r.Violations = append(r.Violations, fmt.Sprintf(format, args...))
	}
}

// CheckSerial checks an image left by a queue-depth-1 history h applied
// over the image before it: the image must be before plus exactly the
// writes of h up to some K (the newest one found), and K must include
// every write acknowledged before the last completed flush was submitted.
func CheckSerial(before, after Image, h *History) Report {
	var lastFlush time.Time
	for _, op := range h.Ops {
		if op.Flush && op.Result == OK {
			lastFlush = op.Submit
		}
	}
	var required uint64
	for _, op := range h.Ops {
		if !op.Flush && op.Result == OK && !op.Ack.After(lastFlush) {
			required = max(required, op.Seq)
		}
	}
	return checkPrefix(before, after, h, required, math.MaxUint64)
}

// CheckPoint checks a recovery point taken at time at during a
// queue-depth-1 history h over before: the point must be before plus
// exactly the writes of h up to some K, where K includes every write
// acknowledged before at (it was logged before the barrier) and no write
// submitted after at (it waited for the barrier, or came later).
func CheckPoint(before, after Image, h *History, at time.Time) Report {
	var required, limit uint64
	for _, op := range h.Ops {
		if op.Flush {
			continue
		}
		if op.Result == OK && op.Ack.Before(at) {
			required = max(required, op.Seq)
		}
		if !op.Submit.After(at) {
			limit = max(limit, op.Seq)
		}
	}
	return checkPrefix(before, after, h, required, limit)
}

// checkPrefix checks that after is before plus the writes of h up to
// some K with required <= K <= limit.
func checkPrefix(before, after Image, h *History, required, limit uint64) Report {
	rep := Report{Required: required}
	writes := map[uint64]Op{}
	for _, op := range h.Ops {
		if !op.Flush {
			writes[op.Seq] = op
			rep.Writes++
		}
	}
	// K, and blocks that are not what any write of this run could leave.
	for lba, d := range after {
		switch d.State {
		case Torn, Corrupt, Foreign:
			if before[lba] != d {
				rep.add("block %d is %s", lba, d.State)
			}
			continue
		case Empty:
			continue
		}
		if d.Stamp.Disk != h.Disk || d.Stamp.Run != h.Run {
			continue // older content, judged below against the expected block
		}
		if d.Stamp.LBA != uint64(lba) {
			rep.add("block %d holds block %d of write %d: misdirected", lba, d.Stamp.LBA, d.Stamp.Seq)
			continue
		}
		op, ok := writes[d.Stamp.Seq]
		if !ok {
			rep.add("block %d holds write %d, which the workload never issued", lba, d.Stamp.Seq)
			continue
		}
		if uint64(lba) < op.LBA || uint64(lba) >= op.LBA+uint64(op.Blocks) {
			rep.add("block %d holds write %d, which did not cover it: misdirected", lba, d.Stamp.Seq)
			continue
		}
		rep.Highest = max(rep.Highest, d.Stamp.Seq)
	}
	if rep.Highest < rep.Required {
		rep.add("acknowledged write lost: write %d must be in the image (acknowledged before a completed flush, or before the point), but it holds writes only up to %d", rep.Required, rep.Highest)
	}
	if rep.Highest > limit {
		rep.add("the image holds write %d, submitted after the point was taken (the newest it may hold is %d)", rep.Highest, limit)
	}
	// The expected image: before, plus writes up to K in order.
	expect := make([]Decoded, len(after))
	copy(expect, before)
	seqs := make([]uint64, 0, len(writes))
	for s := range writes {
		if s <= rep.Highest {
			seqs = append(seqs, s)
		}
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	for _, s := range seqs {
		op := writes[s]
		for k := range op.Blocks {
			expect[op.LBA+uint64(k)] = Decoded{Stamp{Disk: h.Disk, Run: h.Run, Seq: s, LBA: op.LBA + uint64(k),
				Part: uint16(k), Parts: uint16(op.Blocks)}, Valid}
		}
	}
	for lba := range after {
		got, want := after[lba], expect[lba]
		if got == want || got.State != Valid && got.State != Empty {
			continue // equal, or already reported
		}
		switch {
		case got.State == Valid && got.Stamp.Run == h.Run && want.Stamp.Run == h.Run && got.Stamp.Seq < want.Stamp.Seq:
			rep.add("block %d holds write %d, but write %d (<= %d, in the image) came later: stale, a write was dropped or reordered", lba, got.Stamp.Seq, want.Stamp.Seq, rep.Highest)
		case want.Stamp.Run == h.Run && want.State == Valid:
			rep.add("block %d lacks write %d (<= %d, in the image): dropped", lba, want.Stamp.Seq, rep.Highest)
		default:
			rep.add("block %d changed though no write up to %d touched it", lba, rep.Highest)
		}
	}
	return rep
}
