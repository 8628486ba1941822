package hrl

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	"github.com/vrep-io/vrep/internal/vfs"
)

// recordIter reads the records of one segment file in order, from just
// past its header up to a limit, and judges each one: framing, checksum,
// shape, and place in the LSN sequence (a write, trim, zero or marker
// record has the LSN after the one before it; a sync record repeats it).
// Recovery (Open), Scan and Check all read records through it, so they
// cannot disagree about where a segment's good records end.
//
// It stops at the limit, at the first bad record (bad says why; off is
// where that record starts) or at an I/O error (err). A bad record is not
// yet a verdict: recovery decides whether it is a torn tail or damage.
type recordIter struct {
	br      *bufio.Reader
	limit   int64
	hdr     [RecHeaderSize]byte
	payload []byte
	off     int64  // file offset of the next record
	last    uint64 // LSN of the last record read; first-1 before any
	bad     error  // the record at off is bad
	err     error  // reading failed
}

// reset starts reading the segment in f, whose first LSN is first, up to
// file offset limit.
func (it *recordIter) reset(f vfs.File, first uint64, limit int64) {
	it.resetAt(f, HeaderSize, first-1, limit)
}

// resetAt starts reading f at off, a record boundary that follows the
// record with LSN last, up to file offset limit.
func (it *recordIter) resetAt(f vfs.File, off int64, last uint64, limit int64) {
	sr := io.NewSectionReader(f, off, max(limit-off, 0))
	if it.br == nil {
		it.br = bufio.NewReaderSize(sr, 1<<20)
	} else {
		it.br.Reset(sr)
	}
	it.limit, it.off, it.last = limit, off, last
	it.bad, it.err = nil, nil
}

// next returns the next good record, sync records included. Its payload
// is valid until the following call. It returns false at the end.
func (it *recordIter) next() (Record, bool) {
	if it.off >= it.limit || it.bad != nil || it.err != nil {
		return Record{}, false
	}
	left := it.limit - it.off
	if left < RecHeaderSize {
		it.bad = fmt.Errorf("%d bytes after the last record, short of a record header", left)
		return Record{}, false
	}
	h := it.hdr[:]
	if _, err := io.ReadFull(it.br, h); err != nil {
		it.err = err
		return Record{}, false
	}
	if isZero(h) {
		// What a crash leaves past the written end of a file whose size
		// went ahead of its data (reserved or extended blocks read as
		// zeros).
		it.bad = errors.New("zeroed bytes where a record should be")
		return Record{}, false
	}
	_, _, n := parseRecHeader(h)
	if n > MaxPayload || int64(n) > left-RecHeaderSize {
		it.bad = fmt.Errorf("record length %d runs past the segment's end", n)
		return Record{}, false
	}
	if cap(it.payload) < int(n) {
		it.payload = make([]byte, n)
	}
	payload := it.payload[:n]
	if _, err := io.ReadFull(it.br, payload); err != nil {
		it.err = err
		return Record{}, false
	}
	r, err := checkRecord(h, payload)
	if err != nil {
		it.bad = err
		return Record{}, false
	}
	want := it.last + 1
	if r.Type == TypeSync {
		want = it.last
	}
	if r.LSN != want {
		it.bad = fmt.Errorf("%v record with LSN %d out of sequence (expected %d)", r.Type, r.LSN, want)
		return Record{}, false
	}
	it.last = r.LSN
	it.off += RecHeaderSize + int64(n)
	return r, true
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
