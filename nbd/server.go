// Package nbd serves block devices over the NBD protocol (fixed newstyle
// handshake, simple or structured replies, block status with
// base:allocation; see meta.go) on unix sockets and TCP, for qemu, qemu-img,
// nbdcopy, nbdinfo, nbdfuse, fio's nbd engine and the kernel's nbd-client.
//
// Many requests are served at once per connection and replies go out as
// they complete, out of order. Every request is validated before anything
// is allocated for it; a bad request gets the protocol's error reply and
// the connection goes on; only a request whose framing cannot be trusted
// (bad magic) closes its connection. The server never closes because of
// one client.
//
// go-nbd (v0.3.2) provides the protocol constants; its server handles one
// request at a time, has no FLUSH, TRIM or WRITE_ZEROES, grows the file
// on a write past the end and allocates any export-name length a client
// sends, so the server loop here is our own.
package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vrep-io/vrep/blockdev"
)

// Export is one device served under a name.
type Export struct {
	Name     string
	Device   blockdev.Device
	ReadOnly bool
	// Contexts, if set, lists the metadata contexts offered besides
	// base:allocation; it is asked at each metadata option, so the list
	// may change while the export is served.
	Contexts func() []Context
}

// Server serves exports to any number of connections. It is safe for
// concurrent use; exports may be added and removed while serving.
type Server struct {
	Log *slog.Logger

	mu        sync.RWMutex
	exports   map[string]*Export
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closing   bool
	wg        sync.WaitGroup
}

// NewServer returns a server with no exports.
func NewServer(log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	return &Server{Log: log, exports: map[string]*Export{}, listeners: map[net.Listener]struct{}{}, conns: map[*conn]struct{}{}}
}

// Add adds or replaces an export.
func (s *Server) Add(e Export) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.exports[e.Name] = &e
}

// Remove removes an export; connections already using it keep it.
func (s *Server) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.exports, name)
}

// ErrInUse is returned by Detach when clients are connected to the export.
var ErrInUse = errors.New("nbd: export in use")

// Connections describes the connections using an export, one string
// each: the client's process ("qemu-io pid 42") when it came over a
// unix socket, else its address.
func (s *Server) Connections(name string) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for c := range s.conns {
		if c.bound == name {
			out = append(out, c.peer())
		}
	}
	sort.Strings(out)
	return out
}

// Detach removes an export once no connection uses it, atomically: no
// client can choose it meanwhile. Without force it waits until ctx ends
// for the connections using it to end (a client that has just closed is
// not yet seen gone); if some remain, it changes nothing and returns their
// count with an error wrapping ErrInUse. With force it removes the export
// at once and stops those connections (requests already read are
// answered, then the connection closes), waiting for them until ctx ends,
// then closing them at once. It returns how many connections used it.
func (s *Server) Detach(ctx context.Context, name string, force bool) (int, error) {
	for {
		s.mu.Lock()
		var users []*conn
		for c := range s.conns {
			if c.bound == name {
				users = append(users, c)
			}
		}
		if len(users) > 0 && !force {
			s.mu.Unlock()
			select {
			case <-users[0].done:
				continue
			case <-ctx.Done():
				return len(users), fmt.Errorf("%w: %s has %d connections", ErrInUse, name, len(users))
			}
		}
		delete(s.exports, name)
		for _, c := range users {
			c.stop()
		}
		s.mu.Unlock()
		for _, c := range users {
			select {
			case <-c.done:
			case <-ctx.Done():
				c.nc.Close()
				<-c.done
			}
		}
		return len(users), nil
	}
}

// bind makes e the export of c unless it has been removed since it was
// looked up: Detach sees every connection that holds an export.
func (s *Server) bind(c *conn, e *Export) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exports[e.Name] != e {
		return false
	}
	c.exp, c.bound = e, e.Name
	return true
}

func (s *Server) lookup(name string) *Export {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if name == "" && len(s.exports) == 1 {
		for _, e := range s.exports {
			return e // the default export, when there is just one
		}
	}
	return s.exports[name]
}

func (s *Server) names() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for n := range s.exports {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Serve accepts connections on l until Shutdown or l fails.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return net.ErrClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.RLock()
			closing := s.closing
			s.mu.RUnlock()
			if closing {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		c := &conn{s: s, nc: nc, quit: make(chan struct{}), done: make(chan struct{}), pid: peerPID(nc)}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			nc.Close()
			return nil
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			c.serve()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			close(c.done)
		}()
	}
}

// Shutdown stops accepting, lets every connection finish the requests it
// has read (their replies are sent), then closes them. It returns when all
// are done or ctx ends (then connections are closed at once).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.stop()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.nc.Close()
		}
		s.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

// conn is one client connection.
type conn struct {
	s    *Server
	nc   net.Conn
	r    *bufio.Reader
	exp  *Export
	quit chan struct{}
	done chan struct{} // closed once the connection is gone
	once sync.Once
	pid  int // the client's process, over a unix socket; else 0

	bound string // the export chosen; guarded by s.mu

	// Negotiated during the handshake, read-only afterwards.
	structured bool          // NBD_OPT_STRUCTURED_REPLY
	meta       []metaContext // selected by NBD_OPT_SET_META_CONTEXT
	metaExport *Export       // the export meta was selected for

	wmu   sync.Mutex // guards w
	w     *bufio.Writer
	ready atomic.Int32 // replies waiting for wmu

	slots  chan struct{}         // bounds requests in flight
	budget chan struct{}         // payload budget, in 1 MiB tokens
	work   chan job              // to an idle worker
	idle   chan struct{}         // closed when no more work comes: workers end
	subs   chan sub              // submitted writes, in order, to the completer
	sub    blockdev.Submitter    // the device, when subs is set
	now    blockdev.NowSubmitter // the device, if it is one; else nil
	wg     sync.WaitGroup
}

// sub is a write submitted to a blockdev.Submitter, waiting for its reply.
type sub struct {
	j job
	p blockdev.Pending
}

// job is a request handed to a worker: its payload buffer (for a read or a
// write) and the budget tokens it holds.
type job struct {
	q      request
	buf    []byte
	tokens int
}

func (c *conn) stop() {
	c.once.Do(func() {
		close(c.quit)
		// Wake a reader blocked on the socket: it ends the request loop,
		// then in-flight requests drain.
		c.nc.SetReadDeadline(time.Now())
	})
}

// peerPID returns the process at the other end of a unix socket, or 0.
func peerPID(nc net.Conn) int {
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return 0
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0
	}
	pid := 0
	raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			pid = int(cred.Pid)
		}
	})
	return pid
}

// peer names the client for an operator.
func (c *conn) peer() string {
	if c.pid == 0 {
		return c.nc.RemoteAddr().String()
	}
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(c.pid) + "/comm")
	if err != nil {
		return "pid " + strconv.Itoa(c.pid)
	}
	return strings.TrimSpace(string(comm)) + " pid " + strconv.Itoa(c.pid)
}

func (c *conn) logf(level slog.Level, msg string, args ...any) {
	c.s.Log.Log(context.Background(), level, msg, append([]any{"remote", c.nc.RemoteAddr().String()}, args...)...)
}

func (c *conn) serve() {
	defer c.nc.Close()
	c.r = bufio.NewReaderSize(c.nc, 256<<10)
	c.w = bufio.NewWriterSize(c.nc, 256<<10)
	c.nc.SetDeadline(time.Now().Add(30 * time.Second))
	if err := c.handshake(); err != nil {
		if !errors.Is(err, errAbort) && !errors.Is(err, io.EOF) {
			c.logf(slog.LevelWarn, "nbd: handshake failed", "err", err)
		}
		return
	}
	c.nc.SetDeadline(time.Time{})
	select {
	case <-c.quit: // stopped during the handshake
		c.nc.SetReadDeadline(time.Now())
	default:
	}
	c.slots = make(chan struct{}, maxInFlight)
	c.budget = make(chan struct{}, maxBuffered>>20)
	c.work = make(chan job)
	c.idle = make(chan struct{})
	if dev, ok := c.exp.Device.(blockdev.Submitter); ok && !c.exp.ReadOnly {
		c.sub = dev
		c.subs = make(chan sub, maxInFlight)
		c.now, _ = c.exp.Device.(blockdev.NowSubmitter)
		c.wg.Add(1)
		go c.completer()
	}
	err := c.transmit()
	close(c.idle)
	if c.subs != nil {
		close(c.subs)
	}
	c.wg.Wait()
	c.wmu.Lock()
	c.w.Flush()
	c.wmu.Unlock()
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, errDisc) && !isStop(err, c.quit) {
		c.logf(slog.LevelWarn, "nbd: connection closed", "export", c.exp.Name, "err", err)
	}
}

func isStop(err error, quit chan struct{}) bool {
	select {
	case <-quit:
		return true
	default:
		return false
	}
}

var (
	errAbort = errors.New("nbd: client aborted")
	errDisc  = errors.New("nbd: client disconnected")
)

// ErrProtocol is wrapped by errors about a peer breaking the protocol.
var ErrProtocol = errors.New("nbd: protocol error")

func (c *conn) handshake() error {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicNBD)
	binary.BigEndian.PutUint64(hello[8:], magicOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNew|flagNoZeroes)
	if _, err := c.nc.Write(hello[:]); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.r, cf[:]); err != nil {
		return err
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^(clientFixed|clientNoZero) != 0 {
		return fmt.Errorf("%w: unknown client flags %#x", ErrProtocol, flags)
	}
	noZeroes := flags&clientNoZero != 0
	for {
		var hdr [16]byte
		if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
			return err
		}
		if binary.BigEndian.Uint64(hdr[0:]) != magicOpt {
			return fmt.Errorf("%w: bad option magic", ErrProtocol)
		}
		opt := binary.BigEndian.Uint32(hdr[8:])
		n := binary.BigEndian.Uint32(hdr[12:])
		if n > maxOption {
			// Never allocate what an unauthenticated client asks for.
			c.optReply(opt, repErrTooBig, []byte("option data too large"))
			c.w.Flush()
			return fmt.Errorf("%w: option %d with %d bytes of data", ErrProtocol, opt, n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.r, data); err != nil {
			return err
		}
		switch opt {
		case optExportName:
			e := c.s.lookup(string(data))
			if e == nil || !c.s.bind(c, e) {
				return fmt.Errorf("%w: unknown export %q", ErrProtocol, data)
			}
			c.choose(e)
			var b [10 + 124]byte
			binary.BigEndian.PutUint64(b[0:], uint64(e.Device.Size()))
			binary.BigEndian.PutUint16(b[8:], c.tflags(e))
			out := b[:]
			if noZeroes {
				out = b[:10]
			}
			c.w.Write(out)
			return c.w.Flush()
		case optAbort:
			c.optReply(opt, repAck, nil)
			c.w.Flush()
			return errAbort
		case optList:
			if n != 0 {
				c.optReply(opt, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
				break
			}
			for _, name := range c.s.names() {
				b := make([]byte, 4+len(name))
				binary.BigEndian.PutUint32(b, uint32(len(name)))
				copy(b[4:], name)
				c.optReply(opt, repServer, b)
			}
			c.optReply(opt, repAck, nil)
		case optInfo, optGo:
			e, err := c.infoGo(opt, data)
			if err != nil {
				return err
			}
			if e != nil && opt == optGo {
				return c.w.Flush()
			}
		case optStructured:
			c.optStructured(data)
		case optListMeta, optSetMeta:
			c.optMeta(opt, data)
		default:
			c.optReply(opt, repErrUnsup, nil)
		}
		if err := c.w.Flush(); err != nil {
			return err
		}
	}
}

// infoGo answers NBD_OPT_INFO and NBD_OPT_GO; it returns the export when
// the client may use it.
func (c *conn) infoGo(opt uint32, data []byte) (*Export, error) {
	if len(data) < 6 {
		c.optReply(opt, repErrInvalid, []byte("short request"))
		return nil, nil
	}
	nlen := binary.BigEndian.Uint32(data)
	if uint64(nlen)+6 > uint64(len(data)) {
		c.optReply(opt, repErrInvalid, []byte("name runs past the option"))
		return nil, nil
	}
	name := string(data[4 : 4+nlen])
	rest := data[4+nlen:]
	nreq := int(binary.BigEndian.Uint16(rest))
	if len(rest) != 2+2*nreq {
		c.optReply(opt, repErrInvalid, []byte("information request list has the wrong length"))
		return nil, nil
	}
	e := c.s.lookup(name)
	if e == nil || opt == optGo && !c.s.bind(c, e) {
		c.optReply(opt, repErrUnknown, []byte("no such export: "+name))
		return nil, nil
	}
	var info [12]byte
	binary.BigEndian.PutUint16(info[0:], infoExport)
	binary.BigEndian.PutUint64(info[2:], uint64(e.Device.Size()))
	binary.BigEndian.PutUint16(info[10:], c.tflags(e))
	c.optReply(opt, repInfo, info[:])
	for i := range nreq {
		if binary.BigEndian.Uint16(rest[2+2*i:]) == infoBlockSize {
			var bs [14]byte
			binary.BigEndian.PutUint16(bs[0:], infoBlockSize)
			binary.BigEndian.PutUint32(bs[2:], 1)
			binary.BigEndian.PutUint32(bs[6:], preferredBlock)
			binary.BigEndian.PutUint32(bs[10:], MaxRequest)
			c.optReply(opt, repInfo, bs[:])
		}
	}
	c.optReply(opt, repAck, nil)
	if opt == optGo {
		c.choose(e)
	}
	return e, nil
}

func (c *conn) optReply(opt, typ uint32, data []byte) {
	var h [20]byte
	binary.BigEndian.PutUint64(h[0:], magicRep)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	c.w.Write(h[:])
	c.w.Write(data)
}

// transmissionFlags says truthfully what an export does. CAN_MULTI_CONN
// holds because a flush syncs the device as a whole, covering writes
// completed on every connection.
func transmissionFlags(e *Export) uint16 {
	f := tfHasFlags | tfSendFlush | tfSendFUA | tfCanMultiConn
	if e.ReadOnly {
		return f | tfReadOnly
	}
	return f | tfSendTrim | tfSendZeroes
}

// request is one decoded transmission request.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	off    uint64
	length uint32
}

// decodeRequest decodes a 28-byte request header.
func decodeRequest(b []byte) (request, error) {
	if binary.BigEndian.Uint32(b[0:]) != magicRequest {
		return request{}, fmt.Errorf("%w: bad request magic %#x", ErrProtocol, binary.BigEndian.Uint32(b[0:]))
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:]),
		typ:    binary.BigEndian.Uint16(b[6:]),
		cookie: binary.BigEndian.Uint64(b[8:]),
		off:    binary.BigEndian.Uint64(b[16:]),
		length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

// validate returns the NBD error for a request, or 0. A request that
// carries a payload is validated before the payload is read.
func validate(q request, size int64, ro, status bool) uint32 {
	var okFlags uint16
	switch q.typ {
	case cmdStatus:
		if !status {
			return errInval // no metadata context selected
		}
		okFlags = cfReqOne | cfFUA
		if q.flags&^okFlags != 0 || q.length == 0 || q.off > uint64(size) || uint64(q.length) > uint64(size)-q.off {
			return errInval
		}
		return 0
	case cmdRead:
		okFlags = cfDF // harmless without structured replies
	case cmdWrite, cmdTrim:
		okFlags = cfFUA
	case cmdZeroes:
		okFlags = cfFUA | cfNoHole
	case cmdFlush:
	default:
		return errInval
	}
	if q.flags&^okFlags != 0 {
		return errInval
	}
	if q.typ == cmdFlush {
		return 0
	}
	if ro && q.typ != cmdRead {
		return errPerm
	}
	if q.length == 0 {
		return errInval
	}
	if (q.typ == cmdRead || q.typ == cmdWrite) && q.length > MaxRequest {
		return errInval
	}
	if q.off > uint64(size) || uint64(q.length) > uint64(size)-q.off {
		if q.typ == cmdRead || q.typ == cmdTrim {
			return errInval
		}
		return errNoSpc
	}
	return 0
}

func (c *conn) transmit() error {
	var hdr [28]byte
	size := c.exp.Device.Size()
	for {
		if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
			return err
		}
		q, err := decodeRequest(hdr[:])
		if err != nil {
			return err // the stream cannot be trusted any more
		}
		if q.typ == cmdDisc {
			return errDisc
		}
		code := validate(q, size, c.exp.ReadOnly, len(c.meta) > 0)
		if code != 0 {
			if q.typ == cmdWrite {
				// Keep the stream in step without holding the payload.
				if _, err := io.CopyN(io.Discard, c.r, int64(q.length)); err != nil {
					return err
				}
			}
			c.logf(slog.LevelInfo, "nbd: refused request", "export", c.exp.Name, "cmd", q.typ,
				"flags", q.flags, "offset", q.off, "length", q.length, "errno", code)
			c.replyTo(q, code, nil, true)
			continue
		}
		var buf []byte
		var tokens int
		if q.typ == cmdRead || q.typ == cmdWrite {
			tokens = (int(q.length) + 1<<20 - 1) >> 20
			if err := c.take(tokens); err != nil {
				return err
			}
			buf = getBuf(int(q.length))
			if q.typ == cmdWrite {
				if _, err := io.ReadFull(c.r, buf); err != nil {
					putBuf(buf)
					return err
				}
			}
		} else if q.typ == cmdStatus {
			tokens = 1 // its reply: up to half a MiB of descriptors
			if err := c.take(tokens); err != nil {
				return err
			}
		}
		select {
		case c.slots <- struct{}{}:
		case <-c.quit:
			putBuf(buf)
			return errDisc
		}
		if q.typ == cmdWrite && q.flags&cfFUA == 0 && c.subs != nil {
			c.submit(job{q, buf, tokens})
			continue
		}
		if q.typ == cmdFlush && c.now != nil && c.alone() {
			// Alone in flight: served here, with no hand-off to a worker
			// (the volume fsyncs its log in this goroutine too). A
			// request the client sends meanwhile waits for one fsync of
			// the log.
			c.do(job{q, buf, tokens})
			continue
		}
		c.dispatch(job{q, buf, tokens})
	}
}

// submit hands a plain write to the device without waiting for it; the
// completer replies once it has completed. The reader goes on to the next
// request, and a group commit of many writes costs the completer one
// wake-up and one reply write instead of a worker's per write.
//
// A write alone in flight (a guest at a queue depth of one: see alone)
// goes to a blockdev.NowSubmitter's SubmitNow, which does the device's
// work in this goroutine (a tracked volume writes its log itself), and
// is answered here when it has completed by then: no goroutine hand-off
// on its way, which at that depth costs more than the write.
func (c *conn) submit(j job) {
	submit := c.sub.Submit
	alone := c.alone()
	if c.now != nil && alone {
		submit = c.now.SubmitNow
	}
	p, err := submit(j.buf, int64(j.q.off))
	if err != nil {
		c.finish(j, err, true)
		return
	}
	if alone {
		select {
		case <-p.Done():
			c.finish(j, p.Wait(), true)
			return
		default:
		}
	}
	c.subs <- sub{j, p} // never blocks: slots bound the writes in flight
}

// completer replies to submitted writes in the order they were submitted,
// which is the order they complete in. Replies gather in the connection's
// buffer and go out in one write whenever the next write has not
// completed yet, or none is waiting.
func (c *conn) completer() {
	defer c.wg.Done()
	for {
		var s sub
		var ok bool
		select {
		case s, ok = <-c.subs:
		default:
			c.flushReplies()
			s, ok = <-c.subs
		}
		if !ok {
			c.flushReplies()
			return
		}
		select {
		case <-s.p.Done():
		default:
			c.flushReplies()
		}
		c.finish(s.j, s.p.Wait(), false)
	}
}

func (c *conn) flushReplies() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.w.Buffered() > 0 {
		if err := c.w.Flush(); err != nil {
			c.nc.Close() // the peer is gone; the reader sees it next
		}
	}
}

// dispatch hands a request to an idle worker, or starts one. Workers stay
// for the connection's life: a goroutine per request paid for growing its
// stack every time (5% of the CPU at 4 KiB random writes).
func (c *conn) dispatch(j job) {
	select {
	case c.work <- j:
	default:
		c.wg.Add(1)
		go c.worker(j)
	}
}

func (c *conn) worker(j job) {
	defer c.wg.Done()
	for {
		c.do(j)
		select {
		case j = <-c.work:
		case <-c.idle:
			return
		}
	}
}

// alone reports whether the request just read is the only one in flight
// and no other has arrived behind it: its client waits for the answer
// before it sends more (a queue depth of one). A client that sends
// requests together keeps the server's hand-offs, which batch its
// writes: served here one by one, they would each cost a log write.
func (c *conn) alone() bool { return len(c.slots) == 1 && c.r.Buffered() == 0 }

// take reserves payload budget.
func (c *conn) take(tokens int) error {
	for range tokens {
		select {
		case c.budget <- struct{}{}:
		case <-c.quit:
			return errDisc
		}
	}
	return nil
}

func (c *conn) do(j job) {
	q, buf, dev := j.q, j.buf, c.exp.Device
	off := int64(q.off)
	var err error
	switch q.typ {
	case cmdRead:
		_, err = dev.ReadAt(buf, off)
	case cmdWrite:
		if q.flags&cfFUA != 0 {
			_, err = blockdev.WriteAtSync(dev, buf, off)
		} else {
			_, err = dev.WriteAt(buf, off)
		}
	case cmdFlush:
		err = dev.Sync()
	case cmdTrim, cmdZeroes:
		if q.typ == cmdTrim {
			err = blockdev.Trim(dev, off, int64(q.length))
		} else {
			err = blockdev.WriteZeroes(dev, off, int64(q.length), q.flags&cfNoHole != 0)
		}
		if err == nil && q.flags&cfFUA != 0 {
			err = dev.Sync()
		}
	case cmdStatus:
		if err = c.blockStatus(q); err == nil {
			c.release(j)
			return
		}
	}
	c.finish(j, err, true)
}

// finish replies to a request served with err and releases what it held.
// With flush false the reply stays buffered for the caller to flush.
func (c *conn) finish(j job, err error, flush bool) {
	q := j.q
	code := uint32(0)
	if err != nil {
		code = errIO
		switch {
		case errors.Is(err, blockdev.ErrOutOfRange):
			code = errInval
		case errors.Is(err, blockdev.ErrReadOnly):
			// A read-only or fenced device (a superseded copy of a
			// failed-over disk): NBD has no EROFS.
			code = errPerm
		}
		c.logf(slog.LevelError, "nbd: request failed", "export", c.exp.Name, "cmd", q.typ, "offset", q.off, "length", q.length, "err", err)
	}
	var data []byte
	if q.typ == cmdRead && code == 0 {
		data = j.buf
	}
	// The slot goes before the reply: a client that answers the reply
	// with its next request must find that request alone in flight.
	<-c.slots
	c.replyTo(q, code, data, flush)
	c.releaseBufs(j)
}

// release gives back what an answered request held.
func (c *conn) release(j job) {
	c.releaseBufs(j)
	<-c.slots
}

// releaseBufs gives back a request's buffer and payload budget.
func (c *conn) releaseBufs(j job) {
	putBuf(j.buf)
	for range j.tokens {
		<-c.budget
	}
}

// reply sends a simple reply. Replies that are ready at the same moment
// share one write: a reply is flushed unless another is already waiting
// to be written after it (which will flush), or flush is false (the
// caller flushes). Waiting for requests still being served would hold
// finished replies back and stall the client.
func (c *conn) reply(cookie uint64, code uint32, data []byte, flush bool) {
	var h [16]byte
	binary.BigEndian.PutUint32(h[0:], magicReply)
	binary.BigEndian.PutUint32(h[4:], code)
	binary.BigEndian.PutUint64(h[8:], cookie)
	c.send(flush, h[:], data)
}

// send writes one reply made of parts, flushing as reply says.
func (c *conn) send(flush bool, parts ...[]byte) {
	c.ready.Add(1)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for _, p := range parts {
		c.w.Write(p)
	}
	if c.ready.Add(-1) == 0 && flush {
		if err := c.w.Flush(); err != nil {
			c.nc.Close() // the peer is gone; the reader sees it next
		}
	}
}

// Buffers come from per-size-class pools (4 KiB up to MaxRequest).
var pools [14]sync.Pool

func class(n int) int {
	c := 0
	for s := 4096; s < n; s <<= 1 {
		c++
	}
	return c
}

func getBuf(n int) []byte {
	c := class(n)
	if b, ok := pools[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 4096<<c)
}

func putBuf(b []byte) {
	if b == nil {
		return
	}
	c := class(cap(b))
	if 4096<<c != cap(b) {
		return
	}
	pools[c].Put(&b)
}
