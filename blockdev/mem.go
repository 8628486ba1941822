package blockdev

import "sync"

// Mem is a Device held in memory, for tests and scratch overlays. It is
// safe for concurrent use.
type Mem struct {
	mu  sync.RWMutex
	buf []byte
}

var (
	_ Device  = (*Mem)(nil)
	_ Trimmer = (*Mem)(nil)
	_ Zeroer  = (*Mem)(nil)
)

// NewMem returns a zeroed memory device of the given size.
func NewMem(size int64) *Mem { return &Mem{buf: make([]byte, size)} }

// Size returns the device size.
func (m *Mem) Size() int64 { return int64(len(m.buf)) }

// ReadAt reads len(p) bytes at off.
func (m *Mem) ReadAt(p []byte, off int64) (int, error) {
	if err := CheckRange(m.Size(), off, int64(len(p))); err != nil {
		return 0, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	return copy(p, m.buf[off:]), nil
}

// WriteAt writes p at off.
func (m *Mem) WriteAt(p []byte, off int64) (int, error) {
	if err := CheckRange(m.Size(), off, int64(len(p))); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.buf[off:], p), nil
}

// Sync does nothing: memory is as durable as it gets.
func (m *Mem) Sync() error { return nil }

// Trim zeroes the range.
func (m *Mem) Trim(off, n int64) error { return m.WriteZeroes(off, n, false) }

// WriteZeroes zeroes the range.
func (m *Mem) WriteZeroes(off, n int64, _ bool) error {
	if n == 0 {
		return ErrEmpty
	}
	if err := CheckRange(m.Size(), off, n); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.buf[off : off+n])
	return nil
}
