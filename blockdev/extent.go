package blockdev

import (
	"bytes"
	"errors"

	"golang.org/x/sys/unix"
)

// Extent is a run of a device with one allocation state, as Map reports
// it (NBD base:allocation).
type Extent struct {
	Length int64
	// Hole: the run has no storage of its own (a sparse region). On every
	// vrep device a hole reads as zeros, so Zero is set with it.
	Hole bool
	// Zero: the run reads as zeros. Clear means "not known", never
	// "not zeros".
	Zero bool
}

// Mapper is a device that can tell which ranges hold data. A device
// without it holds data everywhere, as far as its users know.
//
// Map describes [off, off+n): consecutive extents starting at off that
// cover a prefix of the range (at least one byte when n > 0; it may stop
// early to bound its work, and the caller asks again from where it
// stopped). A range reported Hole or Zero must read as zeros; data may
// always be reported where the device is not sure.
type Mapper interface {
	Map(off, n int64) ([]Extent, error)
}

// MaxExtents bounds the extents one Map call returns on vrep's devices.
const MaxExtents = 1 << 16

// Map maps [off, off+n) of d: with d's Mapper where it has one, else as
// one data extent.
func Map(d Device, off, n int64) ([]Extent, error) {
	if m, ok := d.(Mapper); ok {
		return m.Map(off, n)
	}
	if err := CheckRange(d.Size(), off, n); err != nil || n == 0 {
		return nil, err
	}
	return []Extent{{Length: n}}, nil
}

// AppendExtent appends e to s, merging it into the last extent when they
// have the same state. Empty extents are dropped.
func AppendExtent(s []Extent, e Extent) []Extent {
	if e.Length <= 0 {
		return s
	}
	if k := len(s) - 1; k >= 0 && s[k].Hole == e.Hole && s[k].Zero == e.Zero {
		s[k].Length += e.Length
		return s
	}
	return append(s, e)
}

// MapFD maps [off, off+n) of an open file with SEEK_DATA and SEEK_HOLE:
// holes (and anything past the file's end) are Hole and Zero, the rest
// data. Where the file system cannot tell, the whole range is data. The
// file offset of fd moves; vrep reads and writes with pread and pwrite.
func MapFD(fd int, off, n int64) ([]Extent, error) {
	end := off + n
	var out []Extent
	for pos := off; pos < end; {
		if len(out) >= MaxExtents {
			return out, nil
		}
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO): // no data from pos to the end of the file
			data = end
		case err != nil:
			if pos > off {
				return out, nil // report what is known; the caller asks again
			}
			return []Extent{{Length: n}}, nil
		}
		if data > pos {
			out = AppendExtent(out, Extent{Length: min(data, end) - pos, Hole: true, Zero: true})
			pos = min(data, end)
			continue
		}
		hole, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
		if err != nil {
			hole = end // the file shrank under us: call the rest data
		}
		hole = min(max(hole, pos+1), end)
		out = AppendExtent(out, Extent{Length: hole - pos})
		pos = hole
	}
	return out, nil
}

// Map reports the file's holes (SEEK_DATA, SEEK_HOLE).
func (d *File) Map(off, n int64) ([]Extent, error) {
	if err := CheckRange(d.size, off, n); err != nil || n == 0 {
		return nil, err
	}
	return MapFD(d.fd, off, n)
}

// zeroBlock is a block of zeros to compare against.
var zeroBlock [64 << 10]byte

// AllZero reports whether b holds only zeros (bytes.Equal is vectorised:
// a byte loop checks about 1 GB/s here, this ten times that).
func AllZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// Map reports every 4 KiB block that holds only zeros as a hole: memory
// has no allocation of its own to report.
func (m *Mem) Map(off, n int64) ([]Extent, error) {
	if err := CheckRange(m.Size(), off, n); err != nil || n == 0 {
		return nil, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []Extent
	for pos, end := off, off+n; pos < end && len(out) < MaxExtents; {
		next := min((pos/4096+1)*4096, end)
		zero := string(m.buf[pos:next]) == string(zeroBlock[:next-pos])
		out = AppendExtent(out, Extent{Length: next - pos, Hole: zero, Zero: zero})
		pos = next
	}
	return out, nil
}

// FileMapper reports whether f can be mapped with MapFD: the regular
// *os.File underneath, if any.
func FileMapper(f any) (fd int, ok bool) {
	if x, ok := f.(interface{ Fd() uintptr }); ok {
		return int(x.Fd()), true
	}
	return 0, false
}

var (
	_ Mapper = (*File)(nil)
	_ Mapper = (*Mem)(nil)
)
