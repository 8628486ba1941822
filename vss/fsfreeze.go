package vss

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// FIFREEZE and FITHAW from linux/fs.h: _IOWR('X', 119, int) and
// _IOWR('X', 120, int). golang.org/x/sys/unix does not name them.
const (
	fiFreeze = 0xc0045877
	fiThaw   = 0xc0045878
)

// Why a freeze target is refused. A refused freeze fails the quiesce:
// the point is crash-consistent, with the reason, and nothing is frozen.
var (
	// ErrNotMountPoint: nothing is mounted at the path, so FIFREEZE would
	// freeze whatever file system holds the directory (the host's root,
	// when a VM's file system was not mounted there yet).
	ErrNotMountPoint = errors.New("vss: not a mount point")
	// ErrNeededFileSystem: the path is on the file system of vrep's state
	// directory, change logs or images, or the host's root. Freezing it
	// would stop vrep itself (the barrier's markers could not be written)
	// or the host.
	ErrNeededFileSystem = errors.New("vss: refusing to freeze a file system that vrep or the host needs")
)

// FSFreeze freezes a mounted file system (as fsfreeze -f does): dirty
// data is written and new writes block until thawed.
type FSFreeze struct {
	Path string // the mount point
	// Keep lists paths whose file systems are never frozen: vrep's state
	// directory, change logs and images, and /.
	Keep []string
}

// Name says which mount point.
func (f FSFreeze) Name() string { return "fsfreeze " + f.Path }

// fsIoctl runs FIFREEZE or FITHAW on an open file. Tests replace it to
// see what would have been frozen without freezing anything.
var fsIoctl = func(fd int, req uint) error { return unix.IoctlSetInt(fd, req, 0) }

// Freeze freezes the file system, once CheckFreezeTarget's checks pass on
// the very directory it opened: the mount may have changed since start-up,
// and what is checked is what is frozen. FIFREEZE cannot be interrupted;
// the watchdog in AppPoint thaws it if it returns after the deadline.
func (f FSFreeze) Freeze(ctx context.Context) error {
	d, err := os.Open(f.Path)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := checkTarget(d, f.Path, f.Keep); err != nil {
		return err
	}
	if err := fsIoctl(int(d.Fd()), fiFreeze); err != nil {
		return fmt.Errorf("%s: %w", f.Path, err)
	}
	return nil
}

// Thaw thaws the file system; thawing one that is not frozen is fine. It
// is not checked: a thaw must never be refused, and one after a refused
// freeze finds nothing frozen.
func (f FSFreeze) Thaw(ctx context.Context) error {
	d, err := os.Open(f.Path)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := fsIoctl(int(d.Fd()), fiThaw); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("%s: %w", f.Path, err)
	}
	return nil
}

// CheckFreezeTarget says whether path may be frozen: it must be a mount
// point, and its file system must not be that of any path in keep. The
// errors are ErrNotMountPoint, ErrNeededFileSystem, or why it could not
// tell (the path is missing, or the kernel is older than Linux 5.8).
func CheckFreezeTarget(path string, keep []string) error {
	d, err := os.Open(path)
	if err != nil {
		return err
	}
	defer d.Close()
	return checkTarget(d, path, keep)
}

// checkTarget checks the open directory d. Mounts are told apart by the
// kernel's mount ids (statx) looked up in /proc/self/mountinfo, not by
// comparing st_dev with the parent's: a bind mount of a directory of the
// same file system, or a btrfs subvolume (its own st_dev, the same
// superblock), would fool st_dev. mountinfo gives each mount the device
// of its superblock, which is what FIFREEZE freezes.
func checkTarget(d *os.File, path string, keep []string) error {
	mounts, err := readMountinfo()
	if err != nil {
		return err
	}
	m, root, err := statMount(mounts, int(d.Fd()), "", unix.AT_EMPTY_PATH)
	if err != nil {
		return fmt.Errorf("vss: %s: %w", path, err)
	}
	if !root {
		return fmt.Errorf("%w: %s (nothing is mounted there; freezing it would freeze the file system mounted at %s)", ErrNotMountPoint, path, m.point)
	}
	for _, k := range keep {
		km, err := statKept(mounts, k)
		if err != nil {
			return fmt.Errorf("vss: %s: %w", k, err)
		}
		if km.dev == m.dev {
			return fmt.Errorf("%w: %s is on the same file system as %s", ErrNeededFileSystem, path, k)
		}
	}
	return nil
}

// mount is one line of /proc/self/mountinfo.
type mount struct {
	dev   string // major:minor of the file system's superblock
	point string // where it is mounted
}

var errNoMountID = errors.New("the kernel does not give mount ids (statx needs Linux 5.8 or later)")

// statMount returns the mount that holds a file, and whether the file is
// the root of that mount.
func statMount(mounts map[uint64]mount, dirfd int, path string, flags int) (mount, bool, error) {
	var stx unix.Statx_t
	if err := unix.Statx(dirfd, path, flags, unix.STATX_MNT_ID, &stx); err != nil {
		return mount{}, false, err
	}
	if stx.Mask&unix.STATX_MNT_ID == 0 || stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return mount{}, false, errNoMountID
	}
	m, ok := mounts[stx.Mnt_id]
	if !ok {
		return mount{}, false, fmt.Errorf("mount id %d is not in /proc/self/mountinfo", stx.Mnt_id)
	}
	return m, stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
}

// statKept returns the mount that holds path, or would hold it: a path
// that does not exist yet is judged by its nearest existing parent.
func statKept(mounts map[uint64]mount, path string) (mount, error) {
	path, err := filepath.Abs(path)
	if err != nil {
		return mount{}, err
	}
	for {
		m, _, err := statMount(mounts, unix.AT_FDCWD, path, 0)
		if !errors.Is(err, unix.ENOENT) || path == "/" {
			return m, err
		}
		path = filepath.Dir(path)
	}
}

// readMountinfo reads this process's mounts by id.
func readMountinfo() (map[uint64]mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("vss: %w", err)
	}
	defer f.Close()
	mounts := map[uint64]mount{}
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		// (id, parent id, major:minor, root, mount point, ...).
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		id, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			continue
		}
		mounts[id] = mount{dev: fields[2], point: unescapeMountinfo(fields[4])}
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("vss: /proc/self/mountinfo: %w", err)
	}
	return mounts, nil
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space,
// \011, \012, \134).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
