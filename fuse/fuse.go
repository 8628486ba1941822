// Package fuse serves protected disks as files: <mount>/<vm>/<disk>.img,
// one per disk, fixed in size, every write going through the disk's
// tracked volume like an NBD write. A file can be loop-mounted or given
// to qemu as a raw image.
//
// Files are opened with direct I/O (FOPEN_DIRECT_IO) and the mount asks
// for async direct I/O (CAP_ASYNC_DIO), so the kernel passes every read
// and write through to vrep in the order it issued them, many at a time:
// the page cache's writeback would reorder writes before vrep sees them,
// and passthrough would bypass change tracking, so neither is used.
// fsync is a flush of the disk; fallocate punch-hole is a trim and
// zero-range a write-zeroes.
package fuse

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/internal/names"
)

// Mount is a mounted vrep file system. Add and Remove are safe for
// concurrent use while mounted.
type Mount struct {
	dir    string
	log    *slog.Logger
	root   *fs.Inode
	server *gofuse.Server
	mu     sync.Mutex
	once   sync.Once
}

// ErrMounted is returned when the mount point already holds a live mount.
var ErrMounted = errors.New("fuse: mount point is already mounted")

// New mounts an empty vrep file system on dir, first clearing a stale
// mount a crashed run left there.
func New(dir string, log *slog.Logger) (*Mount, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := clearStale(dir, log); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("fuse: %w", err)
	}
	m := &Mount{dir: dir, log: log}
	root := &dirNode{}
	sec := time.Second
	root0 := os.Geteuid() == 0
	opts := &fs.Options{
		EntryTimeout: &sec,
		AttrTimeout:  &sec,
		MountOptions: gofuse.MountOptions{
			FsName:      "vrep",
			Name:        "vrep",
			MaxWrite:    1 << 20,
			DirectMount: root0,
			AllowOther:  root0,
			// Splice wants pipes bigger than MaxWrite plus a header; it fell
			// back (with a log line) on every 1 MiB request, so it is off.
			DisableSplice:     true,
			ExtraCapabilities: gofuse.CAP_ASYNC_DIO,
			MaxBackground:     64,
		},
	}
	openFlags := tune(&opts.MountOptions, os.Getenv("VREP_FUSE_TUNING"))
	root.openFlags = openFlags
	server, err := fs.Mount(dir, root, opts)
	if err != nil {
		return nil, fmt.Errorf("fuse: mounting %s: %w", dir, err)
	}
	if err := server.WaitMount(); err != nil {
		server.Unmount()
		return nil, fmt.Errorf("fuse: mounting %s: %w", dir, err)
	}
	m.server = server
	m.root = &root.Inode
	return m, nil
}

// clearStale detaches a mount whose daemon died (ENOTCONN) and refuses a
// live one.
func clearStale(dir string, log *slog.Logger) error {
	_, err := os.Stat(dir)
	if errors.Is(err, syscall.ENOTCONN) {
		if uerr := unix.Unmount(dir, unix.MNT_DETACH); uerr != nil {
			return fmt.Errorf("fuse: clearing stale mount on %s: %w", dir, uerr)
		}
		log.Warn("cleared a stale mount left by a crashed run", "mount", dir)
		return nil
	}
	if mounted(dir) {
		return fmt.Errorf("%w: %s", ErrMounted, dir)
	}
	return nil
}

// mounted reports whether dir is a mount point.
func mounted(dir string) bool {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && fields[4] == abs {
			return true
		}
	}
	return false
}

// Add serves dev as <mount>/<vm>/<disk>.img.
func (m *Mount) Add(name string, dev blockdev.Device) error {
	vm, disk, err := names.Disk(name)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ctx := context.Background()
	dir := m.root.GetChild(vm)
	if dir == nil {
		dir = m.root.NewPersistentInode(ctx, &dirNode{}, fs.StableAttr{Mode: syscall.S_IFDIR})
		m.root.AddChild(vm, dir, false)
	}
	flags := m.root.Operations().(*dirNode).openFlags
	file := dir.NewPersistentInode(ctx, &diskNode{dev: dev, name: name, log: m.log, mtime: time.Now(), openFlags: flags},
		fs.StableAttr{Mode: syscall.S_IFREG})
	if !dir.AddChild(disk+".img", file, false) {
		return fmt.Errorf("fuse: %s is already served", name)
	}
	return nil
}

// Remove stops serving a disk; open files keep working until closed.
func (m *Mount) Remove(name string) {
	vm, disk, err := names.Disk(name)
	if err != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if dir := m.root.GetChild(vm); dir != nil {
		dir.RmChild(disk + ".img")
		dir.NotifyEntry(disk + ".img")
		if len(dir.Children()) == 0 {
			m.root.RmChild(vm)
			m.root.NotifyEntry(vm)
		}
	}
}

// Path returns the file that serves a disk.
func (m *Mount) Path(name string) string {
	vm, disk, _ := names.Disk(name)
	return filepath.Join(m.dir, vm, disk+".img")
}

// Unmount unmounts, waiting for open files to close (up to 10 s, then
// lazily). It is idempotent.
func (m *Mount) Unmount() error {
	var err error
	m.once.Do(func() {
		deadline := time.Now().Add(10 * time.Second)
		for {
			if err = m.server.Unmount(); err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			m.log.Warn("mount busy; detaching it lazily", "mount", m.dir, "err", err)
			err = unix.Unmount(m.dir, unix.MNT_DETACH)
		}
		m.server.Wait()
	})
	return err
}

// tune applies VREP_FUSE_TUNING, a comma list used by bench/fuse-options.sh
// to measure what each option is worth: noasyncdio, noparallel, nodirect,
// splice, maxwrite=N (bytes), maxbackground=N. It returns the open flags.
func tune(mo *gofuse.MountOptions, spec string) uint32 {
	flags := uint32(gofuse.FOPEN_DIRECT_IO | gofuse.FOPEN_PARALLEL_DIRECT_WRITES)
	for _, o := range strings.Split(spec, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(o), "=")
		n, _ := strconv.Atoi(v)
		switch k {
		case "noasyncdio":
			mo.ExtraCapabilities &^= gofuse.CAP_ASYNC_DIO
		case "noparallel":
			flags &^= gofuse.FOPEN_PARALLEL_DIRECT_WRITES
		case "nodirect":
			flags &^= gofuse.FOPEN_DIRECT_IO | gofuse.FOPEN_PARALLEL_DIRECT_WRITES
		case "splice":
			mo.DisableSplice = false
		case "maxwrite":
			mo.MaxWrite = n
		case "maxbackground":
			mo.MaxBackground = n
		}
	}
	return flags
}

type dirNode struct {
	fs.Inode
	openFlags uint32 // for the disk files below; set on the root
}

var _ fs.NodeGetattrer = (*dirNode)(nil)

func (d *dirNode) Getattr(ctx context.Context, f fs.FileHandle, out *gofuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o755
	return 0
}

// diskNode is one disk's file.
type diskNode struct {
	fs.Inode
	dev       blockdev.Device
	name      string
	log       *slog.Logger
	mtime     time.Time
	openFlags uint32
}

var (
	_ fs.NodeGetattrer = (*diskNode)(nil)
	_ fs.NodeSetattrer = (*diskNode)(nil)
	_ fs.NodeOpener    = (*diskNode)(nil)
	_ fs.NodeReader    = (*diskNode)(nil)
	_ fs.NodeWriter    = (*diskNode)(nil)
	_ fs.NodeFsyncer   = (*diskNode)(nil)
	_ fs.NodeAllocater = (*diskNode)(nil)
)

func (n *diskNode) attr(out *gofuse.Attr) {
	size := n.dev.Size()
	out.Mode = syscall.S_IFREG | 0o600
	out.Size = uint64(size)
	out.Blocks = uint64((size + 511) / 512)
	out.Blksize = 4096
	out.SetTimes(nil, &n.mtime, &n.mtime)
	out.Owner = gofuse.Owner{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())}
}

func (n *diskNode) Getattr(ctx context.Context, f fs.FileHandle, out *gofuse.AttrOut) syscall.Errno {
	n.attr(&out.Attr)
	return 0
}

// Setattr refuses a size change: a disk's size is fixed. Mode and time
// changes are accepted and ignored.
func (n *diskNode) Setattr(ctx context.Context, f fs.FileHandle, in *gofuse.SetAttrIn, out *gofuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok && int64(size) != n.dev.Size() {
		return syscall.EPERM
	}
	n.attr(&out.Attr)
	return 0
}

func (n *diskNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EPERM
	}
	return nil, n.openFlags, 0
}

func (n *diskNode) errno(op string, off int64, length int, err error) syscall.Errno {
	if errors.Is(err, blockdev.ErrOutOfRange) {
		return syscall.EINVAL
	}
	n.log.Error("fuse: I/O failed", "disk", n.name, "op", op, "offset", off, "length", length, "err", err)
	return syscall.EIO
}

func (n *diskNode) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (gofuse.ReadResult, syscall.Errno) {
	size := n.dev.Size()
	if off >= size {
		return gofuse.ReadResultData(nil), 0
	}
	dest = dest[:min(int64(len(dest)), size-off)]
	if _, err := n.dev.ReadAt(dest, off); err != nil {
		return nil, n.errno("read", off, len(dest), err)
	}
	return gofuse.ReadResultData(dest), 0
}

func (n *diskNode) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if off+int64(len(data)) > n.dev.Size() {
		return 0, syscall.ENOSPC // a disk does not grow
	}
	if _, err := n.dev.WriteAt(data, off); err != nil {
		return 0, n.errno("write", off, len(data), err)
	}
	return uint32(len(data)), 0
}

func (n *diskNode) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if err := n.dev.Sync(); err != nil {
		return n.errno("fsync", 0, 0, err)
	}
	return 0
}

func (n *diskNode) Allocate(ctx context.Context, f fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	o, l := int64(off), int64(size)
	if o < 0 || l < 0 || o > n.dev.Size() || l > n.dev.Size()-o {
		return syscall.ENOSPC
	}
	var err error
	switch mode {
	case 0, unix.FALLOC_FL_KEEP_SIZE:
		return 0 // inside the disk every byte is allocated already
	case unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE:
		err = blockdev.Trim(n.dev, o, l)
	case unix.FALLOC_FL_ZERO_RANGE, unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE:
		err = blockdev.WriteZeroes(n.dev, o, l, true)
	default:
		return syscall.EOPNOTSUPP
	}
	if err != nil && !errors.Is(err, blockdev.ErrEmpty) {
		return n.errno("fallocate", o, int(l), err)
	}
	return 0
}
