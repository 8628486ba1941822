package vss

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/blockdev/tracked"
	"github.com/vrep-io/vrep/fuse"
	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/waitfor"
	"github.com/vrep-io/vrep/snapshot"
)

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// TestAppPointOnExt4 takes an app-consistent point of a live ext4 that
// sits on a FUSE-served tracked disk (through a loop device) while a
// writer appends and fsyncs records. The point, rebuilt from the log at
// its marker, must pass fsck.ext4 -n and hold every record the writer had
// fsynced before the freeze.
func TestAppPointOnExt4(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tool := range []string{"mkfs.ext4", "losetup", "fsck.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing (make test installs it)", tool)
		}
	}
	dir, _ := os.MkdirTemp("/tmp", "vrep-vss")
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "disk.img")
	os.WriteFile(img, nil, 0o600)
	os.Truncate(img, 128<<20)
	base, err := blockdev.OpenFile(img)
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	v, err := tracked.Open(filepath.Join(dir, "state"), base, tracked.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	v.PauseMerge() // the base stays empty: the log holds the whole disk
	m, err := fuse.New(filepath.Join(dir, "fuse"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmount()
	m.Add("vm1/disk0", v)
	dev := strings.TrimSpace(sh(t, "losetup", "-f", "--show", "--direct-io=on", m.Path("vm1/disk0")))
	defer exec.Command("losetup", "-d", dev).Run()
	sh(t, "mkfs.ext4", "-q", dev)
	mnt := filepath.Join(dir, "ext4")
	os.Mkdir(mnt, 0o755)
	sh(t, "mount", dev, mnt)
	defer exec.Command("umount", mnt).Run()

	// The writer: append a record, fsync, count it as durable.
	var synced atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		f, err := os.OpenFile(filepath.Join(mnt, "journal.txt"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		for i := int64(1); !stop.Load(); i++ {
			if _, err := fmt.Fprintf(f, "record %08d\n", i); err != nil {
				t.Error(err)
				return
			}
			if err := f.Sync(); err != nil {
				t.Error(err)
				return
			}
			synced.Store(i)
		}
	}()
	// The writer has fsynced a few records before the freeze...
	waitfor.True(t, "the writer to fsync 10 records", func() bool { return synced.Load() >= 10 || t.Failed() })
	g, _ := snapshot.NewGroup("vm1", map[string]snapshot.Disk{"vm1/disk0": v})
	before := synced.Load()
	p, err := AppPoint(context.Background(), g, []Quiescer{FSFreeze{Path: mnt}}, waitfor.Patience, quiet())
	if err != nil || p.Kind != hrl.KindApp {
		t.Fatalf("app point: %+v %v", p, err)
	}
	// ...and a few more after the thaw, which the point must not hold.
	atPoint := synced.Load()
	waitfor.True(t, "the writer to go on after the thaw", func() bool { return synced.Load() >= atPoint+10 || t.Failed() })
	stop.Store(true)
	wg.Wait()
	end := synced.Load()

	// Rebuild the point: the (empty) base plus the log up to the marker.
	pimg := filepath.Join(dir, "point.img")
	os.WriteFile(pimg, nil, 0o600)
	os.Truncate(pimg, 128<<20)
	pd, _ := blockdev.OpenFile(pimg)
	err = v.Log().Scan(1, func(r hrl.Record) error {
		if r.LSN >= p.LSNs["vm1/disk0"] {
			return errDone
		}
		switch r.Type {
		case hrl.TypeWrite:
			_, err := pd.WriteAt(r.Payload, int64(r.Offset))
			return err
		case hrl.TypeTrim, hrl.TypeZero:
			return blockdev.WriteZeroes(pd, int64(r.Offset), int64(r.Span), true)
		}
		return nil
	})
	if err != nil && err != errDone {
		t.Fatal(err)
	}
	pd.Close()
	pdev := strings.TrimSpace(sh(t, "losetup", "-f", "--show", "-r", pimg))
	defer exec.Command("losetup", "-d", pdev).Run()
	sh(t, "fsck.ext4", "-n", "-f", pdev)
	pmnt := filepath.Join(dir, "point")
	os.Mkdir(pmnt, 0o755)
	sh(t, "mount", "-o", "ro,noload", pdev, pmnt)
	defer exec.Command("umount", pmnt).Run()
	data, err := os.ReadFile(filepath.Join(pmnt, "journal.txt"))
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	for i, l := range lines {
		if string(l) != fmt.Sprintf("record %08d", i+1) {
			t.Fatalf("line %d of the point is %q: not a clean prefix", i+1, l)
		}
	}
	n := int64(len(lines))
	if n < before {
		t.Fatalf("the point holds %d records; %d were fsynced before the freeze", n, before)
	}
	if n >= end {
		t.Fatalf("the point holds all %d records: it was not taken mid-workload", end)
	}
	t.Logf("fsynced before the freeze %d, in the point %d, at the end %d; hold %v", before, n, end, p.Hold)
}

type doneErr struct{}

func (doneErr) Error() string { return "done" }

var errDone error = doneErr{}
