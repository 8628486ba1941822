package tracked

import (
	"errors"

	"github.com/vrep-io/vrep/blockdev"
)

var _ blockdev.Mapper = (*Volume)(nil)

// errEnough stops a walk once Map has gathered as many extents as it
// returns at once.
var errEnough = errors.New("tracked: enough extents")

// Map reports the disk's allocation as every acknowledged write left it:
// unmerged records are data, unmerged trims and zeroes are holes,
// and the rest is what the base reports.
func (v *Volume) Map(off, n int64) ([]blockdev.Extent, error) {
	if err := blockdev.CheckRange(v.Size(), off, n); err != nil || n == 0 {
		return nil, err
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.closed {
		return nil, ErrClosed
	}
	var out []blockdev.Extent
	if err := v.mapLayer(&out, off, n, v.active, v.frozen); err != nil && !errors.Is(err, errEnough) {
		return nil, err
	}
	return out, nil
}

// mapLayer appends the extents of [off, off+n) as index x, then next,
// then the base hold them, like readLayer reads them.
func (v *Volume) mapLayer(out *[]blockdev.Extent, off, n int64, x, next *index) error {
	if x == nil {
		for end := off + n; off < end; {
			if len(*out) >= blockdev.MaxExtents {
				return errEnough
			}
			ext, err := blockdev.Map(v.base, off, end-off)
			if err != nil {
				return err
			}
			if len(ext) == 0 { // a base that breaks the contract: call it data
				ext = []blockdev.Extent{{Length: end - off}}
			}
			for _, e := range ext {
				e.Length = min(e.Length, end-off)
				*out = blockdev.AppendExtent(*out, e)
				off += e.Length
			}
		}
		return nil
	}
	return x.walk(off, n, func(o, n int64, e *extent) error {
		if len(*out) >= blockdev.MaxExtents {
			return errEnough
		}
		switch {
		case e == nil:
			return v.mapLayer(out, o, n, next, nil)
		case e.seg == nil:
			// A trim or zeroes not merged yet: the merge punches a hole
			// for either (a hole is only a hint for NO_HOLE zeroes).
			*out = blockdev.AppendExtent(*out, blockdev.Extent{Length: n, Hole: true, Zero: true})
		default:
			*out = blockdev.AppendExtent(*out, blockdev.Extent{Length: n})
		}
		return nil
	})
}
