package store

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/internal/vfs"
)

// Promotion: what a failover commit needs of the store. The replica
// image is brought back to a point (RollBack), an overlay's writes are
// folded into it (Fold), and the disk's points and history go
// (DropHistory). Each step is idempotent, so a crash at any moment is
// finished by doing the step again.

// Hold stops retention from pruning disk until release is called: a
// failed-over disk keeps every point, so that a cancel brings back
// exactly what was there before. Holds nest.
func (c *Catalog) Hold(disk string) (release func()) {
	c.pruneMu.Lock()
	if c.held == nil {
		c.held = map[string]int{}
	}
	c.held[disk]++
	c.pruneMu.Unlock()
	done := false
	return func() {
		c.pruneMu.Lock()
		defer c.pruneMu.Unlock()
		if done {
			return
		}
		done = true
		if c.held[disk]--; c.held[disk] <= 0 {
			delete(c.held, disk)
		}
	}
}

// RollBack writes into disk's replica image, for every block the history
// after the point at lsn changed, the block as it was at the point, then
// fsyncs the image: the image becomes the disk at the point. Nothing may
// apply to the disk meanwhile, and views of later points read wrong
// blocks afterwards; views at the point or older are unaffected (they
// read those blocks from history). It returns the bytes written.
func (c *Catalog) RollBack(disk string, lsn uint64) (int64, error) {
	v, err := c.OpenView(disk, lsn)
	if err != nil {
		return 0, err
	}
	defer v.Close()
	img, err := c.fs.Open(filepath.Join(c.dir(disk), "image"))
	if err != nil {
		return 0, fmt.Errorf("replica: %w", err)
	}
	defer img.Close()
	v.sh.mu.RLock()
	var runs [][2]int64
	for li, l := range v.blocks.leaves {
		if l == nil {
			continue
		}
		for i := range l {
			if l[i].ref == nil {
				continue
			}
			b := int64(li)<<10 | int64(i)
			if n := len(runs); n > 0 && runs[n-1][0]+runs[n-1][1] == b && runs[n-1][1] < 256 {
				runs[n-1][1]++
			} else {
				runs = append(runs, [2]int64{b, 1})
			}
		}
	}
	v.sh.mu.RUnlock()
	buf := make([]byte, 256*UndoBlock)
	var total int64
	for _, r := range runs {
		off := r[0] * UndoBlock
		n := min(r[1]*UndoBlock, v.size-off)
		if _, err := v.ReadAt(buf[:n], off); err != nil {
			return total, err
		}
		if _, err := img.WriteAt(buf[:n], off); err != nil {
			return total, fmt.Errorf("replica: rolling back the image of %s: %w", disk, err)
		}
		total += n
	}
	if err := img.Sync(); err != nil {
		return total, fmt.Errorf("replica: %w", err)
	}
	return total, nil
}

// Fold writes the overlay's written blocks into disk's replica image and
// fsyncs it. The overlay must not change meanwhile. It returns the bytes
// written.
func (c *Catalog) Fold(disk string, o *Overlay) (int64, error) {
	img, err := c.fs.Open(filepath.Join(c.dir(disk), "image"))
	if err != nil {
		return 0, fmt.Errorf("replica: %w", err)
	}
	defer img.Close()
	buf := make([]byte, 1<<20)
	var total int64
	err = o.Written(func(off, n int64) error {
		for n > 0 {
			c := min(n, int64(len(buf)))
			if _, err := o.ReadAt(buf[:c], off); err != nil {
				return err
			}
			if _, err := img.WriteAt(buf[:c], off); err != nil {
				return fmt.Errorf("replica: folding into the image of %s: %w", disk, err)
			}
			off, n, total = off+c, n-c, total+c
		}
		return nil
	})
	if err != nil {
		return total, err
	}
	if err := img.Sync(); err != nil {
		return total, fmt.Errorf("replica: %w", err)
	}
	return total, nil
}

// DropHistory deletes every point and undo entry of disk from the index,
// then its undo segments: after a commit the image changes under new
// writes, and no older point could be read back.
func (c *Catalog) DropHistory(disk string) error {
	c.pruneMu.Lock()
	defer c.pruneMu.Unlock()
	for _, kind := range []byte{'m', 'u', 'r', 'b'} { // points, undo, resync history and bases
		for {
			keys, err := c.keys(kind, disk, 10000)
			if err != nil {
				return err
			}
			if len(keys) == 0 {
				break
			}
			wb := c.db.NewWriteBatch()
			for _, k := range keys {
				if err := wb.Delete(k); err != nil {
					wb.Cancel()
					return err
				}
			}
			if err := wb.Flush(); err != nil {
				return fmt.Errorf("replica: dropping the history of %s: %w", disk, err)
			}
		}
	}
	dir := filepath.Join(c.dir(disk), "undo")
	segs, err := listSegments(c.fs, dir)
	if err != nil {
		return err
	}
	for _, s := range segs {
		if err := c.fs.Remove(segName(dir, s)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("replica: %w", err)
		}
	}
	if len(segs) > 0 {
		if err := c.fs.SyncDir(dir); err != nil {
			return fmt.Errorf("replica: %w", err)
		}
	}
	s := c.shared(disk)
	s.mu.Lock()
	s.maxUndo = 0
	s.mu.Unlock()
	return nil
}

// ImagePath returns the path of disk's replica image.
func (c *Catalog) ImagePath(disk string) string { return filepath.Join(c.dir(disk), "image") }

// OpenImage opens disk's replica image as a device, for serving it once
// it is the VM's disk for good (after a commit).
func (c *Catalog) OpenImage(disk string) (*ImageDevice, error) {
	st, err := c.state(disk)
	if err != nil {
		return nil, err
	}
	f, err := c.fs.Open(c.ImagePath(disk))
	if err != nil {
		return nil, fmt.Errorf("replica: %w", err)
	}
	return &ImageDevice{f: f, size: st.size}, nil
}

// ImageDevice is a replica image as a read-write device. Safe for
// concurrent use.
type ImageDevice struct {
	f    vfs.File
	size int64
}

var _ blockdev.Device = (*ImageDevice)(nil)

// Size returns the disk size.
func (d *ImageDevice) Size() int64 { return d.size }

// ReadAt reads the image; past its end (a sparse tail) reads zeros.
func (d *ImageDevice) ReadAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(d.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	n, err := d.f.ReadAt(p, off)
	if n < len(p) && err != nil {
		if !errors.Is(err, io.EOF) {
			return n, err
		}
		clear(p[n:])
	}
	return len(p), nil
}

// WriteAt writes the image.
func (d *ImageDevice) WriteAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(d.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	return d.f.WriteAt(p, off)
}

// Sync fsyncs the image.
func (d *ImageDevice) Sync() error { return d.f.Sync() }

// Close closes the image.
func (d *ImageDevice) Close() error { return d.f.Close() }
