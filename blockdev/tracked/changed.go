package tracked

import (
	"github.com/vrep-io/vrep/hrl"
)

// ChangedSince calls fn with the range of every write, trim and zero the
// log still holds after lsn, and returns the first LSN it could look at:
// records before it were released (a retaining volume releases what its
// replica acknowledged). known is false when the log cannot tell: it
// overflowed, and only a checksum compare can find what changed.
func (v *Volume) ChangedSince(lsn uint64, fn func(off, n int64)) (first uint64, known bool, err error) {
	if v.ResyncRequired() {
		return 0, false, nil
	}
	first = lsn + 1
	if segs := v.log.Segments(); len(segs) > 0 && segs[0].First > first {
		first = segs[0].First
	}
	err = v.log.Scan(first, func(r hrl.Record) error {
		switch r.Type {
		case hrl.TypeWrite:
			fn(int64(r.Offset), int64(len(r.Payload)))
		case hrl.TypeTrim, hrl.TypeZero:
			fn(int64(r.Offset), int64(r.Span))
		}
		return nil
	})
	return first, err == nil, err
}
