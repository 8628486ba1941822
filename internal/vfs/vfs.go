// Package vfs is the file-system seam under vrep's own storage code (the
// change log and the tracked volume's metadata). OS is the real thing;
// Mem lets tests inject I/O errors and cut the power, keeping only what
// was synced.
package vfs

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"syscall"

	"golang.org/x/sys/unix"
)

// File is an open file. ReadAt and WriteAt may run in parallel.
type File interface {
	io.ReaderAt
	io.WriterAt
	io.Closer
	// Sync makes the file's data durable (fdatasync).
	Sync() error
	// Truncate changes the file size.
	Truncate(size int64) error
	// Size returns the current file size.
	Size() (int64, error)
}

// FS is the set of file-system calls the storage code makes. Names are
// slash-separated paths.
type FS interface {
	// Create creates or truncates a file for reading and writing.
	Create(name string) (File, error)
	// Open opens an existing file for reading and writing.
	Open(name string) (File, error)
	Remove(name string) error
	Rename(oldname, newname string) error
	// List returns the names of the files in dir, sorted.
	List(dir string) ([]string, error)
	MkdirAll(dir string) error
	// SyncDir makes creations, renames and removals in dir durable.
	SyncDir(dir string) error
}

// WriteFileAtomic publishes data under name: a temporary file is
// written and synced, renamed over name, and the directory synced, so a
// crash leaves either the old content or the new, never a mix.
func WriteFileAtomic(fs FS, name string, data []byte) error {
	tmp := name + ".tmp"
	f, err := fs.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := fs.Rename(tmp, name); err != nil {
		return err
	}
	return fs.SyncDir(filepath.Dir(name))
}

// ReadFile returns the whole content of name.
func ReadFile(fs FS, name string) ([]byte, error) {
	f, err := fs.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	n, err := f.Size()
	if err != nil {
		return nil, err
	}
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return buf, nil
}

// OS is the operating system's file system.
type OS struct{}

type osFile struct{ *os.File }

func (f osFile) Sync() error {
	for {
		if err := unix.Fdatasync(int(f.Fd())); err != unix.EINTR {
			if err != nil {
				return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
			}
			return nil
		}
	}
}

// Allocate reserves the file's first n bytes on disk (fallocate), so
// later writes into them need no block allocation: a file written
// sequentially and fsynced often syncs faster.
func (f osFile) Allocate(n int64) error {
	return unix.Fallocate(int(f.Fd()), 0, 0, n)
}

// Reserve reserves disk blocks for the file's first n bytes without
// changing its size (fallocate KEEP_SIZE). Writes that then extend the
// file need no block allocation of their own: appending to a reserved
// range costs less CPU than appending to a bare file (a fifth less here).
func (f osFile) Reserve(n int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, n)
}

// StartWriteback starts writing the file's dirty pages in [off, off+n)
// (n 0: to the end) to disk without waiting and without making them
// durable (sync_file_range WRITE). A later fsync then has little left
// to do: the disk works steadily instead of in one burst per fsync.
func (f osFile) StartWriteback(off, n int64) error {
	return unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// Writebacker is a file that can start writeback early (StartWriteback).
type Writebacker interface {
	StartWriteback(off, n int64) error
}

// Reserver is a file that can reserve blocks past its end (Reserve).
// Truncate to the file's size gives back what was not written.
type Reserver interface {
	Reserve(n int64) error
}

func (f osFile) Size() (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// Create creates or truncates name.
func (OS) Create(name string) (File, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

// Open opens name for reading and writing.
func (OS) Open(name string) (File, error) {
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

// Remove removes name.
func (OS) Remove(name string) error { return os.Remove(name) }

// Rename renames oldname to newname.
func (OS) Rename(oldname, newname string) error { return os.Rename(oldname, newname) }

// MkdirAll creates dir and its parents.
func (OS) MkdirAll(dir string) error { return os.MkdirAll(dir, 0o700) }

// List returns the sorted names of regular files in dir.
func (OS) List(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// SyncDir fsyncs the directory.
func (OS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// WritevAt writes bufs back to back at off with pwritev.
func (f osFile) WritevAt(bufs [][]byte, off int64) (int, error) {
	return Pwritev(int(f.Fd()), f.Name(), bufs, off)
}

// Pwritev writes bufs back to back at off of the file open as fd (named
// name in errors), with as few pwritev calls as IOVMax allows, until all
// is written or an error comes.
func Pwritev(fd int, name string, bufs [][]byte, off int64) (int, error) {
	total := 0
	for len(bufs) > 0 {
		chunk := bufs[:min(len(bufs), IOVMax)]
		n, err := unix.Pwritev(fd, chunk, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return total, &os.PathError{Op: "pwritev", Path: name, Err: err}
		}
		if n == 0 {
			return total, io.ErrShortWrite
		}
		total += n
		off += int64(n)
		// Drop what was written, including a partly written buffer.
		for n > 0 && len(bufs) > 0 {
			if n >= len(bufs[0]) {
				n -= len(bufs[0])
				bufs = bufs[1:]
			} else {
				bufs[0] = bufs[0][n:]
				n = 0
			}
		}
	}
	return total, nil
}

// IOVMax is the most buffers one pwritev takes.
const IOVMax = 1024

// Mapper is a file that can be mapped into memory, read-only.
type Mapper interface {
	// Map maps n bytes (n > 0) of the file from off (a multiple of the
	// page size), with their pages populated; Unmap undoes it.
	Map(off, n int64) ([]byte, error)
}

// Map maps n bytes from off read-only and shared, populated: the
// merge hands log pages to pwritev without copying them first. Only the
// kernel reads the mapping (a read error there fails the call with
// EFAULT; a Go read would be a fault).
func (f osFile) Map(off, n int64) ([]byte, error) {
	b, err := unix.Mmap(int(f.Fd()), off, int(n), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, &os.PathError{Op: "mmap", Path: f.Name(), Err: err}
	}
	return b, nil
}

// Unmap undoes Map.
func Unmap(b []byte) error { return unix.Munmap(b) }

// StartWriteback starts writing a file's dirty pages, from off, n bytes
// (0: to its end), to its drive without waiting for them
// (sync_file_range with SYNC_FILE_RANGE_WRITE): a long sequential writer
// calls it as it goes, so the drive writes while it works and its fsync
// at the end finds little left. It promises no durability (only Sync
// does). f is an *os.File, a File of OS, or anything with its
// SyscallConn; for anything else, or where the call is not supported, it
// does nothing.
func StartWriteback(f any, off, n int64) {
	sc, ok := f.(interface {
		SyscallConn() (syscall.RawConn, error)
	})
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) { unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE) })
}
