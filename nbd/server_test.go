package nbd

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
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/internal/waitfor"
)

const testSize = 16 << 20

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// serve starts a server with one export on a unix socket.
func serve(t *testing.T, dev blockdev.Device, ro bool) (*Server, string) {
	t.Helper()
	s := NewServer(quiet())
	s.Add(Export{Name: "vm1/disk0", Device: dev, ReadOnly: ro})
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return s, sock
}

// client is a raw NBD client for probing.
type client struct {
	t    *testing.T
	c    net.Conn
	size uint64
	tf   uint16
}

func dial(t *testing.T, sock, export string) *client {
	t.Helper()
	return dialWith(t, sock, export, nil)
}

// dialWith is dial with options sent before NBD_OPT_GO by pre.
func dialWith(t *testing.T, sock, export string, pre func(cl *client)) *client {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	cl := &client{t: t, c: c}
	var hello [18]byte
	cl.read(hello[:])
	if binary.BigEndian.Uint64(hello[:]) != magicNBD || binary.BigEndian.Uint16(hello[16:])&flagFixedNew == 0 {
		t.Fatalf("bad greeting % x", hello)
	}
	cl.write(binary.BigEndian.AppendUint32(nil, clientFixed|clientNoZero))
	if pre != nil {
		pre(cl)
	}
	// NBD_OPT_GO with a block-size request.
	data := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint16(data, 1)
	data = binary.BigEndian.AppendUint16(data, infoBlockSize)
	cl.option(optGo, data)
	for {
		typ, payload := cl.optReply()
		switch typ {
		case repAck:
			return cl
		case repInfo:
			if binary.BigEndian.Uint16(payload) == infoExport {
				cl.size = binary.BigEndian.Uint64(payload[2:])
				cl.tf = binary.BigEndian.Uint16(payload[10:])
			}
		default:
			t.Fatalf("NBD_OPT_GO reply %#x: %s", typ, payload)
		}
	}
}

func (cl *client) read(b []byte) {
	cl.t.Helper()
	if _, err := io.ReadFull(cl.c, b); err != nil {
		cl.t.Fatalf("read: %v", err)
	}
}

func (cl *client) write(b []byte) {
	cl.t.Helper()
	if _, err := cl.c.Write(b); err != nil {
		cl.t.Fatalf("write: %v", err)
	}
}

func (cl *client) option(opt uint32, data []byte) {
	h := binary.BigEndian.AppendUint64(nil, magicOpt)
	h = binary.BigEndian.AppendUint32(h, opt)
	h = binary.BigEndian.AppendUint32(h, uint32(len(data)))
	cl.write(append(h, data...))
}

func (cl *client) optReply() (uint32, []byte) {
	var h [20]byte
	cl.read(h[:])
	if binary.BigEndian.Uint64(h[:]) != magicRep {
		cl.t.Fatalf("bad option reply magic")
	}
	p := make([]byte, binary.BigEndian.Uint32(h[16:]))
	cl.read(p)
	return binary.BigEndian.Uint32(h[12:]), p
}

func reqBytes(typ, flags uint16, cookie, off uint64, n uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, n)
}

// reply reads one simple reply; data is read when the reply is a
// successful read of readLen bytes.
func (cl *client) reply(readLen int) (cookie uint64, code uint32, data []byte) {
	cl.t.Helper()
	var h [16]byte
	cl.read(h[:])
	if binary.BigEndian.Uint32(h[:]) != magicReply {
		cl.t.Fatalf("bad reply magic % x", h)
	}
	code = binary.BigEndian.Uint32(h[4:])
	cookie = binary.BigEndian.Uint64(h[8:])
	if code == 0 && readLen > 0 {
		data = make([]byte, readLen)
		cl.read(data)
	}
	return cookie, code, data
}

func (cl *client) do(typ, flags uint16, off uint64, payload []byte, n uint32) (uint32, []byte) {
	cl.t.Helper()
	cl.write(append(reqBytes(typ, flags, 7, off, n), payload...))
	readLen := 0
	if typ == cmdRead {
		readLen = int(n)
	}
	_, code, data := cl.reply(readLen)
	return code, data
}

func TestBadRequestsKeepTheConnection(t *testing.T) {
	dev := blockdev.NewMem(testSize)
	_, sock := serve(t, dev, false)
	cl := dial(t, sock, "vm1/disk0")
	if cl.size != testSize || cl.tf&(tfSendFlush|tfSendFUA|tfSendTrim|tfSendZeroes|tfCanMultiConn) == 0 || cl.tf&tfReadOnly != 0 {
		t.Fatalf("size %d flags %#x", cl.size, cl.tf)
	}
	end := uint64(testSize)
	probes := []struct {
		name    string
		typ     uint16
		flags   uint16
		off     uint64
		n       uint32
		payload int // bytes of payload the client sends
		want    uint32
	}{
		{"read past end", cmdRead, 0, end - 100, 4096, 0, errInval},
		{"read at end", cmdRead, 0, end, 1, 0, errInval},
		{"write past end", cmdWrite, 0, end - 100, 4096, 4096, errNoSpc},
		{"zeroes past end", cmdZeroes, 0, end, 4096, 0, errNoSpc},
		{"trim past end", cmdTrim, 0, end - 1, 2, 0, errInval},
		{"offset overflow", cmdRead, 0, ^uint64(0) - 10, 4096, 0, errInval},
		{"zero-length read", cmdRead, 0, 0, 0, 0, errInval},
		{"zero-length write", cmdWrite, 0, 0, 0, 0, errInval},
		{"zero-length trim", cmdTrim, 0, 0, 0, 0, errInval},
		{"oversized read", cmdRead, 0, 0, MaxRequest + 1, 0, errInval},
		{"oversized write", cmdWrite, 0, 0, MaxRequest + 4096, MaxRequest + 4096, errInval},
		{"unknown command", 99, 0, 0, 4096, 0, errInval},
		{"cache (not offered)", 5, 0, 0, 4096, 0, errInval},
		{"block status (not offered)", 7, 0, 0, 4096, 0, errInval},
		{"unknown write flag", cmdWrite, 1 << 5, 0, 512, 512, errInval},
		{"no-hole on trim", cmdTrim, cfNoHole, 0, 512, 0, errInval},
		{"unaligned write (fine)", cmdWrite, 0, 4093, 7, 7, 0},
	}
	// Build the client's payloads first: only the server's allocations
	// are measured.
	payloads := make([][]byte, len(probes))
	for i, p := range probes {
		payloads[i] = append(reqBytes(p.typ, p.flags, 7, p.off, p.n), bytes.Repeat([]byte{0xee}, p.payload)...)
	}
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for i, p := range probes {
		cl.write(payloads[i])
		_, code, _ := cl.reply(0)
		if code != p.want {
			t.Errorf("%s: errno %d, want %d", p.name, code, p.want)
		}
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Errorf("refused requests allocated %d MiB", grew>>20)
	}
	// Nothing refused reached the device, and the connection still works.
	got := make([]byte, 4096)
	dev.ReadAt(got, int64(end)-4096)
	if !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("a refused write reached the device")
	}
	if code, _ := cl.do(cmdWrite, cfFUA, 8192, bytes.Repeat([]byte{1}, 4096), 4096); code != 0 {
		t.Fatalf("write after bad requests: errno %d", code)
	}
	if code, data := cl.do(cmdRead, 0, 8192, nil, 4096); code != 0 || !bytes.Equal(data, bytes.Repeat([]byte{1}, 4096)) {
		t.Fatalf("read after bad requests: errno %d", code)
	}
	if code, _ := cl.do(cmdFlush, 0, 0, nil, 0); code != 0 {
		t.Fatalf("flush: errno %d", code)
	}
	if code, _ := cl.do(cmdZeroes, cfNoHole|cfFUA, 8192, nil, 4096); code != 0 {
		t.Fatalf("write zeroes: errno %d", code)
	}
	if code, data := cl.do(cmdRead, 0, 8192, nil, 4096); code != 0 || !bytes.Equal(data, make([]byte, 4096)) {
		t.Fatal("write zeroes did not zero")
	}
	// A bad magic ends that connection only.
	cl.write(append([]byte{1, 2, 3, 4}, make([]byte, 24)...))
	if _, err := io.ReadFull(cl.c, make([]byte, 1)); err == nil {
		t.Fatal("connection survived a request with a bad magic")
	}
	other := dial(t, sock, "vm1/disk0")
	if code, _ := other.do(cmdRead, 0, 0, nil, 512); code != 0 {
		t.Fatal("another client was hurt")
	}
}

func TestReadOnlyExport(t *testing.T) {
	_, sock := serve(t, blockdev.NewMem(testSize), true)
	cl := dial(t, sock, "vm1/disk0")
	if cl.tf&tfReadOnly == 0 {
		t.Fatal("read-only export not advertised as such")
	}
	if code, _ := cl.do(cmdWrite, 0, 0, make([]byte, 512), 512); code != errPerm {
		t.Fatalf("write to a read-only export: errno %d, want EPERM", code)
	}
	if code, _ := cl.do(cmdRead, 0, 0, nil, 512); code != 0 {
		t.Fatalf("read: errno %d", code)
	}
}

// slowDev delays writes so that replies complete out of order.
type slowDev struct{ blockdev.Device }

func (d slowDev) WriteAt(p []byte, off int64) (int, error) {
	time.Sleep(time.Duration(off/4096%5) * time.Millisecond)
	return d.Device.WriteAt(p, off)
}

// gateDev holds every write at a gate until open is closed, and closes
// all once want writes have reached it.
type gateDev struct {
	blockdev.Device
	want    int64
	entered atomic.Int64
	all     chan struct{}
	open    chan struct{}
}

func (d *gateDev) WriteAt(p []byte, off int64) (int, error) {
	if d.entered.Add(1) == d.want {
		close(d.all)
	}
	<-d.open
	return d.Device.WriteAt(p, off)
}

func TestManyInFlightOutOfOrder(t *testing.T) {
	dev := blockdev.NewMem(testSize)
	_, sock := serve(t, slowDev{dev}, false)
	cl := dial(t, sock, "vm1/disk0")
	const n = 200
	var buf bytes.Buffer
	for i := range n {
		buf.Write(reqBytes(cmdWrite, 0, uint64(i), uint64(i)*4096, 4096))
		buf.Write(bytes.Repeat([]byte{byte(i)}, 4096))
	}
	go cl.c.Write(buf.Bytes())
	seen := map[uint64]bool{}
	inOrder := true
	for i := range n {
		cookie, code, _ := cl.reply(0)
		if code != 0 || seen[cookie] || cookie >= n {
			t.Fatalf("reply %d: cookie %d errno %d", i, cookie, code)
		}
		if cookie != uint64(i) {
			inOrder = false
		}
		seen[cookie] = true
	}
	if inOrder {
		t.Error("200 writes with varying latency all replied in order: requests are not served concurrently")
	}
	for i := range n {
		got := make([]byte, 4096)
		dev.ReadAt(got, int64(i)*4096)
		if !bytes.Equal(got, bytes.Repeat([]byte{byte(i)}, 4096)) {
			t.Fatalf("block %d wrong", i)
		}
	}
}

func TestHostileHandshakes(t *testing.T) {
	_, sock := serve(t, blockdev.NewMem(testSize), false)
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	// A 4 GiB option: refused, never allocated.
	c, _ := net.Dial("unix", sock)
	io.ReadFull(c, make([]byte, 18))
	h := binary.BigEndian.AppendUint32(nil, clientFixed)
	h = binary.BigEndian.AppendUint64(h, magicOpt)
	h = binary.BigEndian.AppendUint32(h, optGo)
	h = binary.BigEndian.AppendUint32(h, 0xffffffff)
	c.Write(h)
	var rep [20]byte
	io.ReadFull(c, rep[:])
	if binary.BigEndian.Uint32(rep[12:]) != repErrTooBig {
		t.Errorf("4 GiB option answered %#x, want NBD_REP_ERR_TOO_BIG", binary.BigEndian.Uint32(rep[12:]))
	}
	c.Close()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Errorf("a 4 GiB option allocated %d MiB", grew>>20)
	}
	// Garbage instead of a handshake; an unknown export; a client that
	// vanishes in the middle of a write payload.
	c, _ = net.Dial("unix", sock)
	c.Write(bytes.Repeat([]byte{0xff}, 100))
	c.Close()
	c, _ = net.Dial("unix", sock)
	io.ReadFull(c, make([]byte, 18))
	c.Write(binary.BigEndian.AppendUint32(nil, clientFixed))
	c.Write(append(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, magicOpt), optExportName), 0, 0, 0, 4, 'n', 'o', 'p', 'e'))
	c.Close()
	cl := dial(t, sock, "vm1/disk0")
	cl.write(append(reqBytes(cmdWrite, 0, 1, 0, 1<<20), make([]byte, 100)...))
	cl.c.Close()
	// Listing, and unsupported options.
	ok := dial(t, sock, "vm1/disk0")
	if code, _ := ok.do(cmdRead, 0, 0, nil, 4096); code != 0 {
		t.Fatal("server hurt by hostile clients")
	}
}

func TestShutdownDrains(t *testing.T) {
	dev := &gateDev{Device: blockdev.NewMem(testSize), want: 50, all: make(chan struct{}), open: make(chan struct{})}
	s, sock := serve(t, dev, false)
	cl := dial(t, sock, "vm1/disk0")
	var buf bytes.Buffer
	for i := range 50 {
		buf.Write(reqBytes(cmdWrite, 0, uint64(i), uint64(i)*4096+4096, 4096))
		buf.Write(bytes.Repeat([]byte{9}, 4096))
	}
	cl.write(buf.Bytes())
	// Every write has been read and is in flight (held at the gate) when
	// Shutdown begins.
	select {
	case <-dev.all:
	case <-time.After(waitfor.Patience):
		t.Fatalf("the server took %d of 50 writes", dev.entered.Load())
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.Shutdown(context.Background()) }()
	close(dev.open)
	for range 50 {
		if _, code, _ := cl.reply(0); code != 0 {
			t.Fatalf("a write read before Shutdown failed: errno %d", code)
		}
	}
	wg.Wait()
}

// pipeServe runs one connection of a fresh server over net.Pipe, feeding
// it input, and returns once the server closed the connection.
func pipeServe(t *testing.T, input []byte, handshake bool) {
	pipeServeWith(t, input, handshake, false)
}

// pipeServeWith is pipeServe; with structured, the handshake also
// negotiates structured replies and selects base:allocation.
func pipeServeWith(t *testing.T, input []byte, handshake, structured bool) {
	s := NewServer(quiet())
	s.Add(Export{Name: "d", Device: blockdev.NewMem(1 << 20)})
	a, b := net.Pipe()
	c := &conn{s: s, nc: a, quit: make(chan struct{})}
	done := make(chan struct{})
	go func() { c.serve(); close(done) }()
	go io.Copy(io.Discard, b)
	if handshake {
		b.Write(binary.BigEndian.AppendUint32(nil, clientFixed|clientNoZero))
		if structured {
			b.Write(optBytes(optStructured, nil))
			b.Write(optBytes(optSetMeta, metaData("d", BaseAllocation)))
		}
		opt := binary.BigEndian.AppendUint64(nil, magicOpt)
		opt = binary.BigEndian.AppendUint32(opt, optExportName)
		opt = binary.BigEndian.AppendUint32(opt, 1)
		b.Write(append(opt, 'd'))
	}
	b.Write(input)
	b.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not finish the connection")
	}
}

func FuzzHandshake(f *testing.F) {
	opt := binary.BigEndian.AppendUint32(nil, clientFixed)
	opt = binary.BigEndian.AppendUint64(opt, magicOpt)
	opt = binary.BigEndian.AppendUint32(opt, optList)
	f.Add(binary.BigEndian.AppendUint32(opt, 0))
	goOpt := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(nil, clientFixed), magicOpt), optGo)
	f.Add(append(binary.BigEndian.AppendUint32(goOpt, 9), 0, 0, 0, 1, 'd', 0, 1, 0, 3))
	meta := binary.BigEndian.AppendUint32(nil, clientFixed)
	meta = append(meta, optBytes(optStructured, nil)...)
	meta = append(meta, optBytes(optListMeta, metaData("d"))...)
	meta = append(meta, optBytes(optSetMeta, metaData("d", BaseAllocation, "base:"))...)
	meta = append(meta, optBytes(optStructured, nil)...)
	f.Add(append(meta, optBytes(optGo, []byte{0, 0, 0, 1, 'd', 0, 0})...))
	f.Fuzz(func(t *testing.T, in []byte) { pipeServe(t, in, false) })
}

// optBytes encodes an option.
func optBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// FuzzMetaOption: any option data decodes to queries or an error, and
// what decodes encodes back to the same bytes.
func FuzzMetaOption(f *testing.F) {
	f.Add(metaData("d", BaseAllocation))
	f.Add(metaData("", "base:", "vrep:changed:1"))
	f.Add(metaData("d"))
	f.Add([]byte{0, 0, 0, 1, 'd', 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := decodeMeta(in)
		if err != nil {
			return
		}
		if got := metaData(r.export, r.queries...); !bytes.Equal(got, in) {
			t.Fatalf("decode then encode: % x, want % x", got, in)
		}
	})
}

// FuzzStatusRequest: requests after structured replies and
// base:allocation are negotiated, block status among them.
func FuzzStatusRequest(f *testing.F) {
	f.Add(reqBytes(cmdStatus, 0, 1, 0, 1<<20))
	f.Add(reqBytes(cmdStatus, cfReqOne, 2, 4096, 1))
	f.Add(reqBytes(cmdStatus, 0, 3, 1<<20-512, 4096))
	f.Add(append(reqBytes(cmdRead, cfDF, 4, 0, 512), reqBytes(cmdStatus, 1<<7, 5, 0, 0xffffffff)...))
	f.Fuzz(func(t *testing.T, in []byte) { pipeServeWith(t, in, true, true) })
}

func FuzzRequest(f *testing.F) {
	f.Add(reqBytes(cmdRead, 0, 1, 0, 512))
	f.Add(append(reqBytes(cmdWrite, cfFUA, 2, 512, 4), 1, 2, 3, 4))
	f.Add(reqBytes(cmdZeroes, cfNoHole, 3, 0, 1<<20))
	f.Add(reqBytes(cmdWrite, 0, 4, 0, 0xffffffff))
	f.Fuzz(func(t *testing.T, in []byte) { pipeServe(t, in, true) })
}

// TestManyConnections: eight clients write and read their own stripes at
// the same time; each sees exactly its own data.
func TestManyConnections(t *testing.T) {
	dev := blockdev.NewMem(testSize)
	_, sock := serve(t, dev, false)
	const clients, stripe = 8, testSize / 8
	var wg sync.WaitGroup
	errs := make(chan string, clients)
	for i := range clients {
		cl := dial(t, sock, "vm1/disk0")
		wg.Add(1)
		go func() {
			defer wg.Done()
			base := uint64(i * stripe)
			for j := range 64 {
				p := bytes.Repeat([]byte{byte(i*64 + j)}, 4096)
				cl.c.Write(append(reqBytes(cmdWrite, 0, uint64(j), base+uint64(j)*4096, 4096), p...))
				var h [16]byte
				if _, err := io.ReadFull(cl.c, h[:]); err != nil || binary.BigEndian.Uint32(h[4:]) != 0 {
					errs <- "write failed"
					return
				}
			}
			cl.c.Write(reqBytes(cmdRead, 0, 99, base, 64*4096))
			var h [16]byte
			data := make([]byte, 64*4096)
			if _, err := io.ReadFull(cl.c, h[:]); err != nil || binary.BigEndian.Uint32(h[4:]) != 0 {
				errs <- "read failed"
				return
			}
			io.ReadFull(cl.c, data)
			for j := range 64 {
				if data[j*4096] != byte(i*64+j) || data[j*4096+4095] != byte(i*64+j) {
					errs <- "a client read data that is not its own"
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
}

// gatedDev is a blockdev.Submitter whose writes complete only when the
// test opens the gate; writes at failOff fail at Submit, writes at
// waitFailOff fail at Wait.
type gatedDev struct {
	blockdev.Device
	gate chan struct{}
}

const (
	failOff     = 64 << 10
	waitFailOff = 128 << 10
)

type gatedPending struct {
	gate chan struct{}
	err  error
}

func (p gatedPending) Wait() error           { <-p.gate; return p.err }
func (p gatedPending) Done() <-chan struct{} { return p.gate }

func (d gatedDev) Submit(p []byte, off int64) (blockdev.Pending, error) {
	switch off {
	case failOff:
		return nil, errors.New("submit refused")
	case waitFailOff:
		return gatedPending{d.gate, errors.New("write failed")}, nil
	}
	if _, err := d.Device.WriteAt(p, off); err != nil {
		return nil, err
	}
	return gatedPending{gate: d.gate}, nil
}

// TestSubmittedWrites: on a device that takes writes without waiting
// (blockdev.Submitter), a plain write is answered only once it has
// completed, a failure at either step is an error reply that keeps the
// connection, and reads, FUA writes and flushes are served meanwhile.
func TestSubmittedWrites(t *testing.T) {
	dev := gatedDev{blockdev.NewMem(testSize), make(chan struct{})}
	_, sock := serve(t, dev, false)
	cl := dial(t, sock, "vm1/disk0")
	var buf bytes.Buffer
	for i := range 10 {
		buf.Write(reqBytes(cmdWrite, 0, uint64(i), uint64(i)*4096, 4096))
		buf.Write(bytes.Repeat([]byte{byte(i + 1)}, 4096))
	}
	buf.Write(reqBytes(cmdWrite, 0, 100, failOff, 4096))
	buf.Write(make([]byte, 4096))
	buf.Write(reqBytes(cmdWrite, 0, 101, waitFailOff, 4096))
	buf.Write(make([]byte, 4096))
	cl.write(buf.Bytes())
	// The refused submission is answered at once, and nothing else.
	if cookie, code, _ := cl.reply(0); cookie != 100 || code != errIO {
		t.Fatalf("first reply: cookie %d errno %d, want the refused write (100) with EIO", cookie, code)
	}
	cl.c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var one [1]byte
	if n, _ := cl.c.Read(one[:]); n != 0 {
		t.Fatal("a reply came before any submitted write completed")
	}
	cl.c.SetReadDeadline(time.Time{})
	close(dev.gate)
	seen := map[uint64]bool{}
	for range 11 {
		cookie, code, _ := cl.reply(0)
		want := uint32(0)
		if cookie == 101 {
			want = errIO
		}
		if code != want || seen[cookie] {
			t.Fatalf("cookie %d: errno %d, want %d (seen before: %v)", cookie, code, want, seen[cookie])
		}
		seen[cookie] = true
	}
	for i := range 10 {
		code, data := cl.do(cmdRead, 0, uint64(i)*4096, nil, 4096)
		if code != 0 || !bytes.Equal(data, bytes.Repeat([]byte{byte(i + 1)}, 4096)) {
			t.Fatalf("block %d: errno %d", i, code)
		}
	}
	if code, _ := cl.do(cmdWrite, cfFUA, 0, bytes.Repeat([]byte{7}, 4096), 4096); code != 0 {
		t.Fatalf("FUA write: errno %d", code)
	}
	if code, _ := cl.do(cmdFlush, 0, 0, nil, 0); code != 0 {
		t.Fatalf("flush: errno %d", code)
	}
}

// nowDev is a blockdev.NowSubmitter whose Submit leaves writes pending
// until the gate opens and whose SubmitNow completes them at once; it
// counts the calls of each.
type nowDev struct {
	gatedDev
	now, later *atomic.Int32
}

func (d nowDev) Submit(p []byte, off int64) (blockdev.Pending, error) {
	d.later.Add(1)
	return d.gatedDev.Submit(p, off)
}

func (d nowDev) SubmitNow(p []byte, off int64) (blockdev.Pending, error) {
	d.now.Add(1)
	if _, err := d.Device.WriteAt(p, off); err != nil {
		return nil, err
	}
	return gatedPending{gate: closedGate}, nil
}

var closedGate = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// TestWriteAloneSubmittedNow: a write alone in flight (a client at a queue
// depth of one, each request sent once the last is answered) goes to
// SubmitNow and is answered as soon as it returns, however fast the
// client follows up; writes sent together go to Submit and wait for
// their completions.
func TestWriteAloneSubmittedNow(t *testing.T) {
	dev := nowDev{gatedDev{blockdev.NewMem(testSize), make(chan struct{})}, new(atomic.Int32), new(atomic.Int32)}
	_, sock := serve(t, dev, false)
	cl := dial(t, sock, "vm1/disk0")
	const n = 300
	for i := range n {
		if code, _ := cl.do(cmdWrite, 0, uint64(i%64)*4096, bytes.Repeat([]byte{byte(i)}, 4096), 4096); code != 0 {
			t.Fatalf("write %d: errno %d", i, code)
		}
		if i%10 == 0 {
			if code, _ := cl.do(cmdFlush, 0, 0, nil, 0); code != 0 {
				t.Fatalf("flush after write %d: errno %d", i, code)
			}
		}
	}
	if now, later := dev.now.Load(), dev.later.Load(); now != n || later != 0 {
		t.Fatalf("%d writes alone in flight: %d went to SubmitNow, %d to Submit", n, now, later)
	}
	// Sent together: the first may be alone, the rest are not, and
	// their answers wait for the gate.
	var buf bytes.Buffer
	for i := range 8 {
		buf.Write(reqBytes(cmdWrite, 0, uint64(i), uint64(i)*4096, 4096))
		buf.Write(bytes.Repeat([]byte{0xee}, 4096))
	}
	cl.write(buf.Bytes())
	waitfor.True(t, "the queued writes reach Submit", func() bool { return dev.later.Load() >= 7 })
	close(dev.gate)
	for range 8 {
		if _, code, _ := cl.reply(0); code != 0 {
			t.Fatalf("queued write: errno %d", code)
		}
	}
}

// TestDetachInUse: an export a client uses is not detached without force,
// the client is named, and it keeps being served; with force the client
// is disconnected; new clients cannot choose a detached export.
func TestDetachInUse(t *testing.T) {
	s, sock := serve(t, blockdev.NewMem(testSize), false)
	cl := dial(t, sock, "vm1/disk0")
	conns := s.Connections("vm1/disk0")
	if len(conns) != 1 || conns[0] != fmt.Sprintf("%s pid %d", comm(t), os.Getpid()) {
		t.Fatalf("Connections = %q, want this process", conns)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if n, err := s.Detach(ctx, "vm1/disk0", false); !errors.Is(err, ErrInUse) || n != 1 {
		t.Fatalf("Detach while connected = %d, %v; want 1, ErrInUse", n, err)
	}
	if code, _ := cl.do(cmdRead, 0, 0, nil, 4096); code != 0 {
		t.Fatalf("a refused Detach broke the connection: error %d", code)
	}
	if n, err := s.Detach(context.Background(), "vm1/disk0", true); err != nil || n != 1 {
		t.Fatalf("forced Detach = %d, %v", n, err)
	}
	if _, err := io.ReadFull(cl.c, make([]byte, 1)); err == nil {
		t.Fatal("the connection is still open after a forced Detach")
	}
	if len(s.Connections("vm1/disk0")) != 0 {
		t.Fatal("a connection is still counted after a forced Detach")
	}
	if n, err := s.Detach(context.Background(), "vm1/disk0", false); err != nil || n != 0 {
		t.Fatalf("Detach of an unused export = %d, %v", n, err)
	}
}

func comm(t *testing.T) string {
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// fencedDev refuses writes as a fenced tracked volume does.
type fencedDev struct{ blockdev.Device }

func (fencedDev) WriteAt(p []byte, off int64) (int, error) {
	return 0, fmt.Errorf("fenced: %w", blockdev.ErrReadOnly)
}

// TestFencedDeviceRefusesWrites: a device that turned read-only under a
// writable export (a superseded copy of a failed-over disk) answers
// writes with EPERM and keeps serving reads.
func TestFencedDeviceRefusesWrites(t *testing.T) {
	_, sock := serve(t, fencedDev{blockdev.NewMem(testSize)}, false)
	cl := dial(t, sock, "vm1/disk0")
	if code, _ := cl.do(cmdWrite, 0, 0, make([]byte, 512), 512); code != errPerm {
		t.Fatalf("write to a fenced device: errno %d, want EPERM", code)
	}
	if code, _ := cl.do(cmdRead, 0, 0, nil, 512); code != 0 {
		t.Fatalf("read: errno %d", code)
	}
}
