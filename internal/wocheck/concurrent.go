package wocheck

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// WriteConcurrent writes like Write, but keeps Depth operations in flight
// (queue depth), spread over the devices devs (one NBD connection each,
// say): operation i goes to devs[i%len(devs)]'s worker pool. The
// operations drawn (which are flushes, which LBAs and sizes) depend only
// on the seed; their interleaving depends on the device. Seq and submit
// time are taken together, so seq order is submit order. It stops issuing
// at the first failed operation, once ctx ends or n operations are
// issued, then waits for those in flight; with FinalFlush it then flushes
// once, so that every acknowledged write must be in the image.
func (w *Workload) WriteConcurrent(ctx context.Context, devs []Device, n int) *History {
	depth := max(w.Depth, 1)
	h := &History{Disk: w.Disk, Run: w.Run, Depth: depth, Conns: len(devs)}
	r := rand.New(rand.NewPCG(w.Seed, uint64(w.Run)))
	maxBlocks := max(w.MaxBlocks, 1)
	if w.MaxBlocks == 0 {
		maxBlocks = 4
	}
	var (
		mu     sync.Mutex
		issued int
		seq    uint64
		failed bool
		wg     sync.WaitGroup
	)
	// next draws the next operation and logs its submit; -1: stop.
	next := func() (int, Op) {
		mu.Lock()
		defer mu.Unlock()
		if failed || issued >= n || ctx.Err() != nil {
			return -1, Op{}
		}
		issued++
		var op Op
		if w.FlushEvery > 0 && r.IntN(w.FlushEvery) == 0 {
			op.Flush = true
		} else {
			seq++
			op.Seq = seq
			op.Blocks = 1 + r.IntN(maxBlocks)
			op.LBA = uint64(r.Int64N(w.Blocks - int64(op.Blocks) + 1))
		}
		op.Submit = time.Now()
		op.Result = Unknown
		h.Ops = append(h.Ops, op)
		return len(h.Ops) - 1, op
	}
	done := func(i int, err error) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failed = true
			return
		}
		h.Ops[i].Ack = now
		h.Ops[i].Result = OK
	}
	for k := range depth {
		dev := devs[k%len(devs)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, maxBlocks*BlockSize)
			for {
				i, op := next()
				if i < 0 {
					return
				}
				var err error
				if op.Flush {
					err = dev.Sync()
				} else {
					for b := range op.Blocks {
						Encode(buf[b*BlockSize:(b+1)*BlockSize], Stamp{Disk: w.Disk, Run: w.Run, Seq: op.Seq,
							LBA: op.LBA + uint64(b), Part: uint16(b), Parts: uint16(op.Blocks)})
					}
					_, err = dev.WriteAt(buf[:op.Blocks*BlockSize], int64(op.LBA)*BlockSize)
				}
				done(i, err)
			}
		}()
	}
	wg.Wait()
	if w.FinalFlush && !failed && len(devs) > 0 {
		h.Ops = append(h.Ops, Op{Flush: true, Submit: time.Now(), Result: Unknown})
		if err := devs[0].Sync(); err == nil {
			h.Ops[len(h.Ops)-1].Ack = time.Now()
			h.Ops[len(h.Ops)-1].Result = OK
		}
	}
	return h
}

// Check checks an image left by h over before after a crash (or a clean
// stop): with the serial rule (CheckSerial) when h kept one write in
// flight, else with the concurrent rule (CheckConcurrent).
func Check(before, after Image, h *History) Report {
	if h.Depth > 1 {
		return CheckConcurrent(before, after, h)
	}
	return CheckSerial(before, after, h)
}

// CheckAt checks a point taken at time at during h, with the rule that
// fits h (CheckPoint or CheckConcurrentPoint).
func CheckAt(before, after Image, h *History, at time.Time) Report {
	if h.Depth > 1 {
		return CheckConcurrentPoint(before, after, h, at)
	}
	return CheckPoint(before, after, h, at)
}

// CheckConcurrent checks an image left by h over before after a crash
// with the concurrent rule (see above): durable are the writes
// acknowledged before the last completed flush was submitted.
func CheckConcurrent(before, after Image, h *History) Report {
	var lastFlush time.Time
	for _, op := range h.Ops {
		if op.Flush && op.Result == OK && op.Submit.After(lastFlush) {
			lastFlush = op.Submit
		}
	}
	return checkConcurrent(before, after, h, lastFlush, time.Time{})
}

// CheckConcurrentPoint checks a point asked for at time at during h with
// the concurrent rule: every write acknowledged before at is durable, and
// no block may hold a write submitted after at.
func CheckConcurrentPoint(before, after Image, h *History, at time.Time) Report {
	return checkConcurrent(before, after, h, at, at)
}

// checkConcurrent applies the concurrent rule: writes acknowledged
// before durableBefore are durable; with a non-zero limit, no write
// submitted after it may be present.
func checkConcurrent(before, after Image, h *History, durableBefore, limit time.Time) Report {
	var rep Report
	writes := map[uint64]*Op{}
	for i := range h.Ops {
		op := &h.Ops[i]
		if op.Flush {
			continue
		}
		writes[op.Seq] = op
		rep.Writes++
	}
	acked := func(op *Op) bool { return op.Result == OK && !op.Ack.IsZero() }
	// Pass 1: what each block holds (0: its content before the run;
	// holder < 0: a block already reported), and the present writes.
	holder := make([]int64, len(after))
	present := map[uint64]bool{}
	var k *Op
	for lba, d := range after {
		st := d.Stamp
		switch {
		case d.State == Valid && st.Disk == h.Disk && st.Run == h.Run:
			op, ok := writes[st.Seq]
			switch {
			case st.LBA != uint64(lba):
				rep.add("block %d holds block %d of write %d: misdirected", lba, st.LBA, st.Seq)
			case !ok:
				rep.add("block %d holds write %d, which the workload never issued", lba, st.Seq)
			case uint64(lba) < op.LBA || uint64(lba) >= op.LBA+uint64(op.Blocks):
				rep.add("block %d holds write %d, which did not cover it: misdirected", lba, st.Seq)
			default:
				holder[lba] = int64(st.Seq)
				present[st.Seq] = true
				if k == nil || op.Submit.After(k.Submit) {
					k = op
				}
				continue
			}
			holder[lba] = -1
		case lba < len(before) && d == before[lba]:
			holder[lba] = 0
		case d.State == Torn || d.State == Corrupt || d.State == Foreign:
			rep.add("block %d is %s", lba, d.State)
			holder[lba] = -1
		default:
			rep.add("block %d changed though no write of the run could have written it", lba)
			holder[lba] = -1
		}
	}
	if k != nil {
		rep.Highest = k.Seq
		if !limit.IsZero() && k.Submit.After(limit) {
			rep.add("the image holds write %d, submitted after the point was taken", k.Seq)
		}
	}
	// Pass 2: the required writes, and per block the latest submit of a
	// required write over it (any write acknowledged before that is
	// superseded there).
	type req struct {
		sub time.Time
		seq uint64
	}
	need := make([]req, len(after))
	needDurable := make([]req, len(after)) // the same, of durable writes only
	durable := map[uint64]bool{}
	for s, op := range writes {
		isDurable := acked(op) && op.Ack.Before(durableBefore)
		required := isDurable || present[s] || k != nil && acked(op) && op.Ack.Before(k.Submit)
		if !required {
			continue
		}
		if isDurable {
			durable[s] = true
			rep.Required = max(rep.Required, s)
		}
		for b := range uint64(op.Blocks) {
			lba := op.LBA + b
			if lba >= uint64(len(need)) {
				break
			}
			if op.Submit.After(need[lba].sub) {
				need[lba] = req{op.Submit, s}
			}
			if isDurable && op.Submit.After(needDurable[lba].sub) {
				needDurable[lba] = req{op.Submit, s}
			}
		}
	}
	// Pass 3: every block against the writes required over it. A durable
	// write missing from any of its blocks counts as lost.
	lost := map[uint64]bool{}
	for lba := range after {
		n := need[lba]
		if holder[lba] < 0 || n.seq == 0 {
			continue
		}
		what := "required: in the image elsewhere, or acknowledged before the newest write in it was submitted"
		if durable[n.seq] {
			what = "durable: acknowledged before a completed flush, or before the point"
		}
		d := needDurable[lba]
		if holder[lba] == 0 {
			if d.seq != 0 {
				lost[d.seq] = true
			}
			if durable[n.seq] {
				rep.add("acknowledged write lost: block %d lacks write %d (%s): it still holds its old content", lba, n.seq, what)
			} else {
				rep.add("block %d lacks write %d (%s): dropped", lba, n.seq, what)
			}
			continue
		}
		x := writes[uint64(holder[lba])]
		if acked(x) && x.Ack.Before(n.sub) {
			if d.seq != 0 && x.Ack.Before(d.sub) {
				lost[d.seq] = true
			}
			if durable[n.seq] && !present[n.seq] {
				rep.add("acknowledged write lost: block %d lacks write %d (%s), found nowhere in the image: it holds write %d, acknowledged before write %d was submitted",
					lba, n.seq, what, x.Seq, n.seq)
				continue
			}
			rep.add("block %d holds write %d, but write %d (%s) was submitted after write %d was acknowledged: stale, a write was dropped or reordered",
				lba, x.Seq, n.seq, what, x.Seq)
		}
	}
	rep.Lost = len(lost)
	rep.Present = len(present)
	return rep
}

// String summarizes a report in one line.
func (r Report) String() string {
	return fmt.Sprintf("%d writes, %d present, newest present %d, newest durable %d, %d durable lost, %d violations",
		r.Writes, r.Present, r.Highest, r.Required, r.Lost, len(r.Violations))
}
