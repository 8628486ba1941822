package blockdev_test

import (
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
