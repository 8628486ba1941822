package vss

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vrep-io/vrep/hrl"
)

// wouldFreeze replaces the FIFREEZE/FITHAW seam for the rest of the test:
// nothing is frozen or thawed; the paths are recorded. Every freeze in
// these tests goes through it except TestFSFreezeRealExt4's, which
// freezes only the ext4 the test made, so no test can freeze the host's
// root file system even if the checks are broken.
func wouldFreeze(t *testing.T) func() []string {
	var mu sync.Mutex
	var froze []string
	saved := fsIoctl
	fsIoctl = func(fd int, req uint) error {
		if req == fiFreeze {
			p, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
			mu.Lock()
			froze = append(froze, p)
			mu.Unlock()
		}
		return nil
	}
	t.Cleanup(func() { fsIoctl = saved })
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), froze...)
	}
}

// mountDirs makes a directory under /tmp with a tmpfs mounted at
// dir/tmpfs and a plain directory dir/plain beside it. Root only.
func mountDirs(t *testing.T) (dir, tmpfs, plain string) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	dir, err := os.MkdirTemp("/tmp", "vrep-freeze")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	tmpfs, plain = filepath.Join(dir, "tmp fs"), filepath.Join(dir, "plain")
	os.Mkdir(tmpfs, 0o755)
	os.Mkdir(plain, 0o755)
	sh(t, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", tmpfs)
	t.Cleanup(func() { exec.Command("umount", "-l", tmpfs).Run() })
	return dir, tmpfs, plain
}

func TestCheckFreezeTarget(t *testing.T) {
	dir, tmpfs, plain := mountDirs(t)
	state := filepath.Join(dir, "state")
	cases := []struct {
		path string
		keep []string
		want error
	}{
		// A mount point (with a space in its name, escaped in mountinfo)
		// whose file system holds nothing of vrep's.
		{tmpfs, []string{"/", state}, nil},
		// Nothing is mounted at plain: it is part of /tmp's file system.
		{plain, nil, ErrNotMountPoint},
		{"/", nil, nil},
		{"/", []string{"/"}, ErrNeededFileSystem},
		// The state directory is on the mount, even before it exists.
		{tmpfs, []string{filepath.Join(tmpfs, "state", "disks", "vm1", "disk0")}, ErrNeededFileSystem},
		{tmpfs, []string{state, filepath.Join(tmpfs, "vm1.img")}, ErrNeededFileSystem},
	}
	for _, c := range cases {
		err := CheckFreezeTarget(c.path, c.keep)
		if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
			t.Errorf("CheckFreezeTarget(%q, %q) = %v, want %v", c.path, c.keep, err, c.want)
		}
		if err != nil && !strings.Contains(err.Error(), c.path) {
			t.Errorf("%v does not name %s", err, c.path)
		}
	}
	if err := CheckFreezeTarget(filepath.Join(dir, "missing"), nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing path: %v", err)
	}

	// A bind mount of a directory of /tmp's own file system is a mount
	// point, but freezing it freezes /tmp's file system: refused when
	// that file system holds the state directory. (Comparing st_dev with
	// the parent's would call it no mount point at all.)
	bind := filepath.Join(dir, "bind")
	os.Mkdir(bind, 0o755)
	sh(t, "mount", "--bind", plain, bind)
	defer exec.Command("umount", bind).Run()
	if err := CheckFreezeTarget(bind, []string{state}); !errors.Is(err, ErrNeededFileSystem) {
		t.Errorf("a bind mount of the state's file system: %v", err)
	}
}

// TestFSFreezeRefuses: FSFreeze checks at every freeze. A plain directory,
// a mount that holds vrep's state, and a mount point unmounted since the
// last freeze are refused; the point is crash-consistent with the reason;
// nothing is frozen.
func TestFSFreezeRefuses(t *testing.T) {
	dir, tmpfs, plain := mountDirs(t)
	froze := wouldFreeze(t)
	ctx := context.Background()
	state := filepath.Join(dir, "state")
	for _, f := range []FSFreeze{
		{Path: plain, Keep: []string{"/", state}},
		{Path: tmpfs, Keep: []string{"/", filepath.Join(tmpfs, "state")}},
	} {
		if err := f.Freeze(ctx); err == nil {
			t.Errorf("%s with keep %q was not refused", f.Path, f.Keep)
		}
		f.Thaw(ctx)
	}
	g, _ := group(t)
	p, err := AppPoint(ctx, g, []Quiescer{FSFreeze{Path: plain, Keep: []string{state}}}, time.Minute, quiet())
	if err != nil || p.Kind != hrl.KindCrash || !strings.Contains(p.Reason, "not a mount point") || !strings.Contains(p.Reason, plain) {
		t.Fatalf("app point freezing a plain directory: %+v %v", p, err)
	}
	if got := froze(); len(got) != 0 {
		t.Fatalf("would have frozen %q", got)
	}

	// The same target passes while mounted, and is refused once unmounted.
	f := FSFreeze{Path: tmpfs, Keep: []string{"/", state}}
	if err := f.Freeze(ctx); err != nil {
		t.Fatal(err)
	}
	if got := froze(); len(got) != 1 || got[0] != tmpfs {
		t.Fatalf("froze %q, want %s", got, tmpfs)
	}
	sh(t, "umount", tmpfs)
	if err := f.Freeze(ctx); !errors.Is(err, ErrNotMountPoint) {
		t.Fatalf("freeze after the unmount: %v", err)
	}
	if got := froze(); len(got) != 1 {
		t.Fatalf("would have frozen %q after the unmount", got)
	}
}

// TestFSFreezeRealExt4 freezes, for real, an ext4 the test loop-mounts:
// a checked target still freezes and thaws.
func TestFSFreezeRealExt4(t *testing.T) {
	dir, _, _ := mountDirs(t)
	img, mnt := filepath.Join(dir, "ext4.img"), filepath.Join(dir, "ext4")
	os.WriteFile(img, nil, 0o600)
	os.Truncate(img, 16<<20)
	sh(t, "mkfs.ext4", "-q", "-F", img)
	os.Mkdir(mnt, 0o755)
	sh(t, "mount", "-o", "loop", img, mnt)
	defer exec.Command("umount", mnt).Run()
	g, _ := group(t)
	f := FSFreeze{Path: mnt, Keep: []string{"/", filepath.Join(dir, "state")}}
	p, err := AppPoint(context.Background(), g, []Quiescer{f}, time.Minute, quiet())
	if err != nil || p.Kind != hrl.KindApp {
		t.Fatalf("%+v %v", p, err)
	}
	// Thawed: it takes writes again.
	if err := os.WriteFile(filepath.Join(mnt, "after"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
}
