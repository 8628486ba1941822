package blockdev_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/blockdev/devtest"
)

func TestMem(t *testing.T) {
	devtest.Run(t, func(t *testing.T, size int64) blockdev.Device { return blockdev.NewMem(size) })
}

func TestFile(t *testing.T) {
	devtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
		path := filepath.Join(t.TempDir(), "disk.img")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, size); err != nil {
			t.Fatal(err)
		}
		d, err := blockdev.OpenFile(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	})
}

// TestFileMapLayout: a sparse image maps as the holes and data written
// into it, and a trimmed range becomes a hole again.
func TestFileMapLayout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 8<<20); err != nil {
		t.Fatal(err)
	}
	d, err := blockdev.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = 1
	}
	d.WriteAt(buf, 1<<20)
	d.WriteAt(buf, 4<<20)
	if err := d.Trim(4<<20, 512<<10); err != nil {
		t.Fatal(err)
	}
	got, err := d.Map(0, 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	// The trimmed range joins the hole before it.
	want := []blockdev.Extent{
		{Length: 1 << 20, Hole: true, Zero: true}, {Length: 1 << 20},
		{Length: 2<<20 + 512<<10, Hole: true, Zero: true}, {Length: 512 << 10}, {Length: 3 << 20, Hole: true, Zero: true},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Map = %v, want %v", got, want)
	}
}

func TestAllZero(t *testing.T) {
	b := make([]byte, 200<<10)
	if !blockdev.AllZero(b) || !blockdev.AllZero(nil) {
		t.Fatal("zeros not seen as zeros")
	}
	for _, i := range []int{0, 1, 64<<10 - 1, 64 << 10, len(b) - 1} {
		b[i] = 1
		if blockdev.AllZero(b) {
			t.Fatalf("byte %d set, AllZero says zeros", i)
		}
		b[i] = 0
	}
}
