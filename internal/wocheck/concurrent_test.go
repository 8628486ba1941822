package wocheck

import (
	"strings"
	"testing"
	"time"
)

// Hand-made logs for the concurrent rule. Times are milliseconds from t0;
// an ack of -1 is a write that never returned (Result Unknown).

var t0 = time.Unix(1_000_000, 0)

func ms(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }

func wr(seq, lba, blocks, sub, ack int) Op {
	op := Op{Seq: uint64(seq), LBA: uint64(lba), Blocks: blocks, Submit: ms(sub), Result: Unknown}
	if ack >= 0 {
		op.Ack, op.Result = ms(ack), OK
	}
	return op
}

func fl(sub, ack int) Op { return Op{Flush: true, Submit: ms(sub), Ack: ms(ack), Result: OK} }

const hmBlocks = 8

// image lays out blocks: a seq (a write of h, stamped for that block), 0
// (before's content), or one of the special markers below.
const (
	torn     = -1
	unknown  = -2 // a stamp with a seq the history lacks
	misdir   = -3 // a stamp of write 1 for the next block
	oldOther = -4 // a stamp of an older run that before did not hold
)

func image(h *History, before Image, layout map[int]int) Image {
	img := append(Image(nil), before...)
	ops := map[int]Op{}
	for _, op := range h.Ops {
		ops[int(op.Seq)] = op
	}
	for lba, v := range layout {
		st := Stamp{Disk: h.Disk, Run: h.Run, LBA: uint64(lba)}
		switch v {
		case torn:
			img[lba] = Decoded{st, Torn}
			continue
		case unknown:
			st.Seq = 99
		case misdir:
			st.Seq, st.LBA = 1, uint64(lba+1)
		case oldOther:
			st.Run, st.Seq = h.Run-1, 5
		default:
			op := ops[v]
			st.Seq, st.Part, st.Parts = uint64(v), uint16(uint64(lba)-op.LBA), uint16(op.Blocks)
		}
		img[lba] = Decoded{st, Valid}
	}
	return img
}

func TestConcurrentRule(t *testing.T) {
	hist := func(ops ...Op) *History { return &History{Disk: 1, Run: 7, Depth: 32, Ops: ops} }
	// Two overlapping writes in flight together, a flush after both, a
	// later write, and one still in flight at the crash.
	overlap := hist(wr(1, 0, 1, 0, 10), wr(2, 0, 2, 5, 15), fl(16, 18), wr(3, 2, 1, 20, 30), wr(4, 1, 1, 25, -1))
	// No flush: a acknowledged, b and d in flight at the crash, c after a.
	noFlush := hist(wr(1, 0, 1, 0, 10), wr(2, 1, 1, 5, -1), wr(3, 2, 1, 12, 20), wr(4, 3, 1, 15, -1))
	// Ordered overlapping two-block writes: 1 ≺ 2, over block 1.
	ordered := hist(wr(1, 0, 2, 0, 10), wr(2, 1, 2, 20, 30))
	// The same, but in flight together.
	together := hist(wr(1, 0, 2, 0, 10), wr(2, 1, 2, 5, 30))
	// For points.
	points := hist(wr(1, 0, 1, 0, 10), wr(2, 1, 1, 20, 30), wr(3, 2, 1, 40, 50))

	old := make(Image, hmBlocks)
	old[5] = Decoded{Stamp{Disk: 1, Run: 6, Seq: 3, LBA: 5, Parts: 1}, Valid}

	cases := []struct {
		name   string
		h      *History
		before Image
		layout map[int]int
		at     int    // >0: a point taken at this time
		want   string // "": legal; else a violation containing this
	}{
		{"later of two concurrent writes won", overlap, nil, map[int]int{0: 2, 1: 2}, 0, ""},
		{"earlier of two concurrent writes won", overlap, nil, map[int]int{0: 1, 1: 2}, 0, ""},
		{"all acknowledged writes in", overlap, nil, map[int]int{0: 2, 1: 2, 2: 3}, 0, ""},
		{"write in flight at the crash landed", overlap, nil, map[int]int{0: 2, 1: 4, 2: 3}, 0, ""},
		{"flushed writes lost", overlap, nil, map[int]int{}, 0, "acknowledged write lost"},
		{"one flushed write lost", overlap, nil, map[int]int{0: 1}, 0, "acknowledged write lost"},
		{"flushed write overwritten by an older one", hist(wr(1, 0, 1, 0, 10), wr(2, 0, 1, 11, 12), fl(13, 14)), nil, map[int]int{0: 1}, 0, "acknowledged write lost"},

		{"nothing landed", noFlush, nil, map[int]int{}, 0, ""},
		{"a prefix", noFlush, nil, map[int]int{0: 1}, 0, ""},
		{"in-flight write without the acknowledged one before it", noFlush, nil, map[int]int{1: 2}, 0, ""},
		{"all", noFlush, nil, map[int]int{0: 1, 1: 2, 2: 3, 3: 4}, 0, ""},
		{"K present, a write acknowledged before K's submit missing", noFlush, nil, map[int]int{2: 3}, 0, "dropped"},
		{"in-flight K present, acknowledged write missing", noFlush, nil, map[int]int{1: 2, 3: 4}, 0, "dropped"},

		{"ordered overwrite", ordered, nil, map[int]int{0: 1, 1: 2, 2: 2}, 0, ""},
		{"ordered overwrite reversed", ordered, nil, map[int]int{0: 1, 1: 1, 2: 2}, 0, "stale"},
		{"partial multi-block write", ordered, nil, map[int]int{0: 1, 1: 2}, 0, "dropped"},
		{"concurrent overwrite either way (a)", together, nil, map[int]int{0: 1, 1: 1, 2: 2}, 0, ""},
		{"concurrent overwrite either way (b)", together, nil, map[int]int{0: 1, 1: 2, 2: 2}, 0, ""},

		{"unknown seq", noFlush, nil, map[int]int{0: 1, 4: unknown}, 0, "never issued"},
		{"torn sector", noFlush, nil, map[int]int{0: 1, 4: torn}, 0, "torn"},
		{"misdirected lba", noFlush, nil, map[int]int{0: 1, 4: misdir}, 0, "misdirected"},
		{"write on a block it did not cover", noFlush, nil, map[int]int{0: 1, 5: 1}, 0, "misdirected"},
		{"old content kept", noFlush, old, map[int]int{0: 1}, 0, ""},
		{"old content replaced by no write", noFlush, old, map[int]int{0: 1, 5: oldOther}, 0, "changed though no write"},

		{"point: exactly what was acknowledged", points, nil, map[int]int{0: 1, 1: 2}, 35, ""},
		{"point: a write acknowledged before it missing", points, nil, map[int]int{0: 1}, 35, "acknowledged write lost"},
		{"point: a write in flight at it, out", points, nil, map[int]int{0: 1}, 25, ""},
		{"point: a write in flight at it, in", points, nil, map[int]int{0: 1, 1: 2}, 25, ""},
		{"point: a write submitted after it", points, nil, map[int]int{0: 1, 1: 2, 2: 3}, 25, "submitted after the point"},
	}
	for _, c := range cases {
		before := c.before
		if before == nil {
			before = make(Image, hmBlocks)
		}
		after := image(c.h, before, c.layout)
		var rep Report
		if c.at > 0 {
			rep = CheckAt(before, after, c.h, ms(c.at))
		} else {
			rep = Check(before, after, c.h)
		}
		got := strings.Join(rep.Violations, "\n")
		switch {
		case c.want == "" && !rep.OK():
			t.Errorf("%s: legal image refused:\n%s", c.name, got)
		case c.want != "" && rep.OK():
			t.Errorf("%s: illegal image passed (%v)", c.name, rep)
		case c.want != "" && !strings.Contains(got, c.want):
			t.Errorf("%s: caught as %q, want %q", c.name, got, c.want)
		}
	}
}

// TestConcurrentLostCount: the report counts durable writes missing.
func TestConcurrentLostCount(t *testing.T) {
	h := &History{Disk: 1, Run: 7, Depth: 2, Ops: []Op{wr(1, 0, 1, 0, 10), wr(2, 3, 2, 1, 11), wr(3, 6, 1, 2, 12), fl(13, 14)}}
	before := make(Image, hmBlocks)
	rep := Check(before, image(h, before, map[int]int{0: 1, 3: 2}), h)
	if rep.Lost != 2 || rep.Present != 2 || rep.Required != 3 {
		t.Fatalf("lost %d present %d required %d, want 2 2 3: %v", rep.Lost, rep.Present, rep.Required, rep.Violations)
	}
}
