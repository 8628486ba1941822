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
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	dev    uint64 // the mount's device number: its fusectl connection

	opens atomic.Int64 // disk files open, on every disk
	relMu sync.Mutex
	relCh chan struct{} // closed at the next release; guarded by relMu
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
	// NB: not a stat of the mount, which would cache the root's
	// attributes and hide a crash from the next run's clearStale.
	m.dev = mountDev(dir)
	return m, nil
}

// clearStale detaches a mount whose daemon died (ENOTCONN) and refuses a
// live one.
func clearStale(dir string, log *slog.Logger) error {
	_, err := os.Stat(dir)
	if err == nil && mounted(dir) {
		// The root's attributes may come from the kernel's cache; statfs
		// always asks the daemon.
		var st unix.Statfs_t
		err = unix.Statfs(dir, &st)
	}
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

// mountDev returns the device number of the mount on dir (for major 0,
// the number of its fusectl connection), or 0.
func mountDev(dir string) uint64 {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return 0
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0
	}
	var dev uint64
	for _, line := range strings.Split(string(b), "\n") {
		// The last mount on abs is the one on top.
		if fields := strings.Fields(line); len(fields) > 4 && fields[4] == abs {
			major, minor, _ := strings.Cut(fields[2], ":")
			ma, _ := strconv.ParseUint(major, 10, 32)
			mi, _ := strconv.ParseUint(minor, 10, 32)
			dev = unix.Mkdev(uint32(ma), uint32(mi))
		}
	}
	return dev
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
	file := dir.NewPersistentInode(ctx, &diskNode{dev: dev, name: name, log: m.log, mtime: time.Now(), openFlags: flags, m: m},
		fs.StableAttr{Mode: syscall.S_IFREG})
	if !dir.AddChild(disk+".img", file, false) {
		return fmt.Errorf("fuse: %s is already served", name)
	}
	return nil
}

// Remove stops serving a disk, even while its file is open: open files
// answer EIO from then on (Detach with force).
func (m *Mount) Remove(name string) {
	m.Detach(context.Background(), name, true)
}

// ErrInUse is returned by Detach when the disk's file is open.
var ErrInUse = errors.New("fuse: file in use")

// node returns the disk's file node, or nil.
func (m *Mount) node(name string) *diskNode {
	vm, disk, err := names.Disk(name)
	if err != nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	dir := m.root.GetChild(vm)
	if dir == nil {
		return nil
	}
	f := dir.GetChild(disk + ".img")
	if f == nil {
		return nil
	}
	n, _ := f.Operations().(*diskNode)
	return n
}

// OpenFiles returns how many times the disk's file is open now: by
// processes, and by the kernel for a loop device.
func (m *Mount) OpenFiles(name string) int {
	n := m.node(name)
	if n == nil {
		return 0
	}
	n.state.Lock()
	defer n.state.Unlock()
	return n.opens
}

// Detach stops serving a disk once its file is not open, atomically: no
// open can slip in meanwhile. Without force it waits until ctx ends for
// the file to be closed (the kernel reports a close a moment after it);
// if it is still open, it changes nothing and returns the open count with
// an error wrapping ErrInUse. With force it stops at once: I/O under way
// finishes, then open files answer EIO. It returns the open count it
// found.
func (m *Mount) Detach(ctx context.Context, name string, force bool) (int, error) {
	vm, disk, err := names.Disk(name)
	if err != nil {
		return 0, err
	}
	n := m.node(name)
	if n == nil {
		return 0, nil
	}
	open := 0
	for {
		rel := m.released()
		var err error
		if open, err = n.revoke(force); err == nil {
			break
		}
		select {
		case <-rel:
		case <-ctx.Done():
			return open, fmt.Errorf("%w: %s is open %d times", err, m.Path(name), open)
		}
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
	return open, nil
}

// Fence makes every disk's file answer EIO from now on, once I/O under
// way has finished: what a daemon does before it detaches a mount that
// is still held, so that nothing is acknowledged after its last sync.
func (m *Mount) Fence() {
	m.mu.Lock()
	var nodes []*diskNode
	for _, dir := range m.root.Children() {
		for _, f := range dir.Children() {
			if n, ok := f.Operations().(*diskNode); ok {
				nodes = append(nodes, n)
			}
		}
	}
	m.mu.Unlock()
	for _, n := range nodes {
		n.revoke(true)
	}
}

// Path returns the file that serves a disk.
func (m *Mount) Path(name string) string {
	vm, disk, _ := names.Disk(name)
	return filepath.Join(m.dir, vm, disk+".img")
}

// Unmount unmounts, waiting up to 10 s for open files to close, then
// fences and detaches the mount lazily. It is idempotent.
func (m *Mount) Unmount() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return m.Shutdown(ctx, nil)
}

// Shutdown unmounts once no disk file is open. Until ctx ends it waits
// for the holders to close them, calling waiting (when not nil) with the
// holders each time they change. When ctx ends with files still open it
// fences the mount (open files answer EIO, so nothing more is
// acknowledged) and detaches it lazily, without waiting for the holders:
// the kernel drops the mount when they close it, or when this process
// exits. It is idempotent.
func (m *Mount) Shutdown(ctx context.Context, waiting func(holders []string)) error {
	var err error
	m.once.Do(func() { err = m.shutdown(ctx, waiting) })
	return err
}

func (m *Mount) shutdown(ctx context.Context, waiting func([]string)) error {
	last := ""
	for {
		if err := unix.Unmount(m.dir, 0); err == nil {
			m.server.Wait()
			return nil
		} else if !errors.Is(err, unix.EBUSY) {
			if err = m.server.Unmount(); err == nil { // fusermount, when not root
				return nil
			}
		}
		holders := m.Holders()
		if s := strings.Join(holders, ", "); s != last && waiting != nil && len(holders) > 0 {
			waiting(holders)
			last = s
		}
		// Wait for the next release (the kernel's umount refusal says
		// nothing about when to try again), or for ctx.
		select {
		case <-m.released():
		case <-ctx.Done():
			m.Fence()
			m.log.Warn("fuse: mount still held; files answer EIO from now on and the mount is detached lazily",
				"mount", m.dir, "held_by", strings.Join(m.Holders(), ", "))
			if err := unix.Unmount(m.dir, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("fuse: detaching %s: %w", m.dir, err)
			}
			m.abort()
			return nil
		}
	}
}

// released returns a channel closed at the next release of a disk file,
// or at once when no file is open (the kernel may still be finishing a
// release it sent: the umount is then tried again).
func (m *Mount) released() <-chan struct{} {
	m.relMu.Lock()
	defer m.relMu.Unlock()
	if m.relCh == nil {
		m.relCh = make(chan struct{})
	}
	ch := m.relCh
	if m.opens.Load() == 0 {
		// A retry soon: releases may be on their way, or a non-disk file
		// (a directory) may hold the mount.
		c := make(chan struct{})
		time.AfterFunc(50*time.Millisecond, func() { close(c) })
		return c
	}
	return ch
}

func (m *Mount) notifyRelease() {
	m.relMu.Lock()
	defer m.relMu.Unlock()
	if m.relCh != nil {
		close(m.relCh)
		m.relCh = nil
	}
}

// abort ends the kernel's FUSE connection through fusectl, when mounted,
// so that the server's loops end now and whatever still holds the
// detached mount gets errors; without fusectl that happens when this
// process exits.
func (m *Mount) abort() {
	if m.dev != 0 {
		path := fmt.Sprintf("/sys/fs/fuse/connections/%d/abort", m.dev)
		if err := os.WriteFile(path, []byte("1"), 0); err == nil {
			m.server.Wait()
		}
	}
}

// Holders names what holds the mount's disk files open, for an
// operator: "loop0 (vm1/disk0.img)", "qemu-system-x86 pid 42 (vm1/disk0.img)".
func (m *Mount) Holders() []string {
	m.mu.Lock()
	files := map[string]int{}
	for vmName, dir := range m.root.Children() {
		for fname, f := range dir.Children() {
			if n, ok := f.Operations().(*diskNode); ok {
				n.state.Lock()
				files[filepath.Join(m.dir, vmName, fname)] = n.opens
				n.state.Unlock()
			}
		}
	}
	m.mu.Unlock()
	return holders(files, func(path string) string { return " (" + strings.TrimPrefix(path, m.dir+"/") + ")" })
}

// HoldersOf names what holds one disk's file open: "loop0",
// "qemu-system-x86 pid 42".
func (m *Mount) HoldersOf(name string) []string {
	return holders(map[string]int{m.Path(name): m.OpenFiles(name)}, func(string) string { return "" })
}

// holders places the opens of files (path to open count): loop devices
// (from /sys/block/loop*/loop/backing_file) and processes (from
// /proc/*/fd), then a count of opens it cannot place (a process in
// another mount namespace, or a release under way).
func holders(files map[string]int, suffix func(path string) string) []string {
	total := 0
	for _, c := range files {
		total += c
	}
	if total == 0 {
		return nil
	}
	var out []string
	placed := 0
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, bf := range loops {
		b, err := os.ReadFile(bf)
		if err != nil {
			continue
		}
		if f := strings.TrimSpace(string(b)); files[f] > 0 {
			out = append(out, filepath.Base(filepath.Dir(filepath.Dir(bf)))+suffix(f))
			placed++
		}
	}
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		f, err := os.Readlink(fd)
		if err != nil || files[f] == 0 {
			continue
		}
		pid := strings.Split(fd, "/")[2]
		comm, _ := os.ReadFile("/proc/" + pid + "/comm")
		out = append(out, strings.TrimSpace(string(comm))+" pid "+pid+suffix(f))
		placed++
	}
	slices.Sort(out)
	out = slices.Compact(out)
	switch {
	case placed == 0:
		out = append(out, fmt.Sprintf("%d open files", total))
	case total > placed:
		out = append(out, fmt.Sprintf("%d more open files", total-placed))
	}
	return out
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
	m         *Mount

	state sync.Mutex
	opens int         // guarded by state
	gone  atomic.Bool // revoked: every call answers an error; set under state
	// io is held shared by every read, write, fsync and fallocate, so
	// that revoke can wait for those under way.
	io sync.RWMutex
}

// revoke makes the file answer EIO, unless it is open and force is
// false. It returns the open count and waits for I/O under way.
func (n *diskNode) revoke(force bool) (int, error) {
	n.state.Lock()
	open := n.opens
	if open > 0 && !force {
		n.state.Unlock()
		return open, ErrInUse
	}
	n.gone.Store(true)
	n.state.Unlock()
	n.io.Lock() // NB: the I/O under way ends; later I/O sees gone
	n.io.Unlock()
	return open, nil
}

// enter starts an I/O call; it reports false once the file is revoked.
func (n *diskNode) enter() bool {
	n.io.RLock()
	if n.gone.Load() {
		n.io.RUnlock()
		return false
	}
	return true
}

var (
	_ fs.NodeGetattrer = (*diskNode)(nil)
	_ fs.NodeSetattrer = (*diskNode)(nil)
	_ fs.NodeOpener    = (*diskNode)(nil)
	_ fs.NodeReleaser  = (*diskNode)(nil)
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
	n.state.Lock()
	defer n.state.Unlock()
	if n.gone.Load() {
		return nil, 0, syscall.ENOENT
	}
	n.opens++
	n.m.opens.Add(1)
	// NB: a handle, though every call is served by the node, so that the
	// bridge keeps the open and calls Release at its close.
	return &openFile{}, n.openFlags, 0
}

// openFile is one open of a disk file.
type openFile struct{ _ byte }

// Release counts the close of an open file (the kernel sends it once the
// last descriptor of an open is closed).
func (n *diskNode) Release(ctx context.Context, f fs.FileHandle) syscall.Errno {
	n.state.Lock()
	n.opens--
	n.state.Unlock()
	n.m.opens.Add(-1)
	n.m.notifyRelease()
	return 0
}

func (n *diskNode) errno(op string, off int64, length int, err error) syscall.Errno {
	if errors.Is(err, blockdev.ErrOutOfRange) {
		return syscall.EINVAL
	}
	if errors.Is(err, blockdev.ErrReadOnly) { // read-only or fenced
		n.log.Warn("fuse: write refused", "disk", n.name, "op", op, "err", err)
		return syscall.EROFS
	}
	n.log.Error("fuse: I/O failed", "disk", n.name, "op", op, "offset", off, "length", length, "err", err)
	return syscall.EIO
}

func (n *diskNode) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (gofuse.ReadResult, syscall.Errno) {
	if !n.enter() {
		return nil, syscall.EIO
	}
	defer n.io.RUnlock()
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
	if !n.enter() {
		return 0, syscall.EIO
	}
	defer n.io.RUnlock()
	if off+int64(len(data)) > n.dev.Size() {
		return 0, syscall.ENOSPC // a disk does not grow
	}
	if _, err := n.dev.WriteAt(data, off); err != nil {
		return 0, n.errno("write", off, len(data), err)
	}
	return uint32(len(data)), 0
}

func (n *diskNode) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if !n.enter() {
		return syscall.EIO
	}
	defer n.io.RUnlock()
	if err := n.dev.Sync(); err != nil {
		return n.errno("fsync", 0, 0, err)
	}
	return 0
}

func (n *diskNode) Allocate(ctx context.Context, f fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	if !n.enter() {
		return syscall.EIO
	}
	defer n.io.RUnlock()
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
