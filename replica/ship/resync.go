package ship

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/jobs"
	"github.com/vrep-io/vrep/replica/health"
	"github.com/vrep-io/vrep/replica/wire"
)

// ResyncProgress is a disk's resync, as the status shows it.
type ResyncProgress struct {
	// State is "waiting" (for the resync window), "running", "done" or
	// "failed"; Reason says why it runs or waits.
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	// TargetLSN is the LSN of the primary's frozen disk being copied.
	TargetLSN uint64 `json:"target_lsn,omitempty"`
	Percent   int    `json:"percent"`
	Chunks    uint64 `json:"chunks"`
	ChunkSize int    `json:"chunk_size"`
	// Compared counts the chunks compared (from the resume point of the
	// first session on); BytesCompared their bytes.
	Compared      uint64 `json:"chunks_compared"`
	BytesCompared int64  `json:"bytes_compared"`
	// Sent counts the differing chunks sent, over every session of this
	// resync; BytesSent their bytes before compression, WireBytes the
	// frames the primary sent for it (chunks and marks, compressed,
	// headers included).
	Sent      uint64 `json:"chunks_sent"`
	BytesSent int64  `json:"bytes_sent"`
	WireBytes int64  `json:"wire_bytes"`
	// HashBytes counts the hash frames received from the replica
	// (headers included; sums do not compress).
	HashBytes int64 `json:"hash_bytes"`
	// Sessions counts the connections the resync took; ResumedAt is the
	// chunk the last one started from (0: the start), SessionSent what it
	// sent.
	Sessions    int    `json:"sessions"`
	ResumedAt   uint64 `json:"resumed_at_chunk"`
	SessionSent uint64 `json:"session_chunks_sent"`
	// Changed counts the chunks the last session sent whole, without
	// comparing, because they changed between the target the replica's
	// progress was for and this one.
	Changed uint64 `json:"changed_chunks_sent"`
	// Durable is the chunk before which the replica has said this
	// session's chunks durable: a replica that dies now costs at most the
	// chunks sent after it (wire.WindowBytes) sent again.
	Durable uint64 `json:"durable_chunk"`
	// ETA is the estimated time left, in seconds, by the rate of this
	// session.
	ETA      float64   `json:"eta_seconds,omitempty"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	Error    string    `json:"error,omitempty"`
}

// VerifyResult is the outcome of a verify: the chunks where the replica
// differs from the primary.
type VerifyResult struct {
	Disk      string `json:"disk"`
	LSN       uint64 `json:"lsn"`
	ChunkSize int    `json:"chunk_size"`
	Chunks    uint64 `json:"chunks"`
	// Differing lists the differing chunks, the first maxListed of them;
	// DifferingCount counts them all.
	Differing      []uint64 `json:"differing_chunks"`
	DifferingCount uint64   `json:"differing_count"`
	Note           string   `json:"note,omitempty"`
}

var (
	// ErrResyncRunning is returned when a resync is asked for while one runs.
	ErrResyncRunning = errors.New("ship: a resync of this disk is already running")
	// errResyncWaiting ends a session when a resync is needed outside the
	// resync window.
	errResyncWaiting = errors.New("ship: a resync is needed and waits for the resync window")
)

// resyncCtl is a shipper's resync state, guarded by Shipper.mu.
type resyncCtl struct {
	window  health.ResyncWindow
	want    bool   // asked for by hand, or by a trigger seen in a stream
	why     string // what asked for it
	now     bool   // by hand with --now: the window is overridden
	running bool
	// paused: merging is paused at ckpt for a resync under way, from its
	// first session to its end.
	paused bool
	ckpt   uint64
	next   time.Time // when the window opens, while waiting
	prog   *ResyncProgress
}

// SetResyncWindow sets when automatic resyncs may run.
func (s *Shipper) SetResyncWindow(w health.ResyncWindow) {
	s.mu.Lock()
	s.rs.window = w
	s.mu.Unlock()
}

// Resync asks for a resync of the disk (by hand): at once with now, else
// in the resync window. It is refused while one runs.
func (s *Shipper) Resync(now bool) error {
	s.mu.Lock()
	if s.rs.running {
		s.mu.Unlock()
		return ErrResyncRunning
	}
	s.rs.want, s.rs.now = true, s.rs.now || now
	if s.rs.why == "" {
		s.rs.why = "asked for by hand"
	}
	// A new request: the status shows it, not the last resync's end.
	s.rs.prog = &ResyncProgress{State: "waiting", Reason: s.rs.why + ": starts at the stream's next batch"}
	s.mu.Unlock()
	s.kick()
	return nil
}

// ResyncStatus returns the disk's resync progress (nil: none asked for
// since the daemon started).
func (s *Shipper) ResyncStatus() *ResyncProgress {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rs.prog == nil {
		return nil
	}
	p := *s.rs.prog
	return &p
}

// Stopped reports whether the shipper stopped on a non-recoverable error
// and waits for the operator: a resync it left failed does not resume by
// itself then.
func (s *Shipper) Stopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped != ""
}

// kick wakes a waiting shipper, and tells a connected one to look at its
// requests at its next poll.
func (s *Shipper) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// needResync notes a trigger: why a resync is needed.
func (s *Shipper) needResync(why string) {
	s.mu.Lock()
	if !s.rs.want {
		s.rs.want, s.rs.why = true, why
		s.cfg.Log.Warn(s.disk+": resync required: "+why, "disk", s.disk)
	}
	s.mu.Unlock()
}

// resyncDecision applies the resync policy to the shipper's state.
func (s *Shipper) resyncDecision(underWay bool) health.ResyncDecision {
	if s.vol.ResyncRequired() {
		s.needResync("the change log overflowed")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	why := s.rs.why
	if underWay && why == "" {
		why = "interrupted"
	}
	d := health.DecideResync(s.rs.window, s.rs.want || underWay, why, s.rs.now, underWay, time.Now())
	if !d.Run && s.rs.want {
		s.rs.next = d.Next
		if s.rs.prog == nil || s.rs.prog.State != "running" {
			s.rs.prog = &ResyncProgress{State: "waiting", Reason: d.Reason}
		}
	}
	return d
}

// resync runs a resync on an open stream (see replica/wire, resync.go)
// and returns the LSN the replica now holds: merging is paused, so the
// base is the disk at its checkpoint C while the log goes on recording;
// the replica's hashes come in batches, the primary hashes the same
// chunks of the base and sends those that differ; then the replica holds
// the disk at C, and the records after it follow as usual.
func (s *Shipper) resync(ctx context.Context, c *wire.Conn, arm func(int), applied uint64, why string) (uint64, error) {
	// Merging stays paused from the first session of a resync to its end,
	// so a session after a cut link finds the base at the same checkpoint
	// and the replica resumes after its last durable chunk.
	s.mu.Lock()
	held, ckpt := s.rs.paused, s.rs.ckpt
	s.mu.Unlock()
	if !held {
		// The target is the disk as written so far: merged first, so that
		// the records the replica holds (its applied LSN never goes back)
		// and those the stream could not read (a corrupt log) are in it,
		// and the log after it holds only what was written since, in new
		// segments (sealed first): the stream reads no segment again that
		// holds a record from before, which may be the corrupt one.
		if _, err := s.vol.Log().Seal(); err != nil {
			return 0, fmt.Errorf("ship: sealing the log before the resync: %w", err)
		}
		if err := s.vol.Merge(); err != nil {
			return 0, fmt.Errorf("ship: merging before the resync: %w", err)
		}
		if ckpt = s.markersAfter(s.vol.PauseMerge()); ckpt < applied {
			s.vol.ResumeMerge()
			return 0, fmt.Errorf("%w: the primary's disk is merged through LSN %d, behind the replica's %d", wire.ErrResync, ckpt, applied)
		}
		s.mu.Lock()
		s.rs.paused, s.rs.ckpt = true, ckpt
		s.mu.Unlock()
	}
	base := s.vol.Base()
	size := base.Size()
	chunk := wire.ChunkSize
	n := wire.Chunks(size, chunk)
	s.mu.Lock()
	s.rs.running = true
	p := s.rs.prog
	if p == nil || p.State != "running" && p.State != "failed" || p.TargetLSN != ckpt {
		p = &ResyncProgress{Started: time.Now()}
	}
	p.State, p.Reason, p.TargetLSN, p.Chunks, p.ChunkSize, p.Error = "running", why, ckpt, n, chunk, ""
	p.Sessions++
	s.rs.prog = p
	s.mu.Unlock()
	job := s.cfg.Jobs.Start(jobs.Resync, s.disk)
	job.Progress(int64(p.Compared), int64(n))
	fail := func(err error) (uint64, error) {
		job.End(err)
		s.mu.Lock()
		s.rs.running = false
		p.State, p.Error = "failed", err.Error()
		s.mu.Unlock()
		return 0, err
	}
	s.cfg.Log.Info(s.disk+": resync started", "disk", s.disk, "reason", why, "target_lsn", ckpt, "replica_lsn", applied, "chunks", n)
	sent0 := c.Sent()
	c.WriteFrame(wire.MsgResyncStart, wire.ResyncStart{Kind: wire.KindResync, Hash: wire.HashXXH3, ChunkSize: uint32(chunk), Chunks: n, Target: ckpt}.Encode())
	if err := c.Flush(); err != nil {
		return fail(err)
	}
	body, err := wire.Expect(c, wire.MsgResyncFrom)
	if err != nil {
		return fail(err)
	}
	durable, heldLSN, err := wire.DecodeResyncFrom(body, n)
	if err != nil {
		return fail(err)
	}
	// Where to start: at the replica's durable progress when it is for
	// this target, or when the chunks that changed since its target are
	// known (they are sent first); else at 0.
	from, changed := durable, []uint64(nil)
	if heldLSN != ckpt && durable > 0 {
		var ok bool
		if changed, ok = s.changedChunks(heldLSN, ckpt, int64(chunk), durable); !ok {
			from, changed = 0, nil
		}
	}
	c.WriteFrame(wire.MsgResyncResume, wire.EncodeU64(from))
	start := time.Now()
	s.mu.Lock()
	p.ResumedAt, p.SessionSent, p.Compared, p.Changed = from, 0, from, uint64(len(changed))
	p.BytesCompared = min(int64(from)*int64(chunk), size)
	s.mu.Unlock()
	if from > 0 {
		s.cfg.Log.Info(s.disk+": resync resumes", "disk", s.disk, "from_chunk", from, "replica_target_lsn", heldLSN, "changed_chunks_resent", len(changed))
	}
	x := &resyncStream{c: c, buf: make([]byte, 8+chunk)}
	account := func(next uint64, hashBytes int64) {
		s.mu.Lock()
		p.Compared, p.BytesCompared = next, min(int64(next)*int64(chunk), size)
		p.HashBytes += hashBytes
		p.WireBytes += c.Sent() - sent0
		sent0 = c.Sent()
		p.Percent = int(99 * next / max(n, 1))
		if done := next - from; done > 0 {
			p.ETA = time.Since(start).Seconds() * float64(n-next) / float64(done)
		}
		p.Durable = x.durable
		s.mu.Unlock()
		job.Progress(int64(next), int64(n))
	}
	// Chunks count as sent once handed to the connection: one the
	// replica never made durable counts again when it is sent again.
	sendChunk := func(idx uint64) error {
		off := int64(idx) * int64(chunk)
		data := x.buf[8 : 8+min(int64(chunk), size-off)]
		if _, err := base.ReadAt(data, off); err != nil {
			return err
		}
		arm(1)
		if err := x.chunk(idx, data); err != nil {
			return err
		}
		s.mu.Lock()
		p.Sent++
		p.SessionSent++
		p.BytesSent += int64(len(data))
		s.mu.Unlock()
		return nil
	}
	for _, idx := range changed {
		if err := sendChunk(idx); err != nil {
			return fail(err)
		}
	}
	if from > 0 && heldLSN != ckpt {
		// The replica takes the chunks below from as this target's now.
		if err := x.mark(from); err != nil {
			return fail(err)
		}
	}
	if err := c.Flush(); err != nil {
		return fail(err)
	}
	account(from, 0)
	// The primary hashes its side ahead too, as the replica does, so
	// that its hashing overlaps both the replica's batches in flight and
	// its own sending of the chunks that differ (one core each would
	// otherwise wait).
	hctx, stopAhead := context.WithCancel(ctx)
	defer stopAhead()
	ahead := hashAhead(hctx, base, size, chunk, from, n)
	for next := from; next < n; {
		arm(10) // the replica hashes a batch before it comes
		body, err := x.hashes()
		if err != nil {
			return fail(err)
		}
		theirs, err := wire.DecodeHashes(body, next, n)
		if err != nil {
			return fail(err)
		}
		hashBytes := int64(wire.FrameHeaderSize + len(body))
		ours, err := ahead.take(uint64(len(theirs)))
		if err != nil {
			return fail(err)
		}
		arm(1)
		for i := range theirs {
			if ours[i] != theirs[i] {
				if err := sendChunk(next + uint64(i)); err != nil {
					return fail(err)
				}
			}
		}
		next += uint64(len(theirs))
		if err := x.mark(next); err != nil {
			return fail(err)
		}
		if err := c.Flush(); err != nil {
			return fail(err)
		}
		account(next, hashBytes)
	}
	arm(10) // the replica makes the image durable
	c.WriteFrame(wire.MsgResyncDone, wire.EncodeResyncDone(ckpt, p.SessionSent))
	if err := c.Flush(); err != nil {
		return fail(err)
	}
	ab, err := x.ack()
	if err != nil {
		return fail(err)
	}
	if ack, err := wire.DecodeU64(ab); err != nil || ack != ckpt {
		return fail(fmt.Errorf("%w: resync to LSN %d acknowledged as %d", wire.ErrResync, ckpt, ack))
	}
	// NB: before merging resumes, so the records after ckpt stay in the
	// log for the stream (an overflowed log releases everything).
	if s.vol.ResyncRequired() {
		if err := s.vol.ClearResync(ckpt); err != nil {
			return fail(err)
		}
	}
	s.vol.ResumeMerge()
	s.mu.Lock()
	s.rs.paused = false
	s.rs.running, s.rs.want, s.rs.now, s.rs.why = false, false, false, ""
	s.overflow = time.Time{}
	p.State, p.Percent, p.ETA, p.Finished = "done", 100, 0, time.Now()
	p.WireBytes += c.Sent() - sent0
	s.mu.Unlock()
	job.End(nil)
	s.cfg.Log.Info(s.disk+": resync complete", "disk", s.disk, "lsn", ckpt, "chunks_sent", p.Sent, "bytes_sent", p.BytesSent,
		"chunks", n, "sessions", p.Sessions)
	if f := s.cfg.OnBase; f != nil {
		f(ckpt, true)
	}
	return ckpt, nil
}

// markersAfter returns the LSN the base (merged through ckpt, merging
// paused) stands for: ckpt, moved past the markers that follow it, which
// change no data and are not merged (a quiet disk takes points that the
// replica has applied while the base stays merged through the last
// write).
func (s *Shipper) markersAfter(ckpt uint64) uint64 {
	s.vol.Log().Scan(ckpt+1, func(r hrl.Record) error {
		if r.Type != hrl.TypeMarker || r.LSN > s.vol.Log().SyncedLSN() {
			return errBatchFull
		}
		ckpt = r.LSN
		return nil
	})
	return ckpt
}

// verifyExchange compares the replica's disk at the point at lsn (0: its image)
// with the primary's base, sending no data. The caller has paused
// merging; base is the disk at lsn.
func (s *Shipper) verifyExchange(c *wire.Conn, arm func(int), base interface {
	ReadAt([]byte, int64) (int, error)
}, lsn, point uint64, compared *atomic.Uint64) (VerifyResult, error) {
	size := s.vol.Size()
	chunk := wire.ChunkSize
	n := wire.Chunks(size, chunk)
	res := VerifyResult{Disk: s.disk, LSN: lsn, ChunkSize: chunk, Chunks: n, Differing: []uint64{}}
	c.WriteFrame(wire.MsgResyncStart, wire.ResyncStart{Kind: wire.KindVerify, Hash: wire.HashXXH3, ChunkSize: uint32(chunk), Chunks: n, Target: point}.Encode())
	if err := c.Flush(); err != nil {
		return res, err
	}
	body, err := wire.Expect(c, wire.MsgResyncFrom)
	if err != nil {
		return res, err
	}
	if from, _, err := wire.DecodeResyncFrom(body, n); err != nil || from != 0 {
		return res, fmt.Errorf("%w: a verify must start at chunk 0", wire.ErrResync)
	}
	for next := uint64(0); next < n; {
		arm(10)
		body, err := wire.Expect(c, wire.MsgResyncHashes)
		if err != nil {
			return res, err
		}
		theirs, err := wire.DecodeHashes(body, next, n)
		if err != nil {
			return res, err
		}
		ours, err := wire.HashChunks(context.Background(), base, size, chunk, next, uint64(len(theirs)), 0)
		if err != nil {
			return res, err
		}
		for i := range theirs {
			if ours[i] != theirs[i] {
				res.DifferingCount++
				if len(res.Differing) < maxListed {
					res.Differing = append(res.Differing, next+uint64(i))
				}
			}
		}
		next += uint64(len(theirs))
		compared.Store(next)
	}
	arm(1)
	c.WriteFrame(wire.MsgResyncDone, wire.EncodeResyncDone(point, res.DifferingCount))
	if err := c.Flush(); err != nil {
		return res, err
	}
	if _, err := wire.Expect(c, wire.MsgAck); err != nil {
		return res, err
	}
	return res, nil
}

// isLogCorrupt reports whether err says the change log is damaged: the
// records cannot be shipped, and only a resync brings the replica back.
func isLogCorrupt(err error) bool { return hrl.IsCorruption(err) }

// maybeResync runs the resync the policy lets run now. A resync that is
// needed (a trigger, or one under way on the replica) and must wait for
// its window ends the session (errResyncWaiting); one asked for by hand
// without --now waits while records go on shipping.
func (s *Shipper) maybeResync(ctx context.Context, c *wire.Conn, arm func(int), applied uint64, underWay bool) (uint64, error) {
	d := s.resyncDecision(underWay)
	if d.Run {
		return s.resync(ctx, c, arm, applied, d.Reason)
	}
	s.mu.Lock()
	must := s.rs.want && s.rs.why != "asked for by hand"
	s.mu.Unlock()
	if must || underWay || s.vol.ResyncRequired() {
		return applied, fmt.Errorf("%w: %s", errResyncWaiting, d.Reason)
	}
	return applied, nil
}

// verifyReq is a verify waiting for the stream.
type verifyReq struct {
	point  uint64 // the replica point (0: its latest state)
	answer chan verifyAnswer
	// Held by the stream while it serves the request.
	paused bool
	ckpt   uint64
	note   string
	// latest: the latest state is verified, and the stream ships no
	// record past ckpt meanwhile.
	latest   bool
	compared atomic.Uint64 // chunks compared so far
}

// shipLimit returns the LSN the stream may ship up to while a verify of
// the latest state waits for the replica to reach its checkpoint. Called
// by the stream's goroutine, which alone touches pendingVerify.
func (s *Shipper) shipLimit() uint64 {
	if v := s.pendingVerify; v != nil && v.latest {
		return v.ckpt
	}
	return ^uint64(0)
}

// maxListed bounds the differing chunks a verify lists; it counts them
// all.
const maxListed = 1 << 16

type verifyAnswer struct {
	res VerifyResult
	err error
}

// ErrNotConnected is returned for a verify while no stream is open.
var ErrNotConnected = errors.New("ship: the replica is not connected")

// Verify compares the replica with the primary at the same LSN by chunk
// checksums, sending no data: at the point at LSN point, or (0) at the
// replica's latest state. The primary reproduces that LSN from its base,
// frozen at its checkpoint, and the log after it; for a point older than
// the checkpoint it verifies the latest state instead and says so.
func (s *Shipper) Verify(ctx context.Context, point uint64, progress func(compared, chunks uint64)) (VerifyResult, error) {
	s.mu.Lock()
	connected, running := s.st.Connected, s.rs.running
	s.mu.Unlock()
	if !connected {
		return VerifyResult{}, ErrNotConnected
	}
	if running {
		return VerifyResult{}, ErrResyncRunning
	}
	req := &verifyReq{point: point, answer: make(chan verifyAnswer, 1)}
	s.kick()
	select {
	case s.verifies <- req:
	case <-ctx.Done():
		return VerifyResult{}, ctx.Err()
	}
	chunks := wire.Chunks(s.vol.Size(), wire.ChunkSize)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for shown := uint64(0); ; {
		select {
		case a := <-req.answer:
			return a.res, a.err
		case <-ctx.Done():
			return VerifyResult{}, ctx.Err()
		case <-tick.C:
			if n := req.compared.Load(); n != shown && progress != nil {
				shown = n
				progress(n, chunks)
			}
		}
	}
}

// serveVerify serves a pending verify on the stream, between batches.
// It pauses merging first; while the replica is behind the checkpoint it
// lets records ship until the replica holds it.
func (s *Shipper) serveVerify(c *wire.Conn, arm func(int), applied uint64) (uint64, error) {
	req := s.pendingVerify
	if req == nil {
		select {
		case req = <-s.verifies:
			s.pendingVerify = req
		default:
			return applied, nil
		}
	}
	if !req.paused {
		req.ckpt, req.paused = s.vol.PauseMerge(), true
		if req.point != 0 && req.point < req.ckpt {
			req.note = fmt.Sprintf("point at LSN %d is older than the primary's checkpoint %d, which no longer holds it: verified the replica's latest state instead", req.point, req.ckpt)
			req.point = 0
		}
		if req.point == 0 {
			// The latest state: merged first, and the stream ships up to
			// the checkpoint and no further while the verify waits, so
			// the base alone is the disk at the replica's LSN (no record
			// held in memory however long the log).
			s.vol.ResumeMerge()
			err := s.vol.Merge()
			req.ckpt = s.vol.PauseMerge()
			if err != nil {
				s.pendingVerify = nil
				s.vol.ResumeMerge()
				req.answer <- verifyAnswer{err: fmt.Errorf("ship: merging before the verify: %w", err)}
				return applied, nil
			}
			req.latest = true
		}
	}
	point, note := req.point, req.note
	lsn := point
	if point == 0 {
		if applied < req.ckpt {
			return applied, nil // ship up to the checkpoint first
		}
		lsn = applied
	}
	s.pendingVerify = nil
	defer s.vol.ResumeMerge()
	state, err := s.diskAt(req.ckpt, lsn)
	var res VerifyResult
	if err == nil {
		res, err = s.verifyExchange(c, arm, state, lsn, point, &req.compared)
		res.Note = note
		var re *wire.RemoteError
		if err != nil && !errors.As(err, &re) && !errors.Is(err, wire.ErrResync) {
			err = fmt.Errorf("%w: the stream to the replica ended during the verify (%v); run it again", ErrNotConnected, err)
		}
	}
	req.answer <- verifyAnswer{res, err}
	return applied, err
}

// diskAt returns the disk at lsn: the base (at ckpt, merging paused)
// under the log's records ckpt+1..lsn.
func (s *Shipper) diskAt(ckpt, lsn uint64) (*overlayReader, error) {
	o := &overlayReader{base: s.vol.Base()}
	if lsn <= ckpt {
		return o, nil
	}
	err := s.vol.Log().Scan(ckpt+1, func(r hrl.Record) error {
		if r.LSN > lsn {
			return errBatchFull
		}
		if r.Type != hrl.TypeMarker {
			r.Payload = bytes.Clone(r.Payload)
			o.recs = append(o.recs, r)
		}
		return nil
	})
	if err != nil && !errors.Is(err, errBatchFull) {
		return nil, err
	}
	return o, nil
}

// overlayReader reads a base with records laid over it, in order.
type overlayReader struct {
	base interface {
		ReadAt([]byte, int64) (int, error)
	}
	recs []hrl.Record
}

func (o *overlayReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := o.base.ReadAt(p, off)
	if err != nil {
		return n, err
	}
	for _, r := range o.recs {
		lo, hi := max(int64(r.Offset), off), min(int64(r.Offset)+int64(r.Span), off+int64(len(p)))
		if lo >= hi {
			continue
		}
		if r.Type == hrl.TypeWrite {
			copy(p[lo-off:hi-off], r.Payload[lo-int64(r.Offset):])
		} else {
			clear(p[lo-off : hi-off])
		}
	}
	return n, nil
}

// dropVerify answers a verify the ending stream could not finish, and
// resumes the merging it paused.
func (s *Shipper) dropVerify() {
	if req := s.pendingVerify; req != nil {
		if req.paused {
			s.vol.ResumeMerge()
		}
		req.answer <- verifyAnswer{err: fmt.Errorf("%w: the stream ended before the verify could run", ErrNotConnected)}
		s.pendingVerify = nil
	}
}

// releaseResyncPause ends a resync's hold on merging when the resync
// cannot go on for now (the shipper stops, or replication stopped for the
// operator), or when the log written since it froze the base has passed
// the disk's overflow bound (half its size): merging paused without end
// would fill the primary's file system while the replica is away. The
// resync then goes on later for a new checkpoint, from the replica's
// durable progress, sending first the chunks below it that changed since
// (changedChunks).
func (s *Shipper) releaseResyncPause(force bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.rs.paused {
		return
	}
	why := "replication stopped"
	if !force {
		var grown int64
		for _, seg := range s.vol.Log().Segments() {
			if seg.Last > s.rs.ckpt {
				grown += seg.Size
			}
		}
		if bound := max(s.vol.Size()/2, 64<<20); grown <= bound {
			return
		}
		why = "the log written since the resync froze the base passed half the disk"
	}
	s.vol.ResumeMerge()
	s.rs.paused = false
	s.cfg.Log.Warn(s.disk+": resync interrupted: "+why+"; merging resumes, and the resync goes on later for a newer checkpoint", "disk", s.disk)
}

// changedChunks returns, in order, the chunks below below that records
// after LSN from up to LSN to may have changed: from the log while it
// holds them all, else, for an overflowed log, from its dirty regions,
// which cover every write since the overflow and the log it released
// (the records after a resync's target are never merged before the
// resync ends or gives up its pause, so they are in one or the other).
// ok is false when neither can tell.
func (s *Shipper) changedChunks(from, to uint64, chunk int64, below uint64) (changed []uint64, ok bool) {
	if from > to {
		return nil, false
	}
	bits := make([]uint64, (below+63)/64)
	mark := func(off, n int64) {
		if n <= 0 {
			return
		}
		for c := uint64(off / chunk); c <= uint64((off+n-1)/chunk) && c < below; c++ {
			bits[c/64] |= 1 << (c % 64)
		}
	}
	log := s.vol.Log()
	covered := false
	if segs := log.Segments(); from == to || len(segs) > 0 && segs[0].First <= from+1 {
		want := from + 1
		err := log.Scan(from+1, func(r hrl.Record) error {
			if r.LSN > to {
				return errBatchFull
			}
			if r.LSN != want {
				return fmt.Errorf("%w: LSN %d where %d was expected", wire.ErrResync, r.LSN, want)
			}
			want++
			if r.Type != hrl.TypeMarker {
				mark(int64(r.Offset), int64(r.Span))
			}
			return nil
		})
		covered = want > to && (err == nil || errors.Is(err, errBatchFull))
	}
	if !covered {
		if !s.vol.ResyncRequired() {
			return nil, false
		}
		clear(bits)
		rs, regions := s.vol.DirtyRegions()
		for _, r := range regions {
			mark(r*rs, rs)
		}
	}
	for c := uint64(0); c < below; c++ {
		if bits[c/64]&(1<<(c%64)) != 0 {
			changed = append(changed, c)
		}
	}
	return changed, true
}

// resyncStream is the primary's side of one resync session's exchange.
// It sends chunks and marks, never more than wire.WindowBytes of chunks
// past the last mark the replica said durable, and reads the replica's
// hash batches, keeping those that arrive while it waits for a durable
// mark (16 bytes per chunk: at most 1/4096 of the disk). One goroutine.
type resyncStream struct {
	c      *wire.Conn
	buf    []byte
	queued [][]byte // hash batches read while waiting
	// Chunk bytes sent this session, in total, since the last mark, and
	// up to the last durable mark; the marks not yet durable.
	sent, sinceMark, confirmed int64
	marks                      []sentMark
	durable                    uint64 // the last durable mark
}

type sentMark struct {
	next  uint64
	bytes int64
}

// read reads the next frame that is not a durable mark, noting those.
func (x *resyncStream) read() (wire.MsgType, []byte, error) {
	for {
		t, body, err := x.readOne()
		if err != nil || t != wire.MsgResyncDurable {
			return t, body, err
		}
	}
}

// readOne reads the next frame; a durable mark is noted (and returned).
func (x *resyncStream) readOne() (wire.MsgType, []byte, error) {
	t, body, err := x.c.ReadFrame()
	if err != nil {
		return 0, nil, err
	}
	switch t {
	case wire.MsgError:
		return 0, nil, wire.DecodeError(body)
	case wire.MsgResyncDurable:
		next, err := wire.DecodeU64(body)
		if err != nil {
			return 0, nil, err
		}
		i := 0
		for i < len(x.marks) && x.marks[i].next < next {
			i++
		}
		if i == len(x.marks) || x.marks[i].next != next {
			return 0, nil, fmt.Errorf("%w: the replica made chunk %d durable, which is no mark sent", wire.ErrResync, next)
		}
		x.confirmed, x.durable = x.marks[i].bytes, next
		x.marks = x.marks[i+1:]
		faultpoint.Hit(faultpoint.ResyncAfterDurable)
	}
	return t, body, nil
}

// hashes returns the next hash batch's body.
func (x *resyncStream) hashes() ([]byte, error) {
	if len(x.queued) > 0 {
		b := x.queued[0]
		x.queued = x.queued[1:]
		return b, nil
	}
	t, body, err := x.read()
	if err != nil {
		return nil, err
	}
	if t != wire.MsgResyncHashes {
		return nil, fmt.Errorf("%w: got message %d, want %d", wire.ErrFrame, t, wire.MsgResyncHashes)
	}
	return body, nil
}

// chunk sends chunk idx, after a mark once MarkBytes were sent since the
// last one, and after waiting for a durable mark while the window is
// full.
func (x *resyncStream) chunk(idx uint64, data []byte) error {
	if x.sinceMark >= wire.MarkBytes || x.sent+int64(len(data))-x.confirmed > wire.WindowBytes && x.sinceMark > 0 {
		if err := x.mark(idx); err != nil {
			return err
		}
	}
	if x.sent+int64(len(data))-x.confirmed > wire.WindowBytes {
		if err := x.c.Flush(); err != nil {
			return err
		}
		for x.sent+int64(len(data))-x.confirmed > wire.WindowBytes {
			t, body, err := x.readOne()
			switch {
			case err != nil:
				return err
			case t == wire.MsgResyncHashes:
				x.queued = append(x.queued, bytes.Clone(body))
			case t != wire.MsgResyncDurable:
				return fmt.Errorf("%w: got message %d during a resync", wire.ErrFrame, t)
			}
		}
	}
	if err := x.c.WriteFrame(wire.MsgResyncChunk, wire.EncodeChunk(x.buf[:0], idx, data)); err != nil {
		return err
	}
	x.sent += int64(len(data))
	x.sinceMark += int64(len(data))
	return nil
}

// mark sends a mark at next.
func (x *resyncStream) mark(next uint64) error {
	x.marks = append(x.marks, sentMark{next, x.sent})
	x.sinceMark = 0
	return x.c.WriteFrame(wire.MsgResyncMark, wire.EncodeU64(next))
}

// ack reads the replica's answer to ResyncDone.
func (x *resyncStream) ack() ([]byte, error) {
	t, body, err := x.read()
	if err != nil {
		return nil, err
	}
	if t != wire.MsgAck {
		return nil, fmt.Errorf("%w: got message %d, want %d", wire.ErrFrame, t, wire.MsgAck)
	}
	return body, nil
}

// aheadBatches is how many batches of sums the primary hashes ahead of
// the replica's: enough to keep its workers busy while a batch is
// compared and its differing chunks sent, little work lost when the
// session ends.
const aheadBatches = 2

// aheadBatch is how many chunks the primary hashes at once ahead.
const aheadBatch = 256

// sumsAhead hands out, in order, the sums of a device's chunks that a
// goroutine hashes ahead (hashAhead).
type sumsAhead struct {
	ch   <-chan []wire.Sum
	errc <-chan error
	have []wire.Sum // received, not yet taken
}

// hashAhead starts hashing chunks from..n-1 of dev, at most aheadBatches
// batches ahead of what is taken; cancelling ctx stops it.
func hashAhead(ctx context.Context, dev interface {
	ReadAt([]byte, int64) (int, error)
}, size int64, chunk int, from, n uint64) *sumsAhead {
	ch := make(chan []wire.Sum, aheadBatches)
	errc := make(chan error, 1)
	go func() {
		defer close(ch)
		for first := from; first < n; first += aheadBatch {
			sums, err := wire.HashChunks(ctx, dev, size, chunk, first, min(aheadBatch, n-first), 0)
			if err != nil {
				errc <- err
				return
			}
			select {
			case ch <- sums:
			case <-ctx.Done():
				return
			}
		}
	}()
	return &sumsAhead{ch: ch, errc: errc}
}

// take returns the sums of the next k chunks.
func (a *sumsAhead) take(k uint64) ([]wire.Sum, error) {
	for uint64(len(a.have)) < k {
		sums, ok := <-a.ch
		if !ok {
			select {
			case err := <-a.errc:
				return nil, err
			default:
				return nil, fmt.Errorf("%w: hashes asked for past the disk's end", wire.ErrResync)
			}
		}
		a.have = append(a.have, sums...)
	}
	out := a.have[:k:k]
	a.have = a.have[k:]
	return out, nil
}
