package fuse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/blockdev/devtest"
)

// TestConformanceThroughKernel runs the device suite on a FUSE file,
// through the kernel, over a memory device.
func TestConformanceThroughKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
	devtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
		dir := t.TempDir()
		m, err := New(filepath.Join(dir, "mnt"), slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Unmount() })
		if err := m.Add("vm1/disk0", blockdev.NewMem(size)); err != nil {
			t.Fatal(err)
		}
		d, err := blockdev.OpenFile(m.Path("vm1/disk0"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	})
}

func TestAddRemoveWhileMounted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	m, err := New(filepath.Join(t.TempDir(), "mnt"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmount()
	if err := m.Add("vm1/disk0", blockdev.NewMem(1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := m.Add("vm1/disk0-test", blockdev.NewMem(2<<20)); err != nil {
		t.Fatal(err)
	}
	if err := m.Add("../x", blockdev.NewMem(1<<20)); err == nil {
		t.Fatal("a bad name was served")
	}
	st, err := os.Stat(m.Path("vm1/disk0-test"))
	if err != nil || st.Size() != 2<<20 {
		t.Fatalf("added disk: %v %v", st, err)
	}
	m.Remove("vm1/disk0-test")
	if _, err := os.Stat(m.Path("vm1/disk0-test")); err == nil {
		t.Fatal("removed disk still visible")
	}
	if _, err := os.Stat(m.Path("vm1/disk0")); err != nil {
		t.Fatalf("the other disk went too: %v", err)
	}
	// A second mount on a live mount point is refused.
	if _, err := New(m.dir, nil); err == nil {
		t.Fatal("mounted twice on one mount point")
	}
}

// TestDetachWhileOpen: a disk whose file is open is not detached without
// force, and its holder is named; with force the open file answers EIO.
func TestDetachWhileOpen(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
	m, err := New(filepath.Join(t.TempDir(), "mnt"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmount()
	if err := m.Add("vm1/disk0-test", blockdev.NewMem(1<<20)); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(m.Path("vm1/disk0-test"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n := m.OpenFiles("vm1/disk0-test"); n != 1 {
		t.Fatalf("OpenFiles = %d, want 1", n)
	}
	me := fmt.Sprintf("%s pid %d", filepath.Base(os.Args[0])[:min(15, len(filepath.Base(os.Args[0])))], os.Getpid())
	if held := strings.Join(m.Holders(), ", "); held != me+" (vm1/disk0-test.img)" {
		t.Fatalf("Holders = %q, want this process and the file", held)
	}
	if held := strings.Join(m.HoldersOf("vm1/disk0-test"), ", "); held != me {
		t.Fatalf("HoldersOf = %q, want %q", held, me)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if n, err := m.Detach(ctx, "vm1/disk0-test", false); !errors.Is(err, ErrInUse) || n != 1 {
		t.Fatalf("Detach while open = %d, %v; want 1, ErrInUse", n, err)
	}
	if _, err := f.WriteAt([]byte("still served"), 0); err != nil {
		t.Fatalf("a refused Detach changed something: %v", err)
	}
	if _, err := m.Detach(context.Background(), "vm1/disk0-test", true); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 4096), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read after a forced Detach: %v, want EIO", err)
	}
	if _, err := os.Stat(m.Path("vm1/disk0-test")); err == nil {
		t.Fatal("the forced Detach left the file visible")
	}

	// Once closed, the file is detached without force.
	if err := m.Add("vm1/disk1-test", blockdev.NewMem(1<<20)); err != nil {
		t.Fatal(err)
	}
	g, err := os.Open(m.Path("vm1/disk1-test"))
	if err != nil {
		t.Fatal(err)
	}
	g.Close()
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if n, err := m.Detach(ctx, "vm1/disk1-test", false); err != nil || n != 0 {
		t.Fatalf("Detach after the close = %d, %v", n, err)
	}
}

// fencedDev refuses writes as a fenced tracked volume does.
type fencedDev struct{ blockdev.Device }

func (fencedDev) WriteAt(p []byte, off int64) (int, error) {
	return 0, fmt.Errorf("fenced: %w", blockdev.ErrReadOnly)
}

// TestFencedFileIsReadOnly: a write to the file of a device that turned
// read-only (a superseded copy of a failed-over disk) fails with EROFS;
// reads go on.
func TestFencedFileIsReadOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	m, err := New(filepath.Join(t.TempDir(), "mnt"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmount()
	if err := m.Add("vm1/disk0", fencedDev{blockdev.NewMem(1 << 20)}); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(m.Path("vm1/disk0"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, 4096), 0); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write to a fenced file: %v, want EROFS", err)
	}
	if _, err := f.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatalf("read: %v", err)
	}
}
