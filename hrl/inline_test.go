package hrl

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/vfs"
	"github.com/vrep-io/vrep/internal/waitfor"
)

// TestWriteNowWritesInCaller: with the writer free, WriteNow returns with
// the caller's batch written: the caller did the write, no goroutine was
// woken for it.
func TestWriteNowWritesInCaller(t *testing.T) {
	l := mustOpen(t, vfs.NewMem(1), "/log", Options{SegmentSize: 4 << 10})
	defer l.Close()
	for i := range 200 { // rolls included
		_, b, err := l.AppendQuiet(write(uint64(i), fmt.Sprintf("record-%03d", i)))
		if err != nil {
			t.Fatal(err)
		}
		l.WriteNow()
		select {
		case <-b.Done():
		default:
			t.Fatalf("record %d: WriteNow returned before its batch was written", i)
		}
		if err := b.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	if got := scanAll(t, l, 1); len(got) != 200 {
		t.Fatalf("%d records, want 200", len(got))
	}
}

// TestWriteNowUnderContention: a WriteNow that finds another goroutine
// writing leaves the batch to the writer goroutine, which writes it: no
// record is left unwritten, whoever wins.
func TestWriteNowUnderContention(t *testing.T) {
	l := mustOpen(t, vfs.NewMem(2), "/log", Options{SegmentSize: 16 << 10})
	defer l.Close()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 200 {
				e := write(uint64(w), fmt.Sprintf("w%d-%d", w, i))
				var b *Batch
				var err error
				if i%3 == 0 { // mixed with appends that wake the writer
					_, b, err = l.Append(e)
				} else {
					_, b, err = l.AppendQuiet(e)
					l.WriteNow()
				}
				if err != nil {
					t.Error(err)
					return
				}
				select {
				case <-b.Done():
				case <-time.After(waitfor.Patience):
					t.Errorf("writer %d record %d never written", w, i)
					return
				}
				if i%50 == 0 {
					if err := l.Sync(); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := scanAll(t, l, 1); len(got) != 1600 {
		t.Fatalf("%d records, want 1600", len(got))
	}
}

// TestSyncRunsInCaller: a Sync that finds no sync under way fsyncs in the
// caller's goroutine, not the syncer's.
func TestSyncRunsInCaller(t *testing.T) {
	defer func() { jobHook = nil }()
	l := mustOpen(t, vfs.OS{}, t.TempDir(), Options{})
	defer l.Close()
	var jobs, inCaller atomic.Int32
	jobHook = func(l *Log, after bool) {
		if after {
			return
		}
		jobs.Add(1)
		buf := make([]byte, 64<<10)
		if bytes.Contains(buf[:runtime.Stack(buf, false)], []byte("hrl.(*Log).Sync(")) {
			inCaller.Add(1)
		}
	}
	for i := range 20 {
		appendWait(t, l, write(uint64(i), "x"))
		if err := l.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if jobs.Load() != 20 || inCaller.Load() != 20 {
		t.Fatalf("%d of %d sync jobs ran in the caller of Sync, want 20 of 20", inCaller.Load(), jobs.Load())
	}
	if l.SyncedLSN() != 20 {
		t.Fatalf("synced through %d, want 20", l.SyncedLSN())
	}
}

// TestSyncRacingClose: a sync job run by a caller of Sync is waited for by
// a concurrent Close, which closes no file under it: every call succeeds
// or says the log is closed.
func TestSyncRacingClose(t *testing.T) {
	for range 30 {
		l := mustOpen(t, vfs.OS{}, t.TempDir(), Options{})
		appendWait(t, l, write(0, "x"))
		start := make(chan struct{})
		errs := make(chan error, 8)
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				<-start
				for i := range 20 {
					_, b, err := l.AppendQuiet(write(uint64(w), "y"))
					if err == nil {
						l.WriteNow()
						err = b.Wait()
					}
					if err == nil {
						err = l.Sync()
					}
					if err != nil {
						errs <- fmt.Errorf("writer %d, round %d: %w", w, i, err)
						return
					}
				}
			})
		}
		wg.Go(func() {
			<-start
			if err := l.Close(); err != nil {
				errs <- fmt.Errorf("Close: %w", err)
			}
		})
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			if !errors.Is(err, ErrClosed) {
				t.Fatal(err)
			}
		}
	}
}
