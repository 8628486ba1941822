package tracked

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/blockdev/devtest"
	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/vfs"
	"github.com/vrep-io/vrep/internal/waitfor"
)

func TestConformance(t *testing.T) {
	t.Run("merging", func(t *testing.T) {
		devtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
			v, err := Open("/vol", blockdev.NewMem(size), Options{FS: vfs.NewMem(1), SegmentSize: 256 << 10,
				MergeAfter: 512 << 10, MaxExtents: 300, MergeIdle: time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { v.Close() })
			return v
		})
	})
	t.Run("merge paused", func(t *testing.T) {
		devtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
			v, err := Open("/vol", blockdev.NewMem(size), Options{FS: vfs.NewMem(1), SegmentSize: 256 << 10})
			if err != nil {
				t.Fatal(err)
			}
			v.PauseMerge()
			t.Cleanup(func() { v.Close() })
			return v
		})
	})
	t.Run("on files", func(t *testing.T) {
		devtest.Run(t, func(t *testing.T, size int64) blockdev.Device {
			dir := t.TempDir()
			path := filepath.Join(dir, "disk.img")
			os.WriteFile(path, nil, 0o600)
			os.Truncate(path, size)
			base, err := blockdev.OpenFile(path)
			if err != nil {
				t.Fatal(err)
			}
			v, err := Open(filepath.Join(dir, "state"), base, Options{MergeAfter: 1 << 20, MergeIdle: 5 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { v.Close(); base.Close() })
			return v
		})
	})
}

// memBase is a base image on a vfs file, so a power cut reaches it too.
type memBase struct {
	f    vfs.File
	size int64
}

func (d *memBase) Size() int64 { return d.size }
func (d *memBase) Sync() error { return d.f.Sync() }
func (d *memBase) ReadAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(d.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	n, err := d.f.ReadAt(p, off)
	if errors.Is(err, io.EOF) {
		clear(p[n:]) // a file shortened by a cut reads as zeros
		return len(p), nil
	}
	return n, err
}
func (d *memBase) WriteAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(d.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	return d.f.WriteAt(p, off)
}

func openBase(t *testing.T, fs vfs.FS, size int64) *memBase {
	f, err := fs.Open("/base.img")
	if err != nil {
		t.Fatal(err)
	}
	return &memBase{f: f, size: size}
}

type op struct {
	kind   int // 0 write, 1 trim, 2 zero, 3 flush
	off, n int64
	seed   uint64
}

func (o op) apply(img []byte) {
	switch o.kind {
	case 0:
		copy(img[o.off:], payload(o.seed, o.n))
	case 1, 2:
		clear(img[o.off : o.off+o.n])
	}
}

func payload(seed uint64, n int64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 11))
	for i := 0; i < len(b); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < len(b); j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// TestPowerCut runs random writes, trims, zeroes, flushes and background
// merges, cuts the power at a random I/O, reopens, and checks that the disk
// is the state after a prefix of the operations that holds everything
// acknowledged before the last completed flush.
func TestPowerCut(t *testing.T) {
	seeds := 150
	if testing.Short() {
		seeds = 30
	}
	if s := os.Getenv("VREP_POWERCUT_SEEDS"); s != "" {
		seeds, _ = strconv.Atoi(s)
	}
	for seed := range seeds {
		powerCut(t, uint64(seed))
	}
}

func powerCut(t *testing.T, seed uint64) {
	const size = 2 << 20
	r := rand.New(rand.NewPCG(seed, 5))
	fs := vfs.NewMem(seed)
	fs.MkdirAll("/")
	f, _ := fs.Create("/base.img")
	f.Truncate(size)
	f.Sync()
	fs.SyncDir("/")
	opts := Options{FS: fs, SegmentSize: 64 << 10, MergeAfter: int64(32<<10 + r.IntN(256<<10)),
		MaxExtents: 50 + r.IntN(200), MergeIdle: -1}
	if seed%2 == 1 {
		// Every small sync makes the log flush-bound: spare segment files
		// are filled, taken and dropped between the cuts.
		opts.LogFlushBound = 1
	}
	v, err := Open("/vol", openBase(t, fs, size), opts)
	if err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	var ops []op
	durable := 0 // ops[:durable] were flushed
	fs.CutAfter(20 + r.IntN(400))
	model := make([]byte, size)
	for i := 0; i < 300; i++ {
		o := op{kind: r.IntN(10), seed: seed<<20 | uint64(i)}
		switch {
		case o.kind >= 4:
			o.kind = 0
		}
		o.n = int64(1 + r.IntN(20000))
		if r.IntN(2) == 0 {
			o.n = int64(512 * (1 + r.IntN(24)))
		}
		o.off = r.Int64N(size - o.n)
		var err error
		switch o.kind {
		case 0:
			_, err = v.WriteAt(payload(o.seed, o.n), o.off)
		case 1:
			err = v.Trim(o.off, o.n)
		case 2:
			err = v.WriteZeroes(o.off, o.n, true)
		case 3:
			if r.IntN(3) == 0 {
				err = v.Merge()
			} else {
				err = v.Sync()
			}
		}
		ops = append(ops, o)
		if err != nil {
			break // the power is off
		}
		o.apply(model)
		if o.kind == 3 {
			durable = len(ops)
		}
		if r.IntN(8) == 0 { // reads see every acknowledged write
			got := make([]byte, 4096)
			at := r.Int64N(size - 4096)
			if _, err := v.ReadAt(got, at); err != nil {
				break
			}
			if !bytes.Equal(got, model[at:at+4096]) {
				t.Fatalf("seed %d op %d: read at %d differs from acknowledged writes", seed, i, at)
			}
		}
	}
	fs.Cut()
	v.Close()
	fs.Revive()
	v, err = Open("/vol", openBase(t, fs, size), opts)
	if err != nil {
		t.Fatalf("seed %d: reopen after the cut: %v", seed, err)
	}
	defer v.Close()
	img := make([]byte, size)
	if _, err := v.ReadAt(img, 0); err != nil {
		t.Fatal(err)
	}
	state := make([]byte, size)
	for k := 0; k <= len(ops); k++ {
		if k >= durable && bytes.Equal(img, state) {
			// Reopen once more: replay is idempotent.
			v.Close()
			v2, err := Open("/vol", openBase(t, fs, size), opts)
			if err != nil {
				t.Fatalf("seed %d: second reopen: %v", seed, err)
			}
			again := make([]byte, size)
			v2.ReadAt(again, 0)
			v2.Close()
			if !bytes.Equal(again, img) {
				t.Fatalf("seed %d: a second recovery changed the disk", seed)
			}
			return
		}
		if k < len(ops) {
			ops[k].apply(state)
		}
	}
	t.Fatalf("seed %d: after the cut the disk is no prefix of the operations that keeps the %d flushed ones (of %d)", seed, durable, len(ops))
}

func TestLogErrorFailsWrites(t *testing.T) {
	fs := vfs.NewMem(9)
	v, err := Open("/vol", blockdev.NewMem(1<<20), Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	fs.Inject = func(op, name string) error {
		if op == "write" {
			return errors.New("injected EIO")
		}
		return nil
	}
	if _, err := v.WriteAt(make([]byte, 4096), 0); err == nil {
		t.Fatal("a write whose log append failed was acknowledged")
	}
	if _, err := v.ReadAt(make([]byte, 4096), 0); err == nil {
		t.Fatal("a read was served from a failed log")
	}
}

func TestCorruptLogRefusesToServe(t *testing.T) {
	fs := vfs.NewMem(10)
	base := blockdev.NewMem(1 << 20)
	v, _ := Open("/vol", base, Options{FS: fs, SegmentSize: 8192, MergeIdle: -1})
	v.PauseMerge()
	for i := range 8 {
		v.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 4096), int64(i)*4096)
	}
	v.Sync()
	// Recovery tells damage from a torn tail only by a durable sync record
	// after it. Sync returns once its fsync is done and writes its sync
	// record later, in the background; only the next Sync makes that
	// record durable, so one more flushed write is needed here.
	v.WriteAt(bytes.Repeat([]byte{9}, 4096), 8*4096)
	if err := v.Sync(); err != nil {
		t.Fatal(err)
	}
	// A power cut: the base was never merged, and the volume's goroutines
	// can no longer write to the log behind the damage and the reopen.
	fs.Cut()
	v.Close()
	fs.Revive()
	segs, _ := fs.List("/vol/log")
	name := "/vol/log/" + segs[0]
	b, _ := vfs.ReadFile(fs, name)
	b[100] ^= 1
	w, _ := fs.Create(name)
	w.WriteAt(b, 0)
	w.Sync()
	before := make([]byte, 1<<20)
	base.ReadAt(before, 0)
	_, err := Open("/vol", base, Options{FS: fs, SegmentSize: 8192})
	if !IsCorruption(err) {
		t.Fatalf("Open = %v, want corruption", err)
	}
	after := make([]byte, 1<<20)
	base.ReadAt(after, 0)
	if !bytes.Equal(before, after) {
		t.Fatal("a corrupt log was replayed into the base")
	}
}

// openOverflowing opens a replicated volume of size bytes on fs whose log
// overflows past 1 MiB unreleased, in 128 KiB segments.
func openOverflowing(t *testing.T, fs vfs.FS, size int64, mergeIdle time.Duration) *Volume {
	t.Helper()
	v, err := Open("/vol", blockdev.NewMem(size), Options{FS: fs, Retain: true, OverflowBytes: 1 << 20,
		SegmentSize: 128 << 10, MergeIdle: mergeIdle})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// writeRegions writes n 64 KiB payloads, the i-th at the start of 1 MiB
// region i%10.
func writeRegions(t *testing.T, v *Volume, n int) {
	t.Helper()
	for i := range n {
		if _, err := v.WriteAt(payload(uint64(i), 64<<10), int64(i%10)<<20); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOverflowSwitchesToBitmap(t *testing.T) {
	fs := vfs.NewMem(11)
	const size = 16 << 20
	v := openOverflowing(t, fs, size, time.Millisecond)
	defer v.Close()
	// 40 writes of 64 KiB in regions 0..9, plus one in region 15.
	writeRegions(t, v, 40)
	v.WriteAt(payload(99, 4096), 15<<20)
	waitfor.True(t, "the merger to release the overflowed log", func() bool {
		v.mu.RLock()
		defer v.mu.RUnlock()
		return v.released == ^uint64(0)
	})
	if !v.ResyncRequired() {
		t.Fatal("log past its bound, but no resync required")
	}
	_, regions := v.DirtyRegions()
	if fmt.Sprint(regions) != "[0 1 2 3 4 5 6 7 8 9 15]" {
		t.Fatalf("dirty regions %v", regions)
	}
	v.Sync()
	// The log is released and merged away: only the active segment stays.
	v.Merge()
	if n := len(v.Log().Segments()); n > 2 {
		t.Fatalf("%d segments kept after overflow", n)
	}
	// Writes keep working; the bitmap survives a restart.
	if _, err := v.WriteAt(payload(1, 4096), 12<<20); err != nil {
		t.Fatal(err)
	}
	v.Close()
	v, err := Open("/vol", blockdev.NewMem(size), Options{FS: fs, Retain: true, OverflowBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	_, regions = v.DirtyRegions()
	if fmt.Sprint(regions) != "[0 1 2 3 4 5 6 7 8 9 12 15]" {
		t.Fatalf("dirty regions after restart %v", regions)
	}
	if err := v.ClearResync(v.Log().LastLSN()); err != nil || v.ResyncRequired() {
		t.Fatalf("ClearResync: %v", err)
	}
}

// TestMemoryStaysBounded: under a sustained random-write load the index
// never holds more than twice its extent bound, because writers wait for
// the merge.
func TestMemoryStaysBounded(t *testing.T) {
	// A slow base: the merge falls behind the writers, as a busy disk would.
	v, err := Open("/vol", slowBase{blockdev.NewMem(64 << 20)}, Options{FS: vfs.NewMem(12), MaxExtents: 200, MergeIdle: -1, SegmentSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var wg sync.WaitGroup
	var peak atomic.Int64
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 2))
			p := make([]byte, 4096)
			for range 400 {
				if _, err := v.WriteAt(p, r.Int64N(16384)*4096); err != nil {
					t.Error(err)
					return
				}
				v.mu.RLock()
				n := int64(v.active.extents)
				if v.frozen != nil {
					n += int64(v.frozen.extents)
				}
				v.mu.RUnlock()
				for old := peak.Load(); n > old && !peak.CompareAndSwap(old, n); old = peak.Load() {
				}
			}
		}()
	}
	wg.Wait()
	// Active may reach 2x while a frozen index of up to 2x is merged.
	if p := peak.Load(); p > 4*200+16 {
		t.Fatalf("index peaked at %d extents with a bound of 200", p)
	}
	v.mu.RLock()
	applied := v.applied
	v.mu.RUnlock()
	if applied == 0 {
		t.Fatal("no merge ran")
	}
	t.Logf("peak %d extents (bound 200)", peak.Load())
}

type slowBase struct{ blockdev.Device }

func (d slowBase) WriteAt(p []byte, off int64) (int, error) {
	time.Sleep(50 * time.Microsecond)
	return d.Device.WriteAt(p, off)
}

// TestRetainKeepsSegmentsUntilReleased: a replicated disk keeps merged
// segments until the consumer releases them, then drops them.
func TestRetainKeepsSegmentsUntilReleased(t *testing.T) {
	fs := vfs.NewMem(13)
	v, err := Open("/vol", blockdev.NewMem(8<<20), Options{FS: fs, Retain: true, SegmentSize: 64 << 10, MergeIdle: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for i := range 64 {
		v.WriteAt(payload(uint64(i), 4096), int64(i)*4096)
	}
	sealed, err := v.Log().Seal()
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Merge(); err != nil {
		t.Fatal(err)
	}
	if v.Checkpoint() < sealed {
		t.Fatalf("checkpoint %d, want at least %d", v.Checkpoint(), sealed)
	}
	n := len(v.Log().Segments())
	if n < 4 {
		t.Fatalf("merged segments were dropped before release: %d left", n)
	}
	// The consumer can still read everything from the first LSN.
	count := 0
	v.Log().Scan(1, func(hrl.Record) error { count++; return nil })
	if count != 64 {
		t.Fatalf("scanned %d records, want 64", count)
	}
	if err := v.Release(sealed / 2); err != nil {
		t.Fatal(err)
	}
	half := len(v.Log().Segments())
	if half >= n || half <= 1 {
		t.Fatalf("release of half the log left %d of %d segments", half, n)
	}
	if err := v.Release(sealed); err != nil {
		t.Fatal(err)
	}
	if got := len(v.Log().Segments()); got != 1 {
		t.Fatalf("%d segments after releasing everything sealed, want only the active one", got)
	}
}

// TestNoOverflowWhileKeepingUp: a consumer that releases all but the
// newest record never trips the overflow bound, however large the one
// active segment grows.
func TestNoOverflowWhileKeepingUp(t *testing.T) {
	fs := vfs.NewMem(17)
	v, err := Open("/vol", blockdev.NewMem(16<<20), Options{FS: fs, Retain: true, OverflowBytes: 1 << 20,
		SegmentSize: 64 << 20, MergeIdle: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for i := range 1000 { // 4 MiB into one segment, four times the bound
		if _, err := v.WriteAt(payload(uint64(i), 4096), int64(i%4096)*4096); err != nil {
			t.Fatal(err)
		}
		if err := v.Release(v.Log().LastLSN() - 1); err != nil {
			t.Fatal(err)
		}
	}
	if v.ResyncRequired() {
		t.Fatal("overflow reported for a consumer one record behind")
	}
}

// TestLazyCheckpoint: background merges write the base without a
// checkpoint until twice MergeAfter is merged; segments stay until the
// checkpoint covers them; reads and PauseMerge see what merges wrote; a
// power cut before the checkpoint replays from the older one to the same
// disk.
func TestLazyCheckpoint(t *testing.T) {
	fs := vfs.NewMem(21)
	fs.MkdirAll("/")
	const size = 4 << 20
	f, _ := fs.Create("/base.img")
	f.Truncate(size)
	f.Sync()
	fs.SyncDir("/")
	opts := Options{FS: fs, SegmentSize: 32 << 10, MergeAfter: 256 << 10, MergeIdle: -1}
	v, err := Open("/vol", openBase(t, fs, size), opts)
	if err != nil {
		t.Fatal(err)
	}
	model := make([]byte, size)
	write := func(i int) {
		t.Helper()
		p := payload(uint64(i), 4096)
		off := int64(i*7919%1024) * 4096
		if _, err := v.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(model[off:], p)
	}
	applied := func() uint64 { return appliedLSN(v) }
	// Past MergeAfter but short of twice it: a merge runs, no checkpoint.
	i := 0
	for ; i < 80; i++ {
		write(i)
	}
	if err := v.Sync(); err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, "a background merge past MergeAfter", func() bool { return applied() != 0 })
	if v.Checkpoint() != 0 {
		t.Fatalf("checkpoint %d after %d KiB merged: want none before twice MergeAfter", v.Checkpoint(), 80*4)
	}
	if got := v.PauseMerge(); got != applied() {
		t.Errorf("PauseMerge = %d, want the LSN the base holds as read, %d", got, applied())
	}
	v.ResumeMerge()
	if first := v.Log().Segments()[0].First; first != 1 {
		t.Fatalf("log starts at %d before any checkpoint: merged segments went too early", first)
	}
	got := make([]byte, size)
	if _, err := v.ReadAt(got, 0); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("reads after an unchecked merge differ from the writes (%v)", err)
	}
	// A power cut now: the base may hold parts of the merge; replay from
	// checkpoint 0 gives the same disk.
	fs.Cut()
	v.Close()
	fs.Revive()
	v, err = Open("/vol", openBase(t, fs, size), opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.ReadAt(got, 0); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("after a cut before the checkpoint the disk differs from the flushed writes (%v)", err)
	}
	// Past twice MergeAfter merged: the checkpoint follows and the log
	// lets its merged segments go.
	for ; i < 300; i++ {
		write(i)
	}
	// The checkpoint is published before its segments are dropped: wait
	// for both.
	dropped := func() bool { return v.Log().Segments()[0].First != 1 }
	waitfor.True(t, "a checkpoint after twice MergeAfter was merged", func() bool { return v.Checkpoint() != 0 })
	waitfor.True(t, "the checkpoint to let a merged segment go", dropped)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestIdleMergeWaitsForReads: a merge on idle waits until neither writes
// nor reads come; a read workload after a burst of writes is not made to
// share the machine with the burst's merge.
func TestIdleMergeWaitsForReads(t *testing.T) {
	const idle = 200 * time.Millisecond
	// Reads come every idle/20. On a busy machine one may still come
	// later than idle after the one before, and then a merge may rightly
	// run: such an attempt proves nothing, and another is made.
	deadline := time.Now().Add(waitfor.Patience)
	for attempt := 1; ; attempt++ {
		if time.Now().After(deadline) {
			t.Fatalf("in %d attempts over %v, reads never kept within %v of each other for %v", attempt-1, waitfor.Patience, idle/2, 5*idle)
		}
		if idleMergeAttempt(t, idle) {
			return
		}
	}
}

// idleMergeAttempt writes a burst, reads for 5 idle periods and checks
// that no merge ran, then that one runs once the reads stop. It returns
// false, having checked nothing, if a gap between two I/Os of its own
// reached idle/2.
func idleMergeAttempt(t *testing.T, idle time.Duration) bool {
	v, err := Open("/vol", blockdev.NewMem(1<<20), Options{FS: vfs.NewMem(3), MergeIdle: idle})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	applied := func() uint64 { return appliedLSN(v) }
	var last time.Time // when the last I/O began: it stamped the volume no earlier
	for i := range 16 {
		last = time.Now()
		if _, err := v.WriteAt(payload(uint64(i), 4096), int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	var gap time.Duration // the longest the volume can have been idle
	buf := make([]byte, 4096)
	for end := time.Now().Add(5 * idle); time.Now().Before(end); time.Sleep(idle / 20) {
		began := time.Now()
		if _, err := v.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
		gap = max(gap, time.Since(last))
		last = began
	}
	got := applied()
	if gap = max(gap, time.Since(last)); gap >= idle/2 {
		t.Logf("the volume may have been idle for %v (merge idle %v): trying again", gap, idle)
		return false
	}
	if got != 0 {
		t.Fatalf("merged through LSN %d while reads kept coming (gaps under %v)", got, gap)
	}
	waitfor.True(t, "a merge once reads stopped", func() bool { return applied() != 0 })
	if got := applied(); got != 16 {
		t.Fatalf("merged through %d once reads stopped, want 16", got)
	}
	return true
}

// appliedLSN is the LSN the base holds (merged, maybe not yet durable).
func appliedLSN(v *Volume) uint64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.applied
}

// TestConcurrentClose: Close is idempotent even when called from several
// goroutines at once; every call returns once the volume is closed, with
// the first call's result.
func TestConcurrentClose(t *testing.T) {
	for range 20 {
		v, err := Open("/vol", blockdev.NewMem(1<<20), Options{FS: vfs.NewMem(12)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.WriteAt(payload(1, 4096), 0); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make([]error, 4)
		for i := range errs {
			wg.Go(func() {
				<-start
				errs[i] = v.Close()
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("Close %d: %v", i, err)
			}
		}
		if _, err := v.WriteAt(payload(2, 4096), 0); !errors.Is(err, ErrClosed) {
			t.Fatalf("write after Close = %v, want ErrClosed", err)
		}
	}
}

// failOnce returns an Inject function that fails the first call of op on
// a file whose name matches, and counts the failures.
func failOnce(op string, match func(name string) bool, failed *atomic.Int32) func(string, string) error {
	return func(o, name string) error {
		if o == op && match(name) && failed.CompareAndSwap(0, 1) {
			return fmt.Errorf("injected EIO on %s %s", o, name)
		}
		return nil
	}
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestTransientMergeErrorClears: failed writes to the base during
// background merges are reported (Err, the disk's health), and once a later
// merge succeeds the volume reports healthy again, with every write in
// the base.
func TestTransientMergeErrorClears(t *testing.T) {
	fs := vfs.NewMem(13)
	fs.MkdirAll("/")
	const size = 1 << 20
	f, _ := fs.Create("/base.img")
	f.Truncate(size)
	f.Sync()
	base := openBase(t, fs, size)
	v, err := Open("/vol", base, Options{FS: fs, SegmentSize: 32 << 10, MergeIdle: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	// The base fails writes until the test has seen the error reported:
	// merges retry meanwhile, and a busy machine must not let one succeed
	// before the test looks.
	var failing atomic.Bool
	failing.Store(true)
	fs.Inject = func(op, name string) error {
		if op == "write" && name == "/base.img" && failing.Load() {
			return errors.New("injected EIO")
		}
		return nil
	}
	model := make([]byte, size)
	for i := range 16 {
		p := payload(uint64(i), 4096)
		if _, err := v.WriteAt(p, int64(i)*8192); err != nil {
			t.Fatal(err)
		}
		copy(model[i*8192:], p)
	}
	waitFor(t, "the failed merge to be reported", func() bool { return v.Err() != nil })
	if !strings.Contains(v.Err().Error(), "injected EIO") {
		t.Fatalf("Err = %v, want the injected error", v.Err())
	}
	failing.Store(false)
	waitFor(t, "the volume to report healthy after the next merge", func() bool { return v.Err() == nil })
	got := make([]byte, size)
	if _, err := base.ReadAt(got, 0); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("the base after the retried merge differs from the writes (%v)", err)
	}
}

// TestCheckpointErrorsReportedAndCleared: a failed base fsync and a
// failed removal of a merged log segment are reported by Err, and the
// next merge and checkpoint that succeed clear them.
func TestCheckpointErrorsReportedAndCleared(t *testing.T) {
	cases := []struct {
		name, op string
		match    func(string) bool
	}{
		{"base fsync", "sync", func(n string) bool { return n == "/base.img" }},
		{"segment drop", "remove", func(n string) bool { return strings.HasSuffix(n, ".hrl") }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fs := vfs.NewMem(14)
			fs.MkdirAll("/")
			const size = 1 << 20
			f, _ := fs.Create("/base.img")
			f.Truncate(size)
			f.Sync()
			v, err := Open("/vol", openBase(t, fs, size), Options{FS: fs, SegmentSize: 8192, MergeIdle: -1, Recycle: -1})
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			i := 0
			writes := func(n int) {
				t.Helper()
				for range n {
					if _, err := v.WriteAt(payload(uint64(i), 4096), int64(i%256)*4096); err != nil {
						t.Fatal(err)
					}
					i++
				}
			}
			writes(8) // four segments
			var failed atomic.Int32
			fs.Inject = failOnce(c.op, c.match, &failed)
			if err := v.Merge(); err == nil || failed.Load() == 0 {
				t.Fatalf("Merge = %v with the %s failing", err, c.name)
			}
			if err := v.Err(); err == nil || !strings.Contains(err.Error(), "injected EIO") {
				t.Fatalf("Err = %v after a failed %s, want the injected error", err, c.name)
			}
			writes(8)
			if err := v.Merge(); err != nil {
				t.Fatalf("Merge after the transient error: %v", err)
			}
			if err := v.Err(); err != nil {
				t.Fatalf("Err = %v after a merge and checkpoint that succeeded", err)
			}
			if segs := v.Log().Segments(); len(segs) != 1 {
				t.Fatalf("%d log segments left after a full checkpoint, want 1", len(segs))
			}
		})
	}
}

// TestFence: after Fence every write, trim and zero is refused with
// ErrFenced (and blockdev.ErrReadOnly, and the reason), nothing more
// reaches the log, and reads and flushes keep working.
func TestFence(t *testing.T) {
	fs := vfs.NewMem(12)
	v, err := Open("/vol", blockdev.NewMem(1<<20), Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	want := bytes.Repeat([]byte{7}, 4096)
	if _, err := v.WriteAt(want, 8192); err != nil {
		t.Fatal(err)
	}
	last := v.Log().LastLSN()
	reason := errors.New("superseded: vm1 failed over")
	v.Fence(reason)
	for what, err := range map[string]error{
		"write": func() error { _, err := v.WriteAt(make([]byte, 4096), 0); return err }(),
		"fua":   func() error { _, err := v.WriteAtSync(make([]byte, 4096), 0); return err }(),
		"trim":  v.Trim(0, 4096),
		"zero":  v.WriteZeroes(0, 4096, false),
	} {
		if !errors.Is(err, ErrFenced) || !errors.Is(err, blockdev.ErrReadOnly) || !errors.Is(err, reason) {
			t.Errorf("%s after the fence: %v", what, err)
		}
	}
	if v.Log().LastLSN() != last {
		t.Fatal("a fenced volume logged a record")
	}
	if err := v.Sync(); err != nil {
		t.Fatalf("flush after the fence: %v", err)
	}
	got := make([]byte, 4096)
	if _, err := v.ReadAt(got, 8192); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after the fence: %v", err)
	}
}

// A seed's LSN keeps the log after it even when the consumer has released
// past it (a disk seeded again after it replicated over the network).
func TestKeepFromHoldsTheLogPastRelease(t *testing.T) {
	fs := vfs.NewMem(14)
	v, err := Open("/vol", blockdev.NewMem(8<<20), Options{FS: fs, Retain: true, SegmentSize: 64 << 10, MergeIdle: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for i := range 64 {
		v.WriteAt(payload(uint64(i), 4096), int64(i)*4096)
	}
	sealed, err := v.Log().Seal()
	if err != nil {
		t.Fatal(err)
	}
	v.KeepFrom(20)
	if err := v.Merge(); err != nil {
		t.Fatal(err)
	}
	if err := v.Release(sealed); err != nil {
		t.Fatal(err)
	}
	if first := v.Log().Segments()[0].First; first > 20 {
		t.Fatalf("the log starts at %d: record 20, kept for a seed, was dropped", first)
	}
	v.KeepFrom(0)
	if err := v.Release(sealed); err != nil {
		t.Fatal(err)
	}
	if got := len(v.Log().Segments()); got != 1 {
		t.Fatalf("%d segments once nothing is kept, want only the active one", got)
	}
}

// TestClearResyncWhileOverflowFinishes: a resync completes (ClearResync)
// while the merger is about to finish an overflow that began during it.
// The overflow must then stay cleared: no panic on the cleared bitmap, no
// resync required, and the log after the resync's LSN kept for the
// replica.
func TestClearResyncWhileOverflowFinishes(t *testing.T) {
	fs := vfs.NewMem(12)
	reached, proceed, finished := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var first, last sync.Once
	testHookFinishOverflow = func(done bool) {
		if !done {
			first.Do(func() { close(reached); <-proceed })
		} else {
			last.Do(func() { close(finished) })
		}
	}
	defer func() { testHookFinishOverflow = nil }()
	v := openOverflowing(t, fs, 16<<20, -1)
	defer v.Close()
	writeRegions(t, v, 24)
	<-reached // the log overflowed; the merger is about to finish it
	lsn := v.Log().LastLSN()
	if err := v.ClearResync(lsn); err != nil {
		t.Fatal(err)
	}
	// Records after the resync's LSN, which the replica needs.
	for i := range 4 {
		if _, err := v.WriteAt(payload(uint64(100+i), 4096), int64(i)<<20); err != nil {
			t.Fatal(err)
		}
	}
	v.Sync()
	close(proceed)
	<-finished
	if err := v.Merge(); err != nil {
		t.Fatal(err)
	}
	if v.ResyncRequired() {
		t.Fatal("the overflow came back after the resync cleared it")
	}
	v.mu.RLock()
	released := v.released
	v.mu.RUnlock()
	if released != lsn {
		t.Fatalf("released through %d after the resync at %d: the log the replica needs is gone", released, lsn)
	}
	var after int
	v.Log().Scan(lsn+1, func(hrl.Record) error { after++; return nil })
	if after != 4 {
		t.Fatalf("%d records after the resync's LSN kept, want 4", after)
	}
}

// TestConcurrentSyncsInBitmapMode: flushes that come together while the
// volume keeps a dirty bitmap (a log overflow) each publish it; two at
// once raced on the same temporary file, and one failed its flush with an
// I/O error (seen as an NBD write EIO in TestResyncEndToEnd).
func TestConcurrentSyncsInBitmapMode(t *testing.T) {
	fs := vfs.NewMem(13)
	v := openOverflowing(t, fs, 16<<20, time.Millisecond)
	defer v.Close()
	writeRegions(t, v, 40)
	waitfor.True(t, "the volume to keep a dirty bitmap", v.ResyncRequired)
	var wg sync.WaitGroup
	errs := make(chan error, 8*200)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				if _, err := v.WriteAt(payload(uint64(g*1000+i), 4096), int64(g)<<20); err != nil {
					errs <- err
				}
				if err := v.Sync(); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a write or flush failed: %v", err)
	}
}

// A background merge steps aside while the disk is only read: it goes on
// when Merge is called (a resync must not wait for the readers) and
// finishes once the reads stop.
func TestMergeStepsAsideForReaders(t *testing.T) {
	var yields atomic.Int64
	testHookYield = func() { yields.Add(1) }
	defer func() { testHookYield = nil }()
	v, err := Open("/vol", blockdev.NewMem(64<<20), Options{FS: vfs.NewMem(3), MergeAfter: 8 << 20, MergeIdle: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	applied := func() uint64 { return appliedLSN(v) }
	img := make([]byte, 64<<20)
	// burst writes 16 MiB with merging paused and, once the disk counts
	// as only read, lets the merge go: it steps aside.
	burst := func(seed uint64) (stop func()) {
		v.PauseMerge()
		for i := range int64(256) {
			p := payload(seed+uint64(i), 64<<10)
			off := (i * 5 % 1024) * 64 << 10
			if _, err := v.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			copy(img[off:], p)
		}
		// The disk counts as read from now on, whatever the scheduler
		// does to a reader goroutine (one starved for 5 ms on a busy
		// machine would let the merge go on, rightly), until stop.
		v.lastRead.Store(time.Now().Add(time.Hour).UnixNano())
		waitFor(t, "the disk counted as only read", v.onlyReading)
		before := yields.Load()
		v.ResumeMerge()
		waitFor(t, "the merge stepping aside for the reader", func() bool { return yields.Load() > before })
		return func() { v.lastRead.Store(0) }
	}
	stop := burst(1)
	merged := make(chan error, 1)
	go func() { merged <- v.Merge() }()
	var merr error
	waitFor(t, "Merge while the reader goes on", func() bool {
		select {
		case merr = <-merged:
			return true
		default:
			return false
		}
	})
	if merr != nil {
		t.Fatal(merr)
	}
	if got, want := applied(), v.Log().LastLSN(); got != want {
		t.Fatalf("Merge returned with the base at LSN %d, want %d", got, want)
	}
	stop()
	stop = burst(1000)
	stop()
	waitFor(t, "the merge once the reads stopped", func() bool { return applied() == v.Log().LastLSN() })
	got := make([]byte, len(img))
	if _, err := v.ReadAt(got, 0); err != nil || !bytes.Equal(got, img) {
		t.Fatalf("the disk does not read back what was written (%v)", err)
	}
}

// A merge over real files writes the base through the mapped log
// segments: runs of adjacent extents across index buckets and segments,
// overwrites, and trims between them all land where they belong.
func TestMergeThroughMappedSegments(t *testing.T) {
	var mapped atomic.Int32
	testHookMapped = func() { mapped.Add(1) }
	defer func() { testHookMapped = nil }()
	dir := t.TempDir()
	const size = 16 << 20
	path := filepath.Join(dir, "disk.img")
	os.WriteFile(path, nil, 0o600)
	os.Truncate(path, size)
	base, err := blockdev.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	// Small segments: a run of adjacent extents spans several of them.
	v, err := Open(filepath.Join(dir, "state"), base, Options{SegmentSize: 256 << 10, MergeIdle: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	img := make([]byte, size)
	rnd := rand.New(rand.NewPCG(4, 4))
	write := func(off, n int64) {
		p := payload(rnd.Uint64(), n)
		if _, err := v.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(img[off:], p)
	}
	write(1<<20-8192, 3<<20)    // across four index buckets
	for i := range int64(300) { // scattered, some adjacent, some overwriting
		write(rnd.Int64N(size/4096)*4096, 4096*(1+i%3))
	}
	for off := int64(8 << 20); off < 9<<20; off += 4096 { // adjacent, in reverse log order
		write(9<<20-4096-(off-8<<20), 4096)
	}
	if err := v.Trim(2<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	clear(img[2<<20 : 2<<20+64<<10])
	write(2<<20+16<<10, 4096) // inside the trimmed range, after it
	if err := v.Merge(); err != nil {
		t.Fatal(err)
	}
	if mapped.Load() == 0 {
		t.Fatal("the merge did not go through mapped segments")
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < size; off += 4096 {
		if !bytes.Equal(got[off:off+4096], img[off:off+4096]) {
			t.Fatalf("the base differs at %d after the merge", off)
		}
	}
}

// gateBase is a base whose first read waits at a gate: a disk read that
// takes its time.
type gateBase struct {
	blockdev.Device
	once    sync.Once
	entered chan struct{}
	gate    chan struct{}
}

func (d *gateBase) ReadAt(p []byte, off int64) (int, error) {
	d.once.Do(func() {
		close(d.entered)
		<-d.gate
	})
	return d.Device.ReadAt(p, off)
}

// TestBaseReadHoldsNoLock: a read waiting on the base leaves the volume
// free for writes and points (issue 20: a lock held across a cold read
// serialized reads and writes, and a writer waiting for it held every
// later read back).
func TestBaseReadHoldsNoLock(t *testing.T) {
	base := &gateBase{Device: blockdev.NewMem(1 << 20), entered: make(chan struct{}), gate: make(chan struct{})}
	v, err := Open("/vol", base, Options{FS: vfs.NewMem(1), SegmentSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	v.PauseMerge() // the only base reads are the test's
	read := make(chan error)
	buf := make([]byte, 8192)
	go func() {
		_, err := v.ReadAt(buf, 0)
		read <- err
	}()
	<-base.entered
	if !v.mu.TryLock() {
		close(base.gate)
		<-read
		t.Fatal("the volume's lock is held while a read waits on the base")
	}
	v.mu.Unlock()
	if _, err := v.WriteAt(bytes.Repeat([]byte{7}, 4096), 4096); err != nil {
		t.Fatal(err)
	}
	v.Hold()()
	close(base.gate)
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8192)
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[4096:], bytes.Repeat([]byte{7}, 4096)) || !bytes.Equal(got[:4096], make([]byte, 4096)) {
		t.Fatal("a read after the write does not see it")
	}
}
