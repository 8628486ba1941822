// Package blockdev defines vrep's block device: the one interface every
// layer of the write path speaks (file and memory devices, the tracked
// volume, point views and overlays), plus optional capabilities found by
// type assertion.
//
// The io contracts hold: ReadAt may run in parallel with anything; WriteAt
// may run in parallel on non-overlapping ranges; no implementation retains
// p after returning; a short read or write returns an error.
//
// Ranges are checked at every device: a negative offset or a range past
// Size is ErrOutOfRange. A zero-length ReadAt or WriteAt is a no-op, as
// io.ReaderAt allows; a zero-length Trim or WriteZeroes, which has no
// io contract to honour, is ErrEmpty.
package blockdev

import (
	"errors"
	"fmt"
	"io"
)

// Device is a fixed-size block device.
type Device interface {
	io.ReaderAt
	io.WriterAt
	// Size is the device size in bytes; it never changes.
	Size() int64
	// Sync makes every write completed before the call durable.
	Sync() error
}

// Trimmer is a device that can discard a range. Reads of a discarded
// range return zeros on every vrep device.
type Trimmer interface {
	Trim(off, n int64) error
}

// Zeroer is a device that can write zeros without a payload. With
// noHole the range must stay allocated (NBD_CMD_FLAG_NO_HOLE).
type Zeroer interface {
	WriteZeroes(off, n int64, noHole bool) error
}

// SyncWriter is a device that can make one write durable before it
// returns (NBD FUA), more cheaply than WriteAt then Sync.
type SyncWriter interface {
	WriteAtSync(p []byte, off int64) (int, error)
}

// Submitter is a device that can take a write without waiting for it:
// Submit places the write after every write submitted or completed
// before it (a later write to the same bytes wins) and returns; the write
// has completed, as WriteAt would have returned, once Wait on the result
// returns nil. p must not change until then (after an error from Submit
// it is free at once). A server answers many writes with one wake-up this
// way instead of a goroutine per write. Submit may block while the device
// holds writers back.
type Submitter interface {
	Submit(p []byte, off int64) (Pending, error)
}

// NowSubmitter is a Submitter that can also take a write whose caller is
// about to wait for it (it has nothing else to do): SubmitNow may do the
// work in the caller's goroutine instead of handing it to its own, as
// long as it does not wait on anything but the write's own work. It
// places the write as Submit does.
type NowSubmitter interface {
	Submitter
	SubmitNow(p []byte, off int64) (Pending, error)
}

// Pending is a submitted write.
type Pending interface {
	// Wait returns once the write has completed, with its error.
	Wait() error
	// Done is closed once the write has completed.
	Done() <-chan struct{}
}

var (
	// ErrOutOfRange is returned for a negative offset or a range that ends
	// past the device size.
	ErrOutOfRange = errors.New("blockdev: range out of bounds")
	// ErrEmpty is returned for a zero-length trim or write-zeroes.
	ErrEmpty = errors.New("blockdev: zero-length request")
	// ErrReadOnly is returned by writes to a read-only device.
	ErrReadOnly = errors.New("blockdev: read-only device")
)

// CheckRange reports whether [off, off+n) lies inside a device of the
// given size, as an error that wraps ErrOutOfRange.
func CheckRange(size, off, n int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("%w: offset %d length %d, device size %d", ErrOutOfRange, off, n, size)
	}
	return nil
}

// Trim discards a range of d, or writes zeros where d cannot discard.
func Trim(d Device, off, n int64) error {
	if t, ok := d.(Trimmer); ok {
		return t.Trim(off, n)
	}
	return WriteZeroes(d, off, n, true)
}

// WriteZeroes writes zeros to a range of d, natively where d can.
func WriteZeroes(d Device, off, n int64, noHole bool) error {
	if z, ok := d.(Zeroer); ok {
		return z.WriteZeroes(off, n, noHole)
	}
	if n == 0 {
		return ErrEmpty
	}
	if err := CheckRange(d.Size(), off, n); err != nil {
		return err
	}
	return fillZeroes(d, off, n)
}

// fillZeroes writes zeros over [off, off+n) with WriteAt, 1 MiB at a time.
func fillZeroes(w io.WriterAt, off, n int64) error {
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		c := min(n, int64(len(buf)))
		if _, err := w.WriteAt(buf[:c], off); err != nil {
			return err
		}
		off += c
		n -= c
	}
	return nil
}

// WriteAtSync writes p at off durably: natively where d can, else by
// WriteAt followed by Sync.
func WriteAtSync(d Device, p []byte, off int64) (int, error) {
	if s, ok := d.(SyncWriter); ok {
		return s.WriteAtSync(p, off)
	}
	n, err := d.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	return n, d.Sync()
}
