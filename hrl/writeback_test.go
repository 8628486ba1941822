package hrl

import (
	"sync"
	"testing"

	"github.com/vrep-io/vrep/internal/vfs"
	"github.com/vrep-io/vrep/internal/waitfor"
)

// wbFS records the ranges whose writeback the log's files are asked to
// start.
type wbFS struct {
	vfs.FS
	mu     sync.Mutex
	ranges [][2]int64
}

func (w *wbFS) Create(name string) (vfs.File, error) { return w.wrap(w.FS.Create(name)) }
func (w *wbFS) Open(name string) (vfs.File, error)   { return w.wrap(w.FS.Open(name)) }

func (w *wbFS) wrap(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return wbFile{f, w}, nil
}

func (w *wbFS) seen() [][2]int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([][2]int64(nil), w.ranges...)
}

type wbFile struct {
	vfs.File
	fs *wbFS
}

func (f wbFile) StartWriteback(off, n int64) error {
	f.fs.mu.Lock()
	f.fs.ranges = append(f.fs.ranges, [2]int64{off, n})
	f.fs.mu.Unlock()
	if wb, ok := f.File.(vfs.Writebacker); ok {
		return wb.StartWriteback(off, n)
	}
	return nil
}

// TestWritebackOnlyWhileFlushed: a burst of writes with no flush starts no
// writeback of the log (it stays in the page cache, as in a plain file);
// once the log is synced between writes, the ranges it fills are handed
// to the disk as they fill.
func TestWritebackOnlyWhileFlushed(t *testing.T) {
	fs := &wbFS{FS: vfs.OS{}}
	l := mustOpen(t, fs, t.TempDir(), Options{})
	defer l.Close()
	payload := make([]byte, 1<<20)
	const burst = 3 * writebackEvery
	lsn := uint64(0)
	for range burst / len(payload) { // crosses three window boundaries
		appendWait(t, l, Entry{Type: TypeWrite, Offset: lsn << 20, Payload: payload})
		lsn++
	}
	for range 2 * writebackEvery / len(payload) {
		appendWait(t, l, Entry{Type: TypeWrite, Offset: lsn << 20, Payload: payload})
		lsn++
		if err := l.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	// The flusher takes hints in order: once one for the synced part is
	// seen, any for the burst would have been seen before it.
	waitfor.True(t, "a writeback hint for the synced writes", func() bool {
		r := fs.seen()
		return len(r) > 0 && r[len(r)-1][0] >= burst
	})
	for _, r := range fs.seen() {
		if r[0] < burst {
			t.Errorf("writeback started at %d MiB (+%d MiB), inside the burst of %d MiB written with no flush", r[0]>>20, r[1]>>20, burst>>20)
		}
	}
}
