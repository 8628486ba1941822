package nbdclient

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/nbd"
)

func serve(t *testing.T, dev blockdev.Device) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "nbdclient")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := nbd.NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv.Add(nbd.Export{Name: "d", Device: dev})
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return sock
}

// TestPipelined: 64 goroutines write and read back their own blocks
// through one connection at once; the server answers out of order and
// every reply, data included, reaches the call it belongs to.
func TestPipelined(t *testing.T) {
	const n, bs = 64, 64 << 10
	cl, err := Dial("unix", serve(t, blockdev.NewMem(n*bs)), "d")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := bytes.Repeat([]byte{byte(i + 1)}, bs)
			for round := range 20 {
				want[round] = byte(round)
				if _, err := cl.WriteAt(want, int64(i)*bs); err != nil {
					errs <- err
					return
				}
				got := make([]byte, bs)
				if _, err := cl.ReadAt(got, int64(i)*bs); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, want) {
					errs <- fmt.Errorf("block %d round %d: read back another request's data", i, round)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// barrier is a device whose writes each wait until width writes are
// inside it at once.
type barrier struct {
	*blockdev.Mem
	mu    sync.Mutex
	in    int
	width int
	all   chan struct{}
	late  bool // a write gave up waiting: the rest fail at once
}

func (b *barrier) WriteAt(p []byte, off int64) (int, error) {
	b.mu.Lock()
	b.in++
	if b.in == b.width {
		close(b.all)
	}
	late := b.late
	b.mu.Unlock()
	if late {
		return 0, errors.New("barrier: the writes did not arrive together")
	}
	select {
	case <-b.all:
	case <-time.After(20 * time.Second):
		b.mu.Lock()
		b.late = true
		b.mu.Unlock()
		return 0, errors.New("barrier: the writes did not arrive together")
	}
	return b.Mem.WriteAt(p, off)
}

// TestManyInFlight: 16 writes from 16 goroutines are in the server at
// once over one connection (the device holds each until all 16 arrived).
func TestManyInFlight(t *testing.T) {
	const width = 16
	dev := &barrier{Mem: blockdev.NewMem(width * 4096), width: width, all: make(chan struct{})}
	cl, err := Dial("unix", serve(t, dev), "d")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var wg sync.WaitGroup
	errs := make(chan error, width)
	for i := range width {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := cl.WriteAt(make([]byte, 4096), int64(i)*4096); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// unknownHandle gives the first reply after the handshake a handle no
// request has.
type unknownHandle struct {
	net.Conn
	active, done bool
}

func (c *unknownHandle) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.active && !c.done && n >= 16 {
		binary.BigEndian.PutUint64(p[8:], 1<<40)
		c.done = true
	}
	return n, err
}

// TestUnknownHandle: a reply that matches no request in flight fails the
// call and every later one with ErrProtocol.
func TestUnknownHandle(t *testing.T) {
	nc, err := net.Dial("unix", serve(t, blockdev.NewMem(1<<20)))
	if err != nil {
		t.Fatal(err)
	}
	c := &unknownHandle{Conn: nc}
	cl, err := DialConn(c, "d")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	c.active = true
	if _, err := cl.WriteAt(make([]byte, 4096), 0); !errors.Is(err, ErrProtocol) {
		t.Fatalf("write answered with an unknown handle: %v, want ErrProtocol", err)
	}
	if err := cl.Sync(); !errors.Is(err, ErrProtocol) {
		t.Fatalf("a later call: %v, want ErrProtocol", err)
	}
}
