package blockdev

import (
	"fmt"
	"io"
	"os"

	"github.com/vrep-io/vrep/internal/vfs"

	"golang.org/x/sys/unix"
)

// File is a Device over a regular file or block device, using pread,
// pwrite, fdatasync and fallocate. It is safe for concurrent use.
type File struct {
	f    *os.File
	fd   int
	size int64
}

var (
	_ Device     = (*File)(nil)
	_ Trimmer    = (*File)(nil)
	_ Zeroer     = (*File)(nil)
	_ SyncWriter = (*File)(nil)
)

// OpenFile opens the image at path for reading and writing. The device
// size is the file size at open.
func OpenFile(path string) (*File, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("blockdev: size of %s: %w", path, err)
	}
	// A VM disk is read at random: readahead on a miss would read pages
	// nobody asked for.
	unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM)
	return &File{f: f, fd: int(f.Fd()), size: size}, nil
}

// OSFile returns the underlying file, for locking and copy offload.
func (d *File) OSFile() *os.File { return d.f }

// Size returns the device size.
func (d *File) Size() int64 { return d.size }

// ReadAt reads len(p) bytes at off.
func (d *File) ReadAt(p []byte, off int64) (int, error) {
	if err := CheckRange(d.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		n, err := unix.Pread(d.fd, p[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, &os.PathError{Op: "pread", Path: d.f.Name(), Err: err}
		}
		if n == 0 {
			return done, io.ErrUnexpectedEOF
		}
		done += n
	}
	return done, nil
}

// WriteAt writes p at off.
func (d *File) WriteAt(p []byte, off int64) (int, error) {
	if err := CheckRange(d.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		n, err := unix.Pwrite(d.fd, p[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, &os.PathError{Op: "pwrite", Path: d.f.Name(), Err: err}
		}
		if n == 0 {
			return done, io.ErrShortWrite
		}
		done += n
	}
	return done, nil
}

// WritevAt writes bufs back to back at off (pwritev): a merge writes a
// run of adjacent extents with one call.
func (d *File) WritevAt(bufs [][]byte, off int64) (int, error) {
	var n int64
	for _, b := range bufs {
		n += int64(len(b))
	}
	if err := CheckRange(d.size, off, n); err != nil {
		return 0, err
	}
	return vfs.Pwritev(d.fd, d.f.Name(), bufs, off)
}

// WriteAtSync writes p at off and makes it durable.
func (d *File) WriteAtSync(p []byte, off int64) (int, error) {
	n, err := d.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	return n, d.Sync()
}

// Sync makes completed writes durable with fdatasync.
func (d *File) Sync() error {
	for {
		err := unix.Fdatasync(d.fd)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "fdatasync", Path: d.f.Name(), Err: err}
		}
		return nil
	}
}

// Trim punches a hole; the range reads back as zeros.
func (d *File) Trim(off, n int64) error {
	return d.WriteZeroes(off, n, false)
}

// WriteZeroes zeroes a range: by punching a hole unless noHole, else by
// FALLOC_FL_ZERO_RANGE, falling back to writing zeros where the file
// system supports neither.
func (d *File) WriteZeroes(off, n int64, noHole bool) error {
	if n == 0 {
		return ErrEmpty
	}
	if err := CheckRange(d.size, off, n); err != nil {
		return err
	}
	mode := uint32(unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE)
	if noHole {
		mode = unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE
	}
	if err := unix.Fallocate(d.fd, mode, off, n); err == nil {
		return nil
	}
	return fillZeroes(d, off, n)
}

// Close closes the file.
func (d *File) Close() error { return d.f.Close() }
