package store

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/dgraph-io/badger/v4"

	"github.com/vrep-io/vrep/internal/statefile"
	"github.com/vrep-io/vrep/internal/vfs"
)

// Extent is a byte range of a disk: offset, length.
type Extent struct{ Off, Len int64 }

// Extents is a set of byte ranges of a disk: what reverse replication
// must send, known from the logs and the history (the blocks that
// diverged between two copies of a disk).
type Extents []Extent

// Add adds a range.
func (e *Extents) Add(off, n int64) {
	if n > 0 {
		*e = append(*e, Extent{off, n})
	}
}

// Normalize aligns every range outward to align bytes and sorts and
// merges them; the result covers at least what was added.
func (e Extents) Normalize(align, size int64) Extents {
	out := make(Extents, 0, len(e))
	for _, x := range e {
		lo := x.Off / align * align
		hi := min((x.Off+x.Len+align-1)/align*align, size)
		if hi > lo {
			out = append(out, Extent{lo, hi - lo})
		}
	}
	slices.SortFunc(out, func(a, b Extent) int { return int(min(max(a.Off-b.Off, -1), 1)) })
	merged := out[:0]
	for _, x := range out {
		if n := len(merged); n > 0 && merged[n-1].Off+merged[n-1].Len >= x.Off {
			merged[n-1].Len = max(merged[n-1].Len, x.Off+x.Len-merged[n-1].Off)
			continue
		}
		merged = append(merged, x)
	}
	return merged
}

// Bytes is the total length.
func (e Extents) Bytes() int64 {
	var n int64
	for _, x := range e {
		n += x.Len
	}
	return n
}

// Part of the format of a diverged-extents file; do not change.
const extentsMagic = "VREPDIVG"

// WriteExtents publishes e at path (statefile framing: count uint64,
// then offset and length uint64 pairs, little-endian).
func WriteExtents(path string, e Extents) error {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(e)))
	for _, x := range e {
		b = binary.LittleEndian.AppendUint64(b, uint64(x.Off))
		b = binary.LittleEndian.AppendUint64(b, uint64(x.Len))
	}
	return statefile.Write(vfs.OS{}, path, extentsMagic, b)
}

// ReadExtents reads what WriteExtents wrote; a missing file is
// fs.ErrNotExist, a damaged one statefile.ErrBad.
func ReadExtents(path string) (Extents, error) {
	b, err := statefile.Read(vfs.OS{}, path, extentsMagic, -1)
	if err != nil {
		return nil, err
	}
	if len(b) < 8 || uint64(len(b)-8) != 16*binary.LittleEndian.Uint64(b) {
		return nil, fmt.Errorf("replica: %s: %w", path, statefile.ErrBad)
	}
	n := binary.LittleEndian.Uint64(b)
	out := make(Extents, 0, n)
	for i := uint64(0); i < n; i++ {
		p := b[8+16*i:]
		out = append(out, Extent{int64(binary.LittleEndian.Uint64(p)), int64(binary.LittleEndian.Uint64(p[8:]))})
	}
	return out, nil
}

// ChangedAfter returns the ranges of disk the history after lsn holds the
// old content of: what records (and resyncs) applied after lsn changed.
func (c *Catalog) ChangedAfter(disk string, lsn uint64) (Extents, error) {
	refs, err := c.undoAfter(disk, lsn)
	if err != nil {
		return nil, err
	}
	var out Extents
	for _, r := range refs {
		out.Add(r.off, r.length)
	}
	return out, nil
}

// DropSplitBrain deletes the split-brain points of disk (the operator is
// done with them); retention then prunes the history only they kept. It
// returns how many went.
func (c *Catalog) DropSplitBrain(disk string) (int, error) {
	pts, err := c.diskPoints(disk, ^uint64(0))
	if err != nil {
		return 0, err
	}
	n := 0
	err = c.db.Update(func(txn *badger.Txn) error {
		for _, p := range pts {
			if strings.HasPrefix(p.Group, SplitBrainGroup) {
				if err := txn.Delete(indexKey('m', disk, p.LSN)); err != nil {
					return err
				}
				n++
			}
		}
		return nil
	})
	return n, err
}
