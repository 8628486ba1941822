// Package receive is the replica's side of a stream: it authorizes a
// primary by its certificate, confines it to its own storage root, runs
// one stream per disk, applies what arrives through replica/store and
// acknowledges only what is durable.
package receive

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"github.com/vrep-io/vrep/replica/health"
	"github.com/vrep-io/vrep/replica/store"
	"github.com/vrep-io/vrep/replica/wire"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/internal/pki"
	"github.com/vrep-io/vrep/internal/vfs"
)

// ServerConfig configures a replica.
type ServerConfig struct {
	// Data is the replica's storage; each primary has its own root under it.
	Data string
	// TLS must require and verify client certificates (pki.ServerConfig).
	TLS *tls.Config
	// Allow maps an authorized primary's certificate name to its root
	// (a directory name under Data; empty: the primary's name).
	Allow map[string]string
	// AllowAny admits any primary the CA vouches for, rooted at its name.
	AllowAny bool
	// Catalog, if set, keeps the history of every disk: points and undo
	// entries (see Catalog).
	Catalog *store.Catalog
	// IdleTimeout is how long an open stream may stay silent (a primary
	// sends keepalives while it has nothing to ship), or a frame stand
	// still mid-transfer, before the replica gives up on it (default 5
	// minutes).
	IdleTimeout time.Duration
	// OnPromote, if set, takes a VM over on a planned failover
	// (wire.Promote): primary is the asking primary's certificate name
	// and root its storage root. It returns the answer, or an error whose
	// wire code (PromoteError) tells the primary what to do. Without it
	// the replica refuses handovers: it holds no primary role.
	OnPromote func(ctx context.Context, primary, root string, req wire.Promote) (wire.Promoted, error)
	// OnAdopted, if set, is told that the old primary of a VM promoted
	// here holds the replica copy now (wire.MsgAdopted): the VM's streams
	// back to it need not wait for their next retry.
	OnAdopted func(vm string)
	// OnReverse, if set, makes this host keep the replica of a VM that
	// failed over from it (wire.Reverse): primary is the asking host.
	OnReverse func(ctx context.Context, primary, root string, req wire.Reverse) (wire.Reversed, error)
	Log       *slog.Logger
}

// PromoteError is a refused handover: Code tells the primary what to do
// (wire.CodeRetry: ask again later; otherwise the VM stays where it is).
type PromoteError struct {
	Code uint16
	Err  error
}

func (e *PromoteError) Error() string { return e.Err.Error() }
func (e *PromoteError) Unwrap() error { return e.Err }

// ErrNoAnswer, wrapped in what OnPromote or OnReverse returns, says the
// outcome is not settled (a role change of the VM is under way, or one
// was persisted and is not finished): the session ends without an
// answer. NB: any answered refusal tells the asker that nothing changed,
// and an old primary told so takes writes again; an unanswered one stays
// fenced and asks again.
var ErrNoAnswer = errors.New("replica: the outcome is not settled yet")

// diskStream is a disk's replication stream on the replica.
type diskStream struct {
	conn net.Conn
	done chan struct{} // closed once the stream let go of the disk
}

// StreamInfo is what the replica knows of a disk's stream from its
// primary.
type StreamInfo struct {
	Primary string // the primary's certificate name; "" if none came
	// Connected says whether a stream is open; Since is when it opened or
	// closed (or when the server started, if none came since).
	Connected bool
	Since     time.Time
	// Interval and PointsEvery are the copy frequency and point interval
	// the primary last announced (Settings); zero PointsEvery: unknown.
	Interval, PointsEvery time.Duration
	// Received counts the frame bytes (decoded) that primaries sent for
	// the disk since the server started, over all its streams.
	Received int64
	// CopyBytes counts the bytes of initial copies received for the
	// disk since the server started.
	CopyBytes int64
}

// Server is a replica: it receives initial copies and records over mutual
// TLS and applies them. It is safe for concurrent use.
type Server struct {
	cfg     ServerConfig
	fs      vfs.FS
	started time.Time
	mu      sync.Mutex
	streams map[string]*StreamInfo // by ROOT/VM/DISK
	busy    map[string]*diskStream // disk directories with a stream
	conns   map[net.Conn]struct{}
	ls      map[net.Listener]struct{}
	fences  map[string]fence // ROOT/VM → why its streams are refused (Fence)
	// reserved: disk directories a seed import holds, and why (Reserve).
	reserved map[string]string
	closed   bool
	wg       sync.WaitGroup
}

// NewServer returns a replica server.
func NewServer(cfg ServerConfig) *Server {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	return &Server{cfg: cfg, fs: vfs.OS{}, started: time.Now(), streams: map[string]*StreamInfo{}, busy: map[string]*diskStream{}, conns: map[net.Conn]struct{}{}, ls: map[net.Listener]struct{}{}}
}

// Close stops accepting, closes every stream (each applied batch is
// durable before its ack, so nothing acknowledged is lost) and waits.
// It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for l := range s.ls {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// Serve accepts connections on l until Close.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return l.Close()
	}
	s.ls[l] = struct{}{}
	s.mu.Unlock()
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return nil
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serve(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// fence is why a VM's streams are refused, and with which code.
type fence struct {
	code uint16
	why  string
}

// Fence refuses every stream of the disks of VM under root from now on,
// with wire.CodeSuperseded and why (the VM failed over here): it closes
// the streams open now and returns once they let go of their disks, so
// that nothing applies to them afterwards.
func (s *Server) Fence(root, vm, why string) { s.fence(root, vm, fence{wire.CodeSuperseded, why}) }

// FenceRetry is Fence with wire.CodeRetry: the VM's streams are refused
// for a while (a planned failover is making this host's image the
// replica copy), and their primary retries.
func (s *Server) FenceRetry(root, vm, why string) { s.fence(root, vm, fence{wire.CodeRetry, why}) }

func (s *Server) fence(root, vm string, f fence) {
	s.mu.Lock()
	if s.fences == nil {
		s.fences = map[string]fence{}
	}
	s.fences[root+"/"+vm] = f
	prefix := filepath.Join(s.cfg.Data, root, vm) + string(filepath.Separator)
	var open []*diskStream
	for dir, ds := range s.busy {
		if strings.HasPrefix(dir, prefix) {
			ds.conn.Close()
			open = append(open, ds)
		}
	}
	s.mu.Unlock()
	for _, ds := range open {
		<-ds.done
	}
}

var (
	// ErrReserved refuses a stream to a disk a seed import holds.
	ErrReserved = errors.New("replica: refused")
	// ErrStreaming refuses a reservation of a disk with a stream open.
	ErrStreaming = errors.New("replica: the primary streams to the disk")
)

// Reserve keeps every stream off the disks (ROOT/VM/DISK keys) until
// release is called: one that arrives meanwhile is refused with
// wire.CodeRetry, told why ("is being imported from seed media..."), and
// its primary retries later. A disk with a stream open now is not taken
// (ErrStreaming), and then nothing is reserved: a seed import must never
// replace an image a stream writes into.
func (s *Server) Reserve(keys []string, why string) (release func(), err error) {
	dirs := make([]string, len(keys))
	for i, k := range keys {
		dirs[i] = filepath.Join(s.cfg.Data, filepath.FromSlash(k))
	}
	s.mu.Lock()
	type openStream struct {
		ds  *diskStream
		key string
	}
	var open []openStream
	for i, dir := range dirs {
		if _, ok := s.reserved[dir]; ok {
			s.mu.Unlock()
			return nil, fmt.Errorf("%w: disk %s is already held by another seed import", ErrStreaming, keys[i])
		}
	}
	if s.reserved == nil {
		s.reserved = map[string]string{}
	}
	for i, dir := range dirs {
		s.reserved[dir] = why
		if ds := s.busy[dir]; ds != nil {
			open = append(open, openStream{ds, keys[i]})
		}
	}
	s.mu.Unlock()
	unreserve := func() {
		s.mu.Lock()
		for _, dir := range dirs {
			delete(s.reserved, dir)
		}
		s.mu.Unlock()
	}
	// A primary that waits for the seed closes its stream as soon as it
	// sees the disk has no copy: wait for such a stream to end. One that
	// stays (an initial copy over the network) is not cut.
	timeout := time.After(reserveWait)
	for _, o := range open {
		select {
		case <-o.ds.done:
		case <-timeout:
			unreserve()
			name := "its primary"
			if si := s.Stream(o.key); si.Primary != "" {
				name = si.Primary
			}
			return nil, fmt.Errorf("%w: %s streams to disk %s now (an initial copy over the network?): let it finish, or stop the primary, then import", ErrStreaming, name, o.key)
		}
	}
	var once sync.Once
	return func() { once.Do(unreserve) }, nil
}

// reserveWait is how long Reserve waits for open streams to end.
var reserveWait = 10 * time.Second

// Unfence accepts the streams of VM under root again (a failover
// cancelled).
func (s *Server) Unfence(root, vm string) {
	s.mu.Lock()
	delete(s.fences, root+"/"+vm)
	s.mu.Unlock()
}

// Stream returns what the server knows of the stream of the disk
// ROOT/VM/DISK.
func (s *Server) Stream(key string) StreamInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	if si := s.streams[key]; si != nil {
		return *si
	}
	return StreamInfo{Since: s.started}
}

// streamEvent updates the stream info of key under the lock.
func (s *Server) streamEvent(key string, fn func(*StreamInfo)) {
	s.mu.Lock()
	si := s.streams[key]
	if si == nil {
		si = &StreamInfo{}
		s.streams[key] = si
	}
	fn(si)
	s.mu.Unlock()
}

// rootName returns the directory name of an authenticated primary's root.
func (s *Server) rootName(name string) (string, error) {
	sub, ok := s.cfg.Allow[name]
	switch {
	case ok && sub == "":
		sub = name
	case !ok && s.cfg.AllowAny:
		sub = name
	case !ok:
		return "", fmt.Errorf("%w: %q is not allowed on this replica", wire.ErrUnauthorized, name)
	}
	if err := names.Part(sub); err != nil {
		return "", err
	}
	return sub, nil
}

func (s *Server) serve(nc net.Conn) {
	defer nc.Close()
	log := s.cfg.Log.With("remote", nc.RemoteAddr().String())
	// Until the stream is open each exchange must be quick; then a
	// primary may stay quiet (caught up) for a while, and a frame may
	// crawl over a thin link as long as it moves.
	base := min(30*time.Second, s.cfg.IdleTimeout)
	pc := wire.NewProgressConn(nc, base)
	tc := tls.Server(pc, s.cfg.TLS)
	if err := tc.Handshake(); err != nil {
		log.Warn("replica: TLS handshake refused", "err", err)
		return
	}
	name, err := pki.PeerName(tc.ConnectionState())
	if err != nil {
		log.Warn("replica: refused", "err", err)
		return
	}
	log = log.With("primary", name)
	c := wire.NewConn(tc)
	defer c.Close()
	fail := func(code uint16, err error) {
		log.Warn("replica: stream ended", "err", err)
		c.WriteFrame(wire.MsgError, wire.EncodeError(code, err.Error()))
		c.Flush()
	}
	// applyFailed answers an error from applying: malformed input is the
	// primary's fault; anything else (a full disk, an I/O error) is the
	// replica's, and retrying may help.
	applyFailed := func(err error) {
		switch {
		case errors.Is(err, wire.ErrBrokenChain), errors.Is(err, store.ErrResyncing):
			fail(wire.CodeResync, err)
		case errors.Is(err, wire.ErrFrame), errors.Is(err, store.ErrInvalid):
			fail(wire.CodeBadRequest, err)
		default:
			fail(wire.CodeRetry, err)
		}
	}
	rootName, err := s.rootName(name)
	root := filepath.Join(s.cfg.Data, rootName)
	if err != nil {
		fail(wire.CodeUnauthorized, err)
		return
	}
	body, err := wire.Expect(c, wire.MsgHello)
	if err != nil {
		fail(wire.CodeBadRequest, err)
		return
	}
	h, err := wire.DecodeHello(body)
	if err != nil {
		fail(wire.CodeBadRequest, err)
		return
	}
	w, err := wire.Negotiate(h, wire.AllCodecs)
	if err != nil {
		fail(wire.CodeBadRequest, err)
		return
	}
	c.WriteFrame(wire.MsgWelcome, w.Encode())
	if err := c.Flush(); err != nil {
		return
	}
	c.SetCodec(w.Codec)
	t, body, err := c.ReadFrame()
	if err == nil && t == wire.MsgPromote {
		s.promote(c, name, rootName, body, log, fail)
		return
	}
	if err == nil && t == wire.MsgReverse {
		s.reverse(c, name, rootName, body, log, fail)
		return
	}
	if err == nil && t == wire.MsgReverseData {
		s.reverseData(nc, c, rootName, body, log, fail)
		return
	}
	if err == nil && t != wire.MsgOpenDisk {
		err = fmt.Errorf("%w: got message %d, want %d", wire.ErrFrame, t, wire.MsgOpenDisk)
	}
	if err != nil {
		fail(wire.CodeBadRequest, err)
		return
	}
	diskName, size, err := wire.DecodeOpenDisk(body)
	if err != nil {
		fail(wire.CodeBadRequest, err)
		return
	}
	vm, dname, _ := names.Disk(diskName)
	dir := filepath.Join(root, vm, dname)
	// One stream per disk. A new one from the primary supersedes an old
	// one, which a dead or black-holed link can leave waiting: the old
	// connection is closed (each applied batch is durable before its
	// ack, so nothing is lost) and its end awaited.
	me := &diskStream{conn: nc, done: make(chan struct{})}
	defer close(me.done)
	for {
		s.mu.Lock()
		if f, ok := s.fences[rootName+"/"+vm]; ok {
			s.mu.Unlock()
			fail(f.code, errors.New(f.why))
			return
		}
		if why, ok := s.reserved[dir]; ok {
			s.mu.Unlock()
			fail(wire.CodeRetry, fmt.Errorf("%w: disk %s %s", ErrReserved, diskName, why))
			return
		}
		old := s.busy[dir]
		if old == nil {
			s.busy[dir] = me
			s.mu.Unlock()
			break
		}
		s.mu.Unlock()
		log.Info("replica: a new stream supersedes the old one", "disk", diskName)
		old.conn.Close()
		select {
		case <-old.done:
		case <-time.After(30 * time.Second):
			fail(wire.CodeRetry, fmt.Errorf("disk %s is still being replicated by another stream", diskName))
			return
		}
	}
	defer func() {
		s.mu.Lock()
		delete(s.busy, dir)
		s.mu.Unlock()
	}()
	d, err := store.OpenDisk(s.fs, dir, size)
	if err != nil {
		fail(wire.CodeResync, err)
		return
	}
	defer d.Close()
	if s.cfg.Catalog != nil {
		if err := d.WithHistory(s.cfg.Catalog, rootName+"/"+vm+"/"+dname); err != nil {
			fail(wire.CodeRetry, err)
			return
		}
	}
	applied, seeded := d.Applied()
	if !seeded {
		if err := d.ResetBase(); err != nil {
			fail(wire.CodeRetry, err)
			return
		}
	}
	c.WriteFrame(wire.MsgDiskState, wire.EncodeDiskStateFlags(applied, seeded, d.Resyncing()))
	if err := c.Flush(); err != nil {
		return
	}
	log = log.With("disk", diskName)
	log.Info("replica: stream open", "applied", applied, "seeded", seeded, "codec", w.Codec)
	key := rootName + "/" + vm + "/" + dname
	s.streamEvent(key, func(si *StreamInfo) { si.Primary, si.Connected, si.Since = name, true, time.Now() })
	defer s.streamEvent(key, func(si *StreamInfo) { si.Connected, si.Since = false, time.Now() })
	pc.Scale.Store(int64((s.cfg.IdleTimeout + base - 1) / base))
	var recs []hrl.Record
	for {
		t, body, err := c.ReadFrame()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.Info("replica: stream closed", "err", err)
			}
			return
		}
		s.streamEvent(key, func(si *StreamInfo) { si.Received += int64(len(body)) })
		var ack uint64
		switch t {
		case wire.MsgKeepalive:
			continue
		case wire.MsgSettings:
			iv, pe, err := wire.DecodeSettings(body)
			if err != nil {
				fail(wire.CodeBadRequest, err)
				return
			}
			s.streamEvent(key, func(si *StreamInfo) { si.Interval, si.PointsEvery = iv, pe })
			log.Info("replica: copy frequency", "frequency", health.FrequencyName(iv), "points_every", pe)
			continue
		case wire.MsgResyncStart:
			// A resync or a verify (resync.go): the whole exchange, then
			// its acknowledgement.
			if ack, err = s.resync(context.Background(), c, d, key, body, log); err != nil {
				fail(resyncCode(err), err)
				return
			}
		case wire.MsgBaseChunk:
			if len(body) < 8 {
				fail(wire.CodeBadRequest, fmt.Errorf("%w: short base chunk", wire.ErrFrame))
				return
			}
			off, _ := wire.DecodeU64(body[:8])
			if err := d.WriteBase(int64(off), body[8:]); err != nil {
				applyFailed(err)
				return
			}
			s.streamEvent(key, func(si *StreamInfo) { si.CopyBytes += int64(len(body) - 8) })
			continue // acknowledged by BaseDone
		case wire.MsgBaseDone:
			lsn, err := wire.DecodeU64(body)
			if err == nil {
				err = d.FinishBase(lsn)
			}
			if err != nil {
				applyFailed(err)
				return
			}
			ack = lsn
			log.Info("replica: initial copy complete", "lsn", lsn)
		case wire.MsgRecords:
			recs = recs[:0]
			disk, err := wire.DecodeRecords(body, func(r hrl.Record) error { recs = append(recs, r); return nil })
			if err == nil && disk != diskName {
				fail(wire.CodeBadRequest, fmt.Errorf("%w: records for disk %s on the stream of %s", wire.ErrFrame, disk, diskName))
				return
			}
			if err == nil {
				ack, err = d.Apply(recs)
			}
			if err != nil {
				applyFailed(err)
				return
			}
		case wire.MsgRecordsRange:
			recs = recs[:0]
			disk, from, through, err := wire.DecodeRecordsRange(body, func(r hrl.Record) error { recs = append(recs, r); return nil })
			if err == nil && disk != diskName {
				fail(wire.CodeBadRequest, fmt.Errorf("%w: records for disk %s on the stream of %s", wire.ErrFrame, disk, diskName))
				return
			}
			if err == nil {
				ack, err = d.ApplyRange(recs, from, through)
			}
			if err != nil {
				applyFailed(err)
				return
			}
		default:
			fail(wire.CodeBadRequest, fmt.Errorf("%w: unexpected message %d", wire.ErrFrame, t))
			return
		}
		c.WriteFrame(wire.MsgAck, wire.EncodeU64(ack))
		if err := c.Flush(); err != nil {
			return
		}
	}
}

// answerHandover sends the answer of a handover exchange (promote,
// reverse): ok, an Error frame with the code the error carries, or
// nothing at all when the outcome is not settled (ErrNoAnswer: the asker
// keeps the VM read-only and asks again). It reports whether it answered
// ok.
func answerHandover(c *wire.Conn, vm string, err error, ok func(), log *slog.Logger, fail func(uint16, error)) bool {
	switch {
	case errors.Is(err, ErrNoAnswer):
		log.Warn("replica: no answer: the outcome is not settled; the asker asks again", "vm", vm, "err", err)
		return false
	case err != nil:
		code := wire.CodeBadRequest
		var pe *PromoteError
		if errors.As(err, &pe) {
			code = pe.Code
		}
		fail(code, err)
		return false
	}
	ok()
	return c.Flush() == nil
}

// reverse answers a reverse replication request through OnReverse.
func (s *Server) reverse(c *wire.Conn, primary, root string, body []byte, log *slog.Logger, fail func(uint16, error)) {
	req, err := wire.DecodeReverse(body)
	if err != nil {
		fail(wire.CodeBadRequest, err)
		return
	}
	if s.cfg.OnReverse == nil {
		fail(wire.CodeBadRequest, errors.New("this host cannot keep a replica of a VM it ran: it runs as a replica only (run vrep host on both hosts for reverse replication)"))
		return
	}
	log.Info("replica: asked to keep the replica of a VM that failed over from this host", "vm", req.VM, "generation", req.Generation)
	ans, err := s.cfg.OnReverse(context.Background(), primary, root, req)
	answerHandover(c, req.VM, err, func() { c.WriteFrame(wire.MsgReversed, ans.Encode()) }, log, fail)
}

// promote answers a handover (wire.Promote) through OnPromote.
func (s *Server) promote(c *wire.Conn, primary, root string, body []byte, log *slog.Logger, fail func(uint16, error)) {
	req, err := wire.DecodePromote(body)
	if err != nil {
		fail(wire.CodeBadRequest, err)
		return
	}
	if s.cfg.OnPromote == nil {
		fail(wire.CodeBadRequest, errors.New("this replica cannot take a VM over: it runs as a replica only (run vrep host on both hosts for planned failover)"))
		return
	}
	log.Info("replica: asked to take a VM over (planned failover)", "vm", req.VM, "generation", req.Generation)
	ans, err := s.cfg.OnPromote(context.Background(), primary, root, req)
	if !answerHandover(c, req.VM, err, func() { c.WriteFrame(wire.MsgPromoted, ans.Encode()) }, log, fail) {
		return
	}
	// The old primary now makes its image the replica copy (it merges
	// its log first: give it time), then says so.
	t, _, err := c.ReadFrame()
	if err == nil && t == wire.MsgAdopted && s.cfg.OnAdopted != nil {
		s.cfg.OnAdopted(req.VM)
	}
}
