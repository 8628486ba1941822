package vss

import (
	"context"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// FIFREEZE and FITHAW from linux/fs.h: _IOWR('X', 119, int) and
// _IOWR('X', 120, int). golang.org/x/sys/unix does not name them.
const (
	fiFreeze = 0xc0045877
	fiThaw   = 0xc0045878
)

// FSFreeze freezes a mounted file system (as fsfreeze -f does): dirty
// data is written and new writes block until thawed.
type FSFreeze struct {
	Path string // the mount point
}

// Name says which mount point.
func (f FSFreeze) Name() string { return "fsfreeze " + f.Path }

func (f FSFreeze) ioctl(req uint) error {
	d, err := os.Open(f.Path)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := unix.IoctlSetInt(int(d.Fd()), req, 0); err != nil {
		return fmt.Errorf("%s: %w", f.Path, err)
	}
	return nil
}

// Freeze freezes the file system. FIFREEZE cannot be interrupted; the
// watchdog in AppPoint thaws it if it returns after the deadline.
func (f FSFreeze) Freeze(ctx context.Context) error { return f.ioctl(fiFreeze) }

// Thaw thaws the file system; thawing one that is not frozen is fine.
func (f FSFreeze) Thaw(ctx context.Context) error {
	if err := f.ioctl(fiThaw); err != nil && !isNotFrozen(err) {
		return err
	}
	return nil
}

func isNotFrozen(err error) bool {
	var e unix.Errno
	for u := err; u != nil; {
		if x, ok := u.(unix.Errno); ok {
			e = x
			break
		}
		if w, ok := u.(interface{ Unwrap() error }); ok {
			u = w.Unwrap()
		} else {
			break
		}
	}
	return e == unix.EINVAL
}
