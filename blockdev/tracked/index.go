package tracked

import (
	"slices"

	"github.com/vrep-io/vrep/hrl"
)

// bucketShift sets the index granularity: extents are kept per 1 MiB of
// disk, each bucket a small slice sorted by offset. A balanced tree over
// the whole disk cost four times as much per insert at a million extents.
const bucketShift = 20

// extent maps disk bytes [off, off+n) to their newest unmerged content:
// file offset foff of segment seg, or zeros when seg is nil.
type extent struct {
	off  int64
	foff int64
	seg  *hrl.Segment
	lsn  uint64
	n    int32
}

func (e *extent) end() int64 { return e.off + int64(e.n) }

// index is the extent map of unmerged records. Not safe for concurrent
// use: the volume's lock guards it.
type index struct {
	buckets map[int64][]extent
	extents int
	bytes   int64 // payload bytes inserted (a merge backlog measure)
}

func newIndex() *index { return &index{buckets: map[int64][]extent{}} }

// insert records that [off, off+n) now holds the bytes at foff in seg (or
// zeros if seg is nil), written at lsn. Newer inserts always carry higher
// LSNs: the volume inserts under the lock that assigns them.
func (x *index) insert(off, n int64, seg *hrl.Segment, foff int64, lsn uint64) {
	x.bytes += n
	for n > 0 {
		b := off >> bucketShift
		c := min(n, (b+1)<<bucketShift-off)
		e := extent{off: off, n: int32(c), seg: seg, foff: foff, lsn: lsn}
		x.buckets[b] = x.insertBucket(x.buckets[b], e)
		off += c
		n -= c
		if seg != nil {
			foff += c
		}
	}
}

func (x *index) insertBucket(s []extent, e extent) []extent {
	// First extent ending after e.off.
	i, _ := slices.BinarySearchFunc(s, e.off, func(a extent, off int64) int {
		if a.end() <= off {
			return -1
		}
		return 1
	})
	j := i
	var left, right *extent
	for j < len(s) && s[j].off < e.end() {
		if s[j].off < e.off {
			l := s[j]
			l.n = int32(e.off - l.off)
			left = &l
		}
		if s[j].end() > e.end() {
			r := s[j]
			cut := e.end() - r.off
			r.off += cut
			r.n -= int32(cut)
			if r.seg != nil {
				r.foff += cut
			}
			right = &r
		}
		j++
	}
	var buf [3]extent // no allocation per write
	repl := buf[:0]
	if left != nil {
		repl = append(repl, *left)
	}
	repl = append(repl, e)
	if right != nil {
		repl = append(repl, *right)
	}
	x.extents += len(repl) - (j - i)
	return slices.Replace(s, i, j, repl...)
}

// walk calls fn for the pieces of [off, off+n) in order: with the extent
// that covers a piece (shifted to the piece), or nil for a gap.
func (x *index) walk(off, n int64, fn func(off, n int64, e *extent) error) error {
	end := off + n
	for off < end {
		b := off >> bucketShift
		bend := min(end, (b+1)<<bucketShift)
		s := x.buckets[b]
		i, _ := slices.BinarySearchFunc(s, off, func(a extent, off int64) int {
			if a.end() <= off {
				return -1
			}
			return 1
		})
		for off < bend {
			if i >= len(s) || s[i].off >= bend {
				if err := fn(off, bend-off, nil); err != nil {
					return err
				}
				off = bend
				break
			}
			if s[i].off > off {
				if err := fn(off, s[i].off-off, nil); err != nil {
					return err
				}
				off = s[i].off
			}
			e := s[i]
			skip := off - e.off
			e.off = off
			e.n -= int32(skip)
			if e.seg != nil {
				e.foff += skip
			}
			if e.end() > bend {
				e.n = int32(bend - e.off)
			}
			if err := fn(e.off, int64(e.n), &e); err != nil {
				return err
			}
			off = e.end()
			i++
		}
	}
	return nil
}

// sortedBuckets returns the bucket keys in disk order.
func (x *index) sortedBuckets() []int64 {
	keys := make([]int64, 0, len(x.buckets))
	for k := range x.buckets {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
