package wocheck

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/blockdev/tracked"
	"github.com/vrep-io/vrep/internal/nbdclient"
	"github.com/vrep-io/vrep/nbd"
)

// The self-test at queue depth 32 through the real NBD server: a stamped
// workload with 32 requests in flight, over one connection or several,
// against a test device that can plant each bug the checker must catch.

// plantMode is the bug a plantDev carries.
type plantMode int

const (
	correct   plantMode = iota
	ackEarly            // acknowledges a write before its group commit is written
	swapApply           // applies a write again after a later one that overlaps it
)

// plantDev is a group-commit device over memory: it applies submitted
// writes in submit order but keeps the newest few back (a group still
// filling), and completes a write once applied. A flush syncs what is
// applied: a point (a snapshot, with the time it was taken) is recorded
// under the lock, then the queue is drained. A crash keeps only what was
// applied. Each mode plants one bug.
type plantDev struct {
	mode   plantMode
	data   []byte
	blocks int64

	mu      sync.Mutex
	queue   []*queued // submitted, not yet applied, in submit order
	held    *queued   // swapApply: a write to apply again after the next one over it
	idle    *time.Timer
	crashed bool
	points  []devPoint
}

// queued is a submitted write; done is closed once it is applied.
type queued struct {
	p    []byte
	off  int64
	done chan struct{}
}

func (q *queued) Wait() error           { <-q.done; return nil }
func (q *queued) Done() <-chan struct{} { return q.done }

// devPoint is the device's content when a flush ran.
type devPoint struct {
	at  time.Time
	img []byte
}

// hold is how many of the newest writes wait for the next group.
const hold = 4

func newPlantDev(mode plantMode, blocks int64) *plantDev {
	d := &plantDev{mode: mode, data: make([]byte, blocks*BlockSize), blocks: blocks}
	// A group commit timer: a group that stops filling is written after
	// a millisecond, so the last writes of a run complete.
	// (With ackEarly nothing waits for it: the group stays unwritten.)
	d.idle = time.AfterFunc(time.Hour, func() {
		d.mu.Lock()
		d.applyLocked(len(d.queue))
		d.mu.Unlock()
	})
	return d
}

func (d *plantDev) Size() int64 { return int64(len(d.data)) }

func (d *plantDev) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return copy(p, d.data[off:]), nil
}

func (d *plantDev) WriteAt(p []byte, off int64) (int, error) {
	pend, err := d.Submit(p, off)
	if err != nil {
		return 0, err
	}
	return len(p), pend.Wait()
}

// Submit queues a write and applies all but the newest few.
func (d *plantDev) Submit(p []byte, off int64) (blockdev.Pending, error) {
	if err := blockdev.CheckRange(d.Size(), off, int64(len(p))); err != nil {
		return nil, err
	}
	q := &queued{p: append([]byte(nil), p...), off: off, done: make(chan struct{})}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.crashed {
		return nil, os.ErrClosed
	}
	if d.mode == swapApply {
		// Applied at once, but one write at a time is applied a second
		// time right after the next write over it: the two applies come
		// out in swapped order.
		close(q.done)
		copy(d.data[q.off:], q.p)
		switch {
		case d.held == nil:
			d.held = q
		case q.off < d.held.off+int64(len(d.held.p)) && d.held.off < q.off+int64(len(q.p)):
			copy(d.data[d.held.off:], d.held.p)
			d.held = nil
		}
		return q, nil
	}
	d.queue = append(d.queue, q)
	d.applyLocked(len(d.queue) - hold)
	if d.mode != ackEarly {
		d.idle.Reset(time.Millisecond)
	}
	if d.mode == ackEarly {
		return completedWrite{}, nil
	}
	return q, nil
}

type completedWrite struct{}

var closedCh = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (completedWrite) Wait() error           { return nil }
func (completedWrite) Done() <-chan struct{} { return closedCh }

// applyLocked applies the n oldest queued writes and completes them.
func (d *plantDev) applyLocked(n int) {
	if d.crashed || n <= 0 {
		return
	}
	for _, q := range d.queue[:n] {
		copy(d.data[q.off:], q.p)
		if d.mode != ackEarly {
			close(q.done)
		}
	}
	d.queue = d.queue[n:]
}

// Sync records a point holding every write completed so far, then
// writes the rest of the group. With ackEarly, acknowledged writes still
// in the group are not in the point: that is the bug.
func (d *plantDev) Sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.crashed {
		return os.ErrClosed
	}
	d.points = append(d.points, devPoint{time.Now(), append([]byte(nil), d.data...)})
	if d.mode != ackEarly {
		d.applyLocked(len(d.queue))
	}
	return nil
}

// crash stops the device, keeping only what was applied.
func (d *plantDev) crash() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.crashed = true
	d.idle.Stop()
	return append([]byte(nil), d.data...)
}

// handleSwapConn is the client's side of a connection on which every
// fourth write reply carries the handle of the newest other write in
// flight (whose own reply later carries the first one's handle): the
// client takes a write for acknowledged before the server completed it.
type handleSwapConn struct {
	net.Conn
	mu       sync.Mutex
	active   bool
	inflight []uint64          // write handles sent and not yet answered
	remap    map[uint64]uint64 // a reply's handle -> the handle it carries
	replies  int
	stash    []byte // reply bytes read, not yet returned
	out      []byte // rewritten replies not yet returned
}

func (c *handleSwapConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.active {
		// The client writes whole requests: a header, then a write's data.
		for b := p; len(b) >= 28; {
			typ := binary.BigEndian.Uint16(b[6:])
			if typ == 1 {
				c.inflight = append(c.inflight, binary.BigEndian.Uint64(b[8:]))
				b = b[min(len(b), 28+int(binary.BigEndian.Uint32(b[24:]))):]
			} else {
				b = b[28:]
			}
		}
	}
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *handleSwapConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	active := c.active
	c.mu.Unlock()
	if !active {
		return c.Conn.Read(p)
	}
	for len(c.out) == 0 {
		buf := make([]byte, len(p))
		n, err := c.Conn.Read(buf)
		c.stash = append(c.stash, buf[:n]...)
		for len(c.stash) >= 16 {
			rep := c.stash[:16]
			c.rewrite(rep)
			c.out = append(c.out, rep...)
			c.stash = c.stash[16:]
		}
		if err != nil && len(c.out) == 0 {
			return 0, err
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// rewrite gives a write reply another request's handle, now and then.
func (c *handleSwapConn) rewrite(rep []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := binary.BigEndian.Uint64(rep[8:])
	if to, ok := c.remap[h]; ok {
		delete(c.remap, h)
		binary.BigEndian.PutUint64(rep[8:], to)
		return
	}
	i := slicesIndex(c.inflight, h)
	if i < 0 {
		return // a flush
	}
	c.inflight = append(c.inflight[:i], c.inflight[i+1:]...)
	c.replies++
	if c.replies%4 != 0 || len(c.inflight) == 0 {
		return
	}
	newest := c.inflight[len(c.inflight)-1]
	c.inflight = c.inflight[:len(c.inflight)-1]
	c.remap[newest] = h
	binary.BigEndian.PutUint64(rep[8:], newest)
}

func slicesIndex(s []uint64, v uint64) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// serveNBD serves dev as export "d" on a unix socket.
func serveNBD(t *testing.T, dev blockdev.Device) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "wocheck")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := nbd.NewServer(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	srv.Add(nbd.Export{Name: "d", Device: dev})
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return sock
}

// dialNBD opens conns connections, with handle swapping if asked.
func dialNBD(t *testing.T, sock string, conns int, swapHandles bool) []Device {
	t.Helper()
	var devs []Device
	for range conns {
		nc, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		sc := &handleSwapConn{Conn: nc, remap: map[uint64]uint64{}}
		cl, err := nbdclient.DialConn(sc, "d")
		if err != nil {
			t.Fatal(err)
		}
		sc.active = swapHandles
		t.Cleanup(func() { cl.Close() })
		devs = append(devs, cl)
	}
	return devs
}

// decode reads an image from bytes.
func decode(t *testing.T, b []byte) Image {
	t.Helper()
	img, err := ReadImage(bytes.NewReader(b), int64(len(b)/BlockSize))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// qdWorkload is the workload of these tests: 32 in flight on a small disk,
// so that writes in flight together often overlap.
func qdWorkload(blocks int64, seed uint64) Workload {
	return Workload{Disk: 1, Run: 9, Blocks: blocks, Seed: seed, FlushEvery: 8, Depth: 32, FinalFlush: true}
}

func TestNBDPlantedBugsAtDepth32(t *testing.T) {
	const blocks = 64
	ops := 3000
	if testing.Short() {
		ops = 1200
	}
	for _, c := range []struct {
		name        string
		mode        plantMode
		swapHandles bool
		conns       int
		want        string // "": no violation
	}{
		{"correct, one connection", correct, false, 1, ""},
		{"correct, four connections", correct, false, 4, ""},
		{"ack before the group commit is written", ackEarly, false, 1, "acknowledged write lost"},
		{"ack before the group commit is written, four connections", ackEarly, false, 4, "acknowledged write lost"},
		{"two submissions applied in swapped order", swapApply, false, 1, "stale"},
		{"a reply carrying another request's handle", correct, true, 1, "acknowledged write lost"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dev := newPlantDev(c.mode, blocks)
			devs := dialNBD(t, serveNBD(t, dev), c.conns, c.swapHandles)
			w := qdWorkload(blocks, 1)
			h := w.WriteConcurrent(context.Background(), devs, ops)
			crashed := dev.crash()
			before := make(Image, blocks)
			// Every flush was a point; then the crash image.
			var found []string
			for _, p := range dev.points {
				rep := CheckAt(before, decode(t, p.img), h, p.at)
				found = append(found, rep.Violations...)
			}
			rep := Check(before, decode(t, crashed), h)
			found = append(found, rep.Violations...)
			acked := 0
			for _, op := range h.Ops {
				if !op.Flush && op.Result == OK {
					acked++
				}
			}
			t.Logf("%d operations, %d writes acknowledged, %d points and the crash image checked: %d violations; crash image: %v",
				len(h.Ops), acked, len(dev.points), len(found), rep)
			if acked < ops/2 {
				t.Fatalf("only %d writes acknowledged", acked)
			}
			switch {
			case c.want == "" && len(found) > 0:
				t.Fatalf("violations on a correct device:\n%s", strings.Join(found[:min(10, len(found))], "\n"))
			case c.want != "" && len(found) == 0:
				t.Fatalf("the planted bug was not caught")
			case c.want != "" && !strings.Contains(strings.Join(found, "\n"), c.want):
				t.Fatalf("caught, but not as %q:\n%s", c.want, strings.Join(found[:min(10, len(found))], "\n"))
			}
		})
	}
}

// TestNBDTrackedVolumeAtDepth32: the real write path (the NBD server's
// submit path over a tracked volume) passes the concurrent check at
// queue depth 32 over two connections.
func TestNBDTrackedVolumeAtDepth32(t *testing.T) {
	const blocks = 256
	base := blockdev.NewMem(blocks * BlockSize)
	v, err := tracked.Open(t.TempDir(), base, tracked.Options{MergeAfter: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	devs := dialNBD(t, serveNBD(t, v), 2, false)
	w := qdWorkload(blocks, 2)
	h := w.WriteConcurrent(context.Background(), devs, 2000)
	after, err := ReadImage(devs[0].(*nbdclient.Client), blocks)
	if err != nil {
		t.Fatal(err)
	}
	rep := Check(make(Image, blocks), after, h)
	if !rep.OK() || rep.Lost != 0 {
		t.Fatalf("%v:\n%s", rep, strings.Join(rep.Violations, "\n"))
	}
	t.Logf("tracked volume, QD32 over 2 connections: %v", rep)
}
