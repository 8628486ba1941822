package tracked

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/statefile"
)

// The log-overflow path. When the log the consumer has not released grows
// past OverflowBytes, the disk leaves log mode: every region written since
// the last release is marked in a bitmap, the bitmap is persisted, the log
// is released (and merged away), and the disk reports that a resync is
// required. Writes go on, marking the bitmap. It never fails the VM's
// writes because the replica is away.

const dirtyMagic = "VREPDIRT"

func (v *Volume) regions() int64 {
	return (v.Size() + v.opts.RegionSize - 1) / v.opts.RegionSize
}

// markDirty marks the regions of [off, off+n). Called with mu held.
func (v *Volume) markDirty(off, n int64) {
	if n <= 0 {
		return
	}
	for r := off / v.opts.RegionSize; r <= (off+n-1)/v.opts.RegionSize; r++ {
		v.dirty[r/8] |= 1 << (r % 8)
	}
}

// startOverflowLocked switches to dirty tracking. Called with mu held;
// the merger finishes the switch (finishOverflow).
func (v *Volume) startOverflowLocked() {
	v.dirty = make([]byte, (v.regions()+7)/8)
}

// testHookFinishOverflow, if set, runs as the merger starts finishing an
// overflow (done false) and when it has (done true).
var testHookFinishOverflow func(done bool)

// finishOverflow marks what the unreleased log covers, persists the
// bitmap, then releases the log; the merger then merges it all (Merge).
// NB: it runs under overflowMu, as ClearResync does: a resync that
// completes meanwhile (the log overflowed while it ran) clears the
// bitmap and sets the released LSN; finishing the overflow after that
// marked a nil bitmap (a panic), released the whole log although the
// disk was back in log mode (records the replica never got merged away),
// or left a stale bitmap file behind.
func (v *Volume) finishOverflow() error {
	if h := testHookFinishOverflow; h != nil {
		h(false)
		defer h(true)
	}
	v.overflowMu.Lock()
	defer v.overflowMu.Unlock()
	v.mu.RLock()
	from := v.released + 1
	pending := v.dirty != nil && v.released != ^uint64(0)
	v.mu.RUnlock()
	if !pending {
		return nil // cleared by a resync meanwhile
	}
	type span struct{ off, n int64 }
	var spans []span
	err := v.log.Scan(from, func(r hrl.Record) error {
		if r.Type != hrl.TypeMarker {
			spans = append(spans, span{int64(r.Offset), int64(r.Span)})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("tracked: marking overflowed log: %w", err)
	}
	v.mu.Lock()
	for _, s := range spans {
		v.markDirty(s.off, s.n)
	}
	v.mu.Unlock()
	if err := v.writeDirty(); err != nil {
		return err
	}
	v.mu.Lock()
	v.released = ^uint64(0)
	v.mu.Unlock()
	return nil
}

// ResyncRequired reports whether the disk left log mode (log overflow)
// and must be resynchronised with its replica.
func (v *Volume) ResyncRequired() bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.dirty != nil
}

// DirtyRegions returns the regions (of RegionSize bytes) written since the
// log overflowed, in order; nil when no resync is required.
func (v *Volume) DirtyRegions() (regionSize int64, regions []int64) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	for r := int64(0); r < int64(len(v.dirty))*8 && r < v.regions(); r++ {
		if v.dirty[r/8]&(1<<(r%8)) != 0 {
			regions = append(regions, r)
		}
	}
	return v.opts.RegionSize, regions
}

// ClearResync returns the disk to log mode after a resync that brought the
// replica up to lsn.
func (v *Volume) ClearResync(lsn uint64) error {
	v.overflowMu.Lock()
	defer v.overflowMu.Unlock()
	// No bitmap published from a snapshot taken before the clear may
	// land after the removal (it would ask for a resync again).
	v.dirtyMu.Lock()
	defer v.dirtyMu.Unlock()
	v.mu.Lock()
	v.dirty = nil
	v.released = lsn
	v.mu.Unlock()
	err := v.fs.Remove(filepath.Join(v.dir, "dirty"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("tracked: %w", err)
	}
	v.recountUnreleased()
	return v.fs.SyncDir(v.dir)
}

func (v *Volume) writeDirty() error {
	// One publisher at a time: two would race on the temporary file, and
	// an older snapshot could land after a newer one. Under this lock the
	// snapshots go out in order, each a superset of the one before.
	v.dirtyMu.Lock()
	defer v.dirtyMu.Unlock()
	v.mu.RLock()
	if v.dirty == nil {
		v.mu.RUnlock()
		return nil
	}
	body := binary.LittleEndian.AppendUint64(make([]byte, 6, 14+len(v.dirty)), uint64(v.opts.RegionSize))
	body = append(body, v.dirty...)
	v.mu.RUnlock()
	if err := statefile.Write(v.fs, filepath.Join(v.dir, "dirty"), dirtyMagic, body); err != nil {
		return fmt.Errorf("tracked: writing dirty bitmap: %w", err)
	}
	return nil
}

func (v *Volume) readDirty() error {
	body, err := statefile.Read(v.fs, filepath.Join(v.dir, "dirty"), dirtyMagic, 14+int((v.regions()+7)/8))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if errors.Is(err, statefile.ErrBad) || err == nil && int64(binary.LittleEndian.Uint64(body[6:])) != v.opts.RegionSize {
		return fmt.Errorf("%w: bad dirty bitmap", ErrCorrupt)
	}
	if err != nil {
		return fmt.Errorf("tracked: %w", err)
	}
	v.dirty = body[14:]
	return nil
}
