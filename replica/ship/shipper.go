// Package ship is the primary's side of replication: a Shipper per disk
// sends the initial copy of a tracked volume, then every durable change-
// log record (continuously or at a copy frequency, coalesced within an
// interval, never across a point), and releases the log as the replica
// acknowledges. It speaks replica/wire and links nothing of the
// replica's store.
package ship

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/vrep-io/vrep/replica/health"
	"github.com/vrep-io/vrep/replica/wire"
	"log/slog"
	"net"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/blockdev/tracked"
	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/jobs"
)

// DefaultBackoff is Hyper-V's retry schedule: 1, 2, 4, 8, 10 minutes, then
// every 30 minutes.
var DefaultBackoff = []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 10 * time.Minute, 30 * time.Minute}

// ShipperConfig configures the primary's side of one disk's stream.
type ShipperConfig struct {
	Addr  string      // the replica, host:port
	TLS   *tls.Config // pki.ClientConfig
	Codec wire.Codec  // preferred compression
	// Backoff is the retry schedule for recoverable errors; its last entry
	// repeats (default DefaultBackoff; tests scale it down).
	Backoff []time.Duration
	// Poll is how often a caught-up stream looks for new records.
	Poll time.Duration
	// Through, if set, bounds what is shipped: records up to the LSN it
	// returns (interval copy frequencies: the point of the last tick).
	// Nil ships every durable record (continuous).
	Through func() uint64
	// Coalesce drops records a later record of the same batch overwrites
	// entirely, never across a point, and ships the rest as a range.
	Coalesce bool
	// Timeout is how long the connection may stand still while a frame
	// is sent or an ack awaited (ten times it for the ack of a whole
	// initial copy): a black-holed or half-open connection is given up
	// and retried; a slow one that keeps moving is not (default one
	// minute).
	Timeout time.Duration
	// Keepalive is how often an idle stream tells the replica it is alive
	// (default one minute, well inside the replica's idle timeout).
	Keepalive time.Duration
	// Interval is the copy frequency Through stands for (0: continuous)
	// and PointsEvery how often points are taken: they are told to the
	// replica, which judges its health by them, and shown in the status.
	// SetMode changes them, with Through and Coalesce, on a running stream.
	Interval, PointsEvery time.Duration
	// ResyncWindow is when automatic resyncs run (zero: the default,
	// 18:00-06:00).
	ResyncWindow health.ResyncWindow
	// VM names the disk's VM in the commands a health reason suggests.
	VM string
	// OnSuperseded, if set, is called when the replica refuses the stream
	// because the VM failed over to it (wire.CodeSuperseded), with the
	// replica's message: the caller must fence the disk. Shipping stops
	// in Critical, as for any non-recoverable error.
	OnSuperseded func(msg string)
	// RPO, when set, is the VM's recovery point objective: health judges
	// the lag by it instead of by the copy frequency.
	RPO health.RPO
	// Jobs, if set, records the initial copies and resyncs as jobs.
	Jobs *jobs.Log
	// OnBatch, if set, is told of each batch the replica acknowledged
	// (replication statistics: vrep measure). It must not block.
	OnBatch func(Batch)
	// OnBase, if set, is told when the replica has acknowledged a new
	// consistent copy of the disk at an LSN (fresh): the initial copy, or
	// a resync's end. Until a point follows it the replica has no point
	// of that copy to fail over to. It is also told, not fresh, when a
	// stream finds the replica already holding a copy (of an earlier
	// run), so that a caller waiting for every disk of a group to have
	// one hears of each. It must not block.
	OnBase func(lsn uint64, fresh bool)
	Log    *slog.Logger
}

// Batch is one acknowledged batch of records: a replication cycle.
type Batch struct {
	At      time.Time     // when the ack came
	Records uint64        // LSNs the batch covered
	Bytes   int64         // record payload bytes
	Wire    int64         // frame bytes sent, after compression
	Latency time.Duration // from sending the batch to its ack
}

// Health is a disk's replication health, as Hyper-V reports it.
// ShipStatus is what a shipper reports. Health and Reason are
// JudgeShipping's verdict on the rest.
type ShipStatus struct {
	Health health.Health `json:"health"`
	Reason string        `json:"reason,omitempty"`
	// Connected says whether a stream to the replica is open; Since is
	// when it opened, or when it was lost (or shipping started).
	Connected bool      `json:"connected"`
	Since     time.Time `json:"since"`
	// Frequency is the copy frequency ("continuous" or a duration), and
	// PointsEvery how often points are taken, in seconds.
	Frequency   string  `json:"frequency"`
	PointsEvery float64 `json:"points_every_seconds,omitempty"`
	// LastSend is when records were last sent, LastAck when the replica
	// last acknowledged some; NextSend is when the next send is due: the
	// next retry while not connected, the next tick of an interval copy
	// frequency (zero: continuous, as soon as a record is durable).
	LastSend time.Time `json:"last_send,omitzero"`
	LastAck  time.Time `json:"last_ack,omitzero"`
	NextSend time.Time `json:"next_send,omitzero"`
	Acked    uint64    `json:"acked_lsn"`
	Initial  int       `json:"initial_percent"`
	Codec    string    `json:"codec,omitempty"`
	WireSent int64     `json:"wire_bytes"`   // frames sent, headers included
	Shipped  int64     `json:"record_bytes"` // record payload bytes acknowledged
	// Coalesced counts records not shipped because a later record of the
	// same interval overwrote them entirely.
	Coalesced int64 `json:"coalesced_records"`
	// Lag: records and bytes of log the replica has not acknowledged, and
	// for how long it has been behind.
	// LagSeconds means something only when LagKnown: not before the
	// first copy completes, nor before the primary has seen the replica
	// hold everything since it started.
	LagRecords uint64  `json:"lag_records"`
	LagBytes   int64   `json:"lag_bytes"`
	LagSeconds float64 `json:"lag_seconds"`
	LagKnown   bool    `json:"lag_known"`
	// InitialBytes counts the bytes of base chunks sent by initial copies
	// over the network (0 for a disk seeded from media).
	InitialBytes int64 `json:"initial_copy_bytes"`
	// AwaitingSeed is the LSN of a seed exported for the disk that the
	// replica has not imported yet (0: none): no initial copy is sent
	// over the network meanwhile.
	AwaitingSeed uint64 `json:"awaiting_seed_lsn,omitempty"`
	// Resync is the disk's resync, if one was needed or asked for since
	// the daemon started (resync.go).
	Resync *ResyncProgress `json:"resync,omitempty"`
	// SeedVerify is the check of an imported seed against the primary
	// (seedverify.go); nil: none since the daemon started.
	SeedVerify *SeedVerifyStatus `json:"seed_verify,omitempty"`
}

// Shipper ships one disk's change log to the replica: the initial copy
// when the replica has none, then every durable record, continuously.
type Shipper struct {
	disk string
	vol  *tracked.Volume
	cfg  ShipperConfig

	// wake, when signalled, ends a backoff wait or a Critical stop at
	// once (Resume).
	wake chan struct{}

	// cur is where the last scan of the log stopped (a batch's, or the
	// stream's first, which finds where the replica's copy ends): the
	// next batch reads on from there (the stream's goroutine only).
	cur hrl.Cursor
	// body is the last batch's body, kept for the next while the stream
	// has more to send: a body grows to maxBatch (or one record, if
	// larger), and a new one for each batch was 40 % of the stream's CPU
	// on a busy disk (growing it, faulting its pages in). Dropped when
	// the stream has nothing to send and when the session ends.
	body []byte

	mu       sync.Mutex
	st       ShipStatus
	caughtUp time.Time // when the replica last had all the previous ack had seen logged
	// ackSeg and ackOff: the segment (first LSN) and file offset where
	// the acknowledged records end, when known (ackSeg 0: not known).
	ackSeg   uint64
	ackOff   int64
	target   uint64 // the log's last LSN at the previous ack
	stopped  string // the non-recoverable error that stopped shipping
	lastErr  string // why the last connection ended
	retryAt  time.Time
	copyDone bool
	overflow time.Time // when the log was first seen overflowed
	tickAt   time.Time // when Through last moved (an interval's tick)
	mode     shipMode
	modeGen  uint64 // bumped by SetMode: the stream re-announces it
	seedLSN  uint64 // a seed awaits import at this LSN (0: none); see AwaitSeed
	seedDone func()
	seedChk  *seedCheck // an imported seed to verify (seedverify.go)
	rs       resyncCtl
	verifies chan *verifyReq
	// pendingVerify is the verify the stream serves (its goroutine only).
	pendingVerify *verifyReq
}

// ErrAwaitingSeed ends a session with a replica that has no copy of a
// disk waiting for its seed: the seed is imported there, not sent.
var ErrAwaitingSeed = errors.New("waiting for the seed to be imported on the replica (vrep seed import); no initial copy is sent over the network meanwhile")

// AwaitSeed says a seed of the disk was exported at lsn: until the
// replica holds the disk at lsn or later, no initial copy is sent over
// the network, and done is then called once. AwaitSeed(0, nil) stops
// waiting. The next connection attempt is made at once.
func (s *Shipper) AwaitSeed(lsn uint64, done func()) {
	s.mu.Lock()
	s.seedLSN, s.seedDone = lsn, done
	s.st.AwaitingSeed = lsn
	s.mu.Unlock()
	s.Resume()
}

// shipMode is what SetMode changes on a running stream.
type shipMode struct {
	through               func() uint64
	coalesce              bool
	interval, pointsEvery time.Duration
}

// NewShipper returns a shipper for a tracked volume opened with Retain.
func NewShipper(disk string, vol *tracked.Volume, cfg ShipperConfig) *Shipper {
	if len(cfg.Backoff) == 0 { // NB: pflag gives an empty, non-nil slice for an unset flag
		cfg.Backoff = DefaultBackoff
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Minute
	}
	if cfg.Keepalive <= 0 {
		cfg.Keepalive = time.Minute
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 50 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.ResyncWindow == (health.ResyncWindow{}) {
		cfg.ResyncWindow = health.DefaultResyncWindow
	}
	return &Shipper{disk: disk, vol: vol, cfg: cfg, wake: make(chan struct{}, 1),
		rs: resyncCtl{window: cfg.ResyncWindow}, verifies: make(chan *verifyReq),
		st: ShipStatus{Health: health.Normal, Since: time.Now()},
		// The replica must ack what is logged now before the lag is known.
		target: vol.Log().LastLSN(),
		mode:   shipMode{cfg.Through, cfg.Coalesce, cfg.Interval, cfg.PointsEvery}}
}

// SetMode changes the copy frequency of a running shipper: through and
// coalesce as in ShipperConfig, and the interval and point interval they
// stand for. The stream picks it up at its next batch and tells the
// replica. Safe to call at any time.
func (s *Shipper) SetMode(through func() uint64, coalesce bool, interval, pointsEvery time.Duration) {
	s.mu.Lock()
	s.mode = shipMode{through, coalesce, interval, pointsEvery}
	s.modeGen++
	s.tickAt = time.Time{}
	s.mu.Unlock()
}

// Resume makes a waiting shipper retry now: it ends a backoff wait, or a
// stop on a non-recoverable error (Critical). It returns what the shipper
// was doing: "connected", "retrying" or "stopped".
func (s *Shipper) Resume() string {
	s.mu.Lock()
	was := "retrying"
	switch {
	case s.st.Connected:
		was = "connected"
	case s.stopped != "":
		was = "stopped"
	}
	s.mu.Unlock()
	if was != "connected" {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	return was
}

// Status returns the shipper's state, judged by JudgeShipping.
func (s *Shipper) Status() ShipStatus {
	now := time.Now()
	resync := s.noteOverflow()
	s.mu.Lock()
	st := s.st
	in := health.ShipState{VM: s.cfg.VM, Stopped: s.stopped, Resync: resync, OverflowAt: s.overflow,
		Connected: st.Connected, Since: st.Since, LastErr: s.lastErr, RetryAt: s.retryAt,
		CopyDone: s.copyDone, Initial: st.Initial, Interval: s.mode.interval, PointsEvery: s.mode.pointsEvery,
		CaughtUp: s.caughtUp, RPO: s.cfg.RPO}
	tickAt := s.tickAt
	ackSeg, ackOff := s.ackSeg, s.ackOff
	if p := s.rs.prog; p != nil {
		cp := *p
		st.Resync = &cp
		in.ResyncPlan = p.State + ": " + p.Reason
		if p.State == "running" {
			in.ResyncPlan = fmt.Sprintf("running, %d%% (%s)", p.Percent, p.Reason)
		}
	}
	s.mu.Unlock()
	st.Frequency = health.FrequencyName(in.Interval)
	st.PointsEvery = in.PointsEvery.Seconds()
	switch {
	case !st.Connected:
		st.NextSend = in.RetryAt
	case in.Interval > 0 && !tickAt.IsZero():
		st.NextSend = tickAt.Add(in.Interval)
	case in.Interval > 0:
		st.NextSend = st.Since.Add(in.Interval)
	}
	// Lag: the log after the acknowledged LSN, and how long the replica
	// has not had everything the primary logged.
	for _, seg := range s.vol.Log().Segments() {
		switch {
		case seg.Last <= st.Acked:
		case seg.First > st.Acked:
			st.LagBytes += seg.Size
		case seg.First == ackSeg && ackOff <= seg.Size:
			st.LagBytes += seg.Size - ackOff
		default:
			// An estimate: the records' share of the segment, by count.
			st.LagBytes += int64(float64(seg.Size) * float64(seg.Last-st.Acked) / float64(seg.Last-seg.First+1))
		}
	}
	if last := s.vol.Log().LastLSN(); last > st.Acked {
		st.LagRecords = last - st.Acked
		in.Behind = true
	}
	lag, known := in.Lag(now)
	st.LagSeconds, st.LagKnown = lag.Seconds(), known
	st.Health, st.Reason = health.JudgeShipping(in, now)
	return st
}

func (s *Shipper) set(fn func(*ShipStatus)) {
	s.mu.Lock()
	fn(&s.st)
	s.mu.Unlock()
}

// fatal reports whether an error needs the operator: authentication,
// authorization, a broken chain. Anything else is retried.
func fatal(err error) bool {
	var re *wire.RemoteError
	if errors.As(err, &re) {
		return !re.Recoverable()
	}
	var ce *tls.CertificateVerificationError
	return errors.As(err, &ce) || errors.Is(err, wire.ErrBrokenChain) || errors.Is(err, wire.ErrVersion)
}

// Run ships until ctx ends. Recoverable errors are retried on the backoff
// schedule; a non-recoverable one stops shipping (Critical) until Resume.
// Resume also ends a backoff wait early.
func (s *Shipper) Run(ctx context.Context) {
	defer s.releaseResyncPause(true)
	attempt := 0
	for ctx.Err() == nil {
		select { // a resume asked for while connected means nothing now
		case <-s.wake:
		default:
		}
		progressed, err := s.session(ctx)
		if ctx.Err() != nil {
			return
		}
		s.noteOverflow()
		s.releaseResyncPause(false)
		now := time.Now()
		var re *wire.RemoteError
		if errors.As(err, &re) && re.Code == wire.CodeResync || errors.Is(err, wire.ErrBrokenChain) {
			s.needResync(err.Error())
			err = fmt.Errorf("%w: %v", errResyncWaiting, err)
		}
		if errors.Is(err, errResyncWaiting) {
			// Not an error to back off from: wait for the window (or
			// vrep resync --now), then resync.
			s.mu.Lock()
			next := s.rs.next
			s.lastErr, s.retryAt = err.Error(), next
			s.disconnectedLocked(now)
			s.mu.Unlock()
			wait := time.Until(next)
			if next.IsZero() {
				wait = s.cfg.Backoff[0]
			}
			timer := time.NewTimer(max(wait, 0))
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			case <-s.wake:
				timer.Stop()
			}
			attempt = 0
			continue
		}
		if fatal(err) {
			var re *wire.RemoteError
			if errors.As(err, &re) && re.Code == wire.CodeSuperseded && s.cfg.OnSuperseded != nil {
				s.cfg.OnSuperseded(re.Msg)
			}
			s.mu.Lock()
			s.stopped, s.lastErr, s.retryAt = err.Error(), err.Error(), time.Time{}
			s.disconnectedLocked(now)
			s.mu.Unlock()
			s.releaseResyncPause(true)
			s.cfg.Log.Error("replication stopped: the operator must act, then run vrep replication resume", "disk", s.disk, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
			}
			s.mu.Lock()
			s.stopped = ""
			s.mu.Unlock()
			s.cfg.Log.Info(s.disk+": replication resume asked for: retrying now", "disk", s.disk, "stopped_by", err)
			attempt = 0
			continue
		}
		if progressed {
			attempt = 0
		}
		wait := s.cfg.Backoff[min(attempt, len(s.cfg.Backoff)-1)]
		attempt++
		s.mu.Lock()
		s.lastErr, s.retryAt = err.Error(), now.Add(wait)
		s.disconnectedLocked(now)
		s.mu.Unlock()
		s.cfg.Log.Warn("replication interrupted", "disk", s.disk, "err", err, "retry_in", wait)
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		case <-s.wake:
			timer.Stop()
			attempt = 0
			s.cfg.Log.Info(s.disk+": replication resume asked for: retrying now", "disk", s.disk, "was_retrying_in", time.Until(now.Add(wait)).Round(time.Millisecond))
		}
	}
}

// noteOverflow notes when the log was first seen overflowed (the volume
// does not say when it happened): by a stream, a retry or a status call.
func (s *Shipper) noteOverflow() bool {
	if !s.vol.ResyncRequired() {
		return false
	}
	s.mu.Lock()
	if s.overflow.IsZero() {
		s.overflow = time.Now()
	}
	s.mu.Unlock()
	return true
}

// disconnectedLocked notes that the stream is down, from now if it was up.
func (s *Shipper) disconnectedLocked(now time.Time) {
	if s.st.Connected {
		s.st.Connected, s.st.Since = false, now
	}
}

// session runs one connection; progressed says whether anything was
// acknowledged (a fresh start of the backoff schedule).
func (s *Shipper) session(ctx context.Context) (progressed bool, err error) {
	defer func() { s.body = nil }() // no batch body kept through a backoff or a stop
	raw, err := (&net.Dialer{Timeout: 30 * time.Second}).DialContext(ctx, "tcp", s.cfg.Addr)
	if err != nil {
		return false, err
	}
	pc := wire.NewProgressConn(raw, s.cfg.Timeout)
	nc := tls.Client(pc, s.cfg.TLS)
	defer nc.Close()
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	if err := nc.HandshakeContext(ctx); err != nil {
		return false, err
	}
	// arm scales the progress timeout: 10 for the ack of a whole initial
	// copy (the replica makes the image durable), else 1.
	arm := func(n int) { pc.Scale.Store(int64(n)) }
	c := wire.NewConn(nc)
	defer c.Close()
	defer s.dropVerify()
	c.WriteFrame(wire.MsgHello, wire.Hello{Version: wire.Version, Codecs: wire.AllCodecs, Prefer: s.cfg.Codec}.Encode())
	if err := c.Flush(); err != nil {
		return false, err
	}
	body, err := wire.Expect(c, wire.MsgWelcome)
	if err != nil {
		return false, err
	}
	w, err := wire.DecodeWelcome(body)
	if err != nil {
		return false, err
	}
	c.SetCodec(w.Codec)
	s.set(func(st *ShipStatus) { st.Codec = w.Codec.String() })
	c.WriteFrame(wire.MsgOpenDisk, wire.EncodeOpenDisk(s.disk, s.vol.Size()))
	if err := c.Flush(); err != nil {
		return false, err
	}
	if body, err = wire.Expect(c, wire.MsgDiskState); err != nil {
		return false, err
	}
	applied, seeded, resyncing, err := wire.DecodeDiskStateFlags(body)
	if err != nil {
		return false, err
	}
	now := time.Now()
	s.mu.Lock()
	down, wasDown := now.Sub(s.st.Since), s.lastErr != ""
	s.st.Connected, s.st.Since, s.retryAt = true, now, time.Time{}
	s.lastErr, s.copyDone = "", seeded
	mode, modeGen := s.mode, s.modeGen
	seedLSN, seedDone := s.seedLSN, s.seedDone
	if seedLSN > 0 && seeded && applied >= seedLSN {
		s.seedLSN, s.seedDone, s.st.AwaitingSeed = 0, nil, 0
	}
	s.mu.Unlock()
	if seedLSN > 0 && !seeded {
		return false, fmt.Errorf("%w (seed at LSN %d)", ErrAwaitingSeed, seedLSN)
	}
	if seedLSN > 0 && seeded && applied >= seedLSN {
		s.cfg.Log.Info(s.disk+": the replica holds the seed: shipping starts after it, once the seed is verified by checksums", "disk", s.disk, "seed_lsn", seedLSN, "applied", applied)
		s.startSeedCheck(seedLSN, seedDone)
	}
	if behind := s.vol.Log().LastLSN() - min(applied, s.vol.Log().LastLSN()); wasDown {
		s.cfg.Log.Info(fmt.Sprintf("%s: replication resumed after %s, %d records behind", s.disk, down.Round(time.Second), behind),
			"disk", s.disk, "after", down, "behind", behind)
	}
	c.WriteFrame(wire.MsgSettings, wire.EncodeSettings(mode.interval, mode.pointsEvery))
	if err := c.Flush(); err != nil {
		return false, err
	}
	if !seeded {
		job := s.cfg.Jobs.Start(jobs.InitialCopy, s.disk)
		applied, err = s.initialCopy(c, arm, job)
		if job.End(err); err != nil {
			return false, err
		}
		progressed = true
		s.mu.Lock()
		s.st.Initial, s.copyDone = 100, true
		s.mu.Unlock()
		if f := s.cfg.OnBase; f != nil {
			f(applied, true)
		}
	} else {
		s.set(func(st *ShipStatus) { st.Initial = 100 })
		if f := s.cfg.OnBase; f != nil {
			f(applied, false)
		}
		if first := s.vol.Log().Segments()[0].First; first > applied+1 {
			s.needResync(fmt.Sprintf("the replica has LSN %d, the primary's log starts at %d: the replica's copy (a seed imported, or its last apply) is older than what the primary's log still holds", applied, first))
		}
		if applied, err = s.maybeResync(ctx, c, arm, applied, resyncing); err != nil {
			return progressed, err
		}
	}
	// Where the replica's copy ends in the log: with the cursor there the
	// lag in bytes is exact from the stream's start (at 5 or 15 minutes a
	// frequency's first batch is that far away). This scan reads the
	// segment from its start once, as the first batch would have; the
	// first batch reads on from it. acked uses the cursor only if it
	// stands right after applied; an error here is the first batch's to
	// report.
	s.cur, _ = s.vol.Log().ScanFrom(hrl.Cursor{}, applied+1, func(hrl.Record) error { return errBatchFull })
	s.acked(applied)
	sentBefore := c.Sent()
	log := s.vol.Log()
	limit := minBatch
	lastSent := time.Now()
	var lastThrough uint64
	for {
		if ctx.Err() != nil {
			return progressed, ctx.Err()
		}
		s.noteOverflow()
		s.mu.Lock()
		want := s.rs.want
		s.mu.Unlock()
		if want || s.vol.ResyncRequired() {
			before := applied
			if applied, err = s.maybeResync(ctx, c, arm, applied, false); err != nil {
				return progressed, err
			}
			if applied != before {
				// The replica holds the disk at the resync's target: a
				// quiet disk has nothing more to ship, and the status
				// would show it behind until its next write.
				s.acked(applied)
			}
		}
		s.seedCheckStep()
		if applied, err = s.serveVerify(c, arm, applied); err != nil {
			return progressed, err
		}
		s.mu.Lock()
		changed := s.modeGen != modeGen
		mode, modeGen = s.mode, s.modeGen
		s.mu.Unlock()
		if changed {
			c.WriteFrame(wire.MsgSettings, wire.EncodeSettings(mode.interval, mode.pointsEvery))
			if err := c.Flush(); err != nil {
				return progressed, err
			}
		}
		// Ship only durable records: a power cut can tear and reuse LSNs
		// that were never synced, which the replica would then skip.
		if log.LastLSN() > log.SyncedLSN() {
			if err := log.Sync(); err != nil {
				return progressed, err
			}
		}
		durable := min(log.SyncedLSN(), s.shipLimit())
		if mode.through != nil {
			through := mode.through()
			if through != lastThrough {
				lastThrough = through
				s.mu.Lock()
				s.tickAt = time.Now()
				s.mu.Unlock()
			}
			durable = min(durable, through)
		}
		if durable <= applied {
			s.body = nil
			if log.LastLSN() <= applied {
				s.mu.Lock()
				s.caughtUp = time.Now()
				s.mu.Unlock()
			}
			if time.Since(lastSent) >= s.cfg.Keepalive {
				arm(1)
				c.WriteFrame(wire.MsgKeepalive, nil)
				if err := c.Flush(); err != nil {
					return progressed, err
				}
				lastSent = time.Now()
			}
			select {
			case <-ctx.Done():
				return progressed, ctx.Err()
			case <-time.After(s.cfg.Poll):
			case <-s.wake: // a resync or a verify asked for
			}
			continue
		}
		typ, build := wire.MsgRecords, s.batch
		if mode.coalesce {
			typ, build = wire.MsgRecordsRange, s.coalescedBatch
		}
		body, last, payload, err := build(applied, durable, limit)
		if isLogCorrupt(err) {
			s.needResync("the change log is corrupt: " + err.Error())
		}
		if err != nil {
			return progressed, err
		}
		faultpoint.Hit(faultpoint.ShipBeforeSend)
		arm(1)
		lastSent = time.Now()
		s.set(func(st *ShipStatus) { st.LastSend = lastSent })
		c.WriteFrame(typ, body)
		s.body = body[:0] // WriteFrame keeps no reference to it
		if err := c.Flush(); err != nil {
			return progressed, err
		}
		ab, err := wire.Expect(c, wire.MsgAck)
		if err != nil {
			return progressed, err
		}
		ack, err := wire.DecodeU64(ab)
		if err != nil {
			return progressed, err
		}
		if ack != last {
			return progressed, fmt.Errorf("%w: sent through %d, acknowledged %d", wire.ErrBrokenChain, last, ack)
		}
		faultpoint.Hit(faultpoint.ShipAfterAck)
		if f := s.cfg.OnBatch; f != nil {
			f(Batch{At: time.Now(), Records: ack - applied, Bytes: payload, Wire: c.Sent() - sentBefore, Latency: time.Since(lastSent)})
		}
		applied = ack
		progressed = true
		limit = min(2*limit, maxBatch)
		s.set(func(st *ShipStatus) { st.WireSent += c.Sent() - sentBefore; st.Shipped += payload })
		sentBefore = c.Sent()
		s.acked(ack)
	}
}

func (s *Shipper) acked(lsn uint64) {
	last := s.vol.Log().LastLSN()
	first, off, at := s.cur.At()
	s.mu.Lock()
	s.st.Acked, s.st.LastAck = lsn, time.Now()
	// Where the acknowledged records end in the log, if the last batch's
	// scan stopped there: the lag in bytes is then exact.
	s.ackSeg, s.ackOff = 0, 0
	if first != 0 && at == lsn {
		s.ackSeg, s.ackOff = first, off
	}
	// Lag in seconds counts from when the replica last had everything
	// logged at the previous ack: with points every few seconds the log
	// is never still, and "had everything, now" would never hold.
	if lsn >= s.target {
		s.caughtUp = time.Now()
	}
	s.target = last
	s.mu.Unlock()
	if err := s.vol.Release(lsn); err != nil {
		s.cfg.Log.Warn("releasing shipped log", "disk", s.disk, "err", err)
	}
}

// A session's first batch is at most minBatch bytes of records; each ack
// doubles the bound up to maxBatch. Large batches amortise the replica's
// fsyncs; small first ones make progress even on a link that keeps
// breaking (or a replica that keeps restarting) before a large one could
// be applied and acknowledged.
const (
	minBatch = 256 << 10
	maxBatch = 8 << 20
)

var errBatchFull = errors.New("batch full")

// batch builds a Records body of the records after applied, up to durable,
// and counts their payload bytes.
func (s *Shipper) batch(applied, durable uint64, limit int) ([]byte, uint64, int64, error) {
	body := wire.AppendRecords(s.body, s.disk, nil)
	countAt := len(body) - 4
	var count uint32
	var payload int64
	last := applied
	var err error
	s.cur, err = s.vol.Log().ScanFrom(s.cur, applied+1, func(r hrl.Record) error {
		if r.LSN > durable || count > 0 && len(body)+hrl.RecHeaderSize+len(r.Payload) > limit {
			return errBatchFull // one record alone always fits: MaxBody > MaxPayload
		}
		body = hrl.AppendRecord(body, r)
		payload += int64(len(r.Payload))
		count++
		last = r.LSN
		return nil
	})
	if err != nil && !errors.Is(err, errBatchFull) {
		return nil, 0, 0, err
	}
	binary.LittleEndian.PutUint32(body[countAt:], count)
	return body, last, payload, nil
}

// coalescedBatch builds a RecordsRange body of the records after applied,
// up to durable, without those a later record of the batch overwrites
// entirely and no point lies between.
func (s *Shipper) coalescedBatch(applied, durable uint64, limit int) ([]byte, uint64, int64, error) {
	var recs []hrl.Record
	size := 0
	last := applied
	var err error
	s.cur, err = s.vol.Log().ScanFrom(s.cur, applied+1, func(r hrl.Record) error {
		if r.LSN > durable || len(recs) > 0 && size+hrl.RecHeaderSize+len(r.Payload) > limit {
			return errBatchFull
		}
		r.Payload = bytes.Clone(r.Payload)
		recs = append(recs, r)
		size += hrl.RecHeaderSize + len(r.Payload)
		last = r.LSN
		return nil
	})
	if err != nil && !errors.Is(err, errBatchFull) {
		return nil, 0, 0, err
	}
	kept := Coalesce(recs)
	var payload int64
	for _, r := range kept {
		payload += int64(len(r.Payload))
	}
	s.set(func(st *ShipStatus) { st.Coalesced += int64(len(recs) - len(kept)) })
	return wire.AppendRecordsRange(s.body, applied+1, last, s.disk, kept), last, payload, nil
}

// Coalesce returns recs without the records that a later record overwrites
// entirely with no marker in between: at every point the disk reads the
// same. Markers are always kept, in order.
func Coalesce(recs []hrl.Record) []hrl.Record {
	keep := make([]bool, len(recs))
	var covered spans // ranges later records of the current span write
	for i := len(recs) - 1; i >= 0; i-- {
		r := recs[i]
		if r.Type == hrl.TypeMarker {
			keep[i] = true
			covered = covered[:0] // never across a point
			continue
		}
		lo, hi := r.Offset, r.Offset+uint64(r.Span)
		if !covered.contains(lo, hi) {
			keep[i] = true
			covered = covered.add(lo, hi)
		}
	}
	out := recs[:0:0]
	for i, r := range recs {
		if keep[i] {
			out = append(out, r)
		}
	}
	return out
}

// spans is a sorted set of disjoint half-open byte ranges.
type spans [][2]uint64

func (s spans) contains(lo, hi uint64) bool {
	i := sort.Search(len(s), func(i int) bool { return s[i][1] > lo })
	return i < len(s) && s[i][0] <= lo && s[i][1] >= hi
}

func (s spans) add(lo, hi uint64) spans {
	i := sort.Search(len(s), func(i int) bool { return s[i][1] >= lo })
	j := i
	for j < len(s) && s[j][0] <= hi {
		lo, hi = min(lo, s[j][0]), max(hi, s[j][1])
		j++
	}
	return slices.Replace(s, i, j, [2]uint64{lo, hi})
}

// initialCopy sends the base image at the checkpoint, skipping zero chunks,
// while the VM keeps writing into the log.
func (s *Shipper) initialCopy(c *wire.Conn, arm func(int), job *jobs.Run) (uint64, error) {
	ckpt := s.vol.PauseMerge()
	defer s.vol.ResumeMerge()
	base := s.vol.Base()
	size := base.Size()
	const chunk = 1 << 20
	buf := make([]byte, 8+chunk)
	holes := zeroMap{dev: base, size: size}
	s.cfg.Log.Info("initial replication started", "disk", s.disk, "size", size, "checkpoint", ckpt)
	for off := int64(0); off < size; off += chunk {
		n := min(chunk, size-off)
		// The replica's new image reads as zeros where nothing is sent:
		// a hole is skipped unread, a chunk of zeros after reading it.
		data := buf[8 : 8+n]
		skip := holes.zeros(off, n)
		if !skip {
			if _, err := base.ReadAt(data, off); err != nil {
				return 0, err
			}
			skip = blockdev.AllZero(data)
		}
		pct := int(99 * (off + n) / size) // 100 once the replica has made it durable
		s.set(func(st *ShipStatus) { st.Initial = pct })
		job.Progress(off+n, size)
		if skip {
			continue
		}
		binary.LittleEndian.PutUint64(buf, uint64(off))
		arm(1)
		if err := c.WriteFrame(wire.MsgBaseChunk, buf[:8+n]); err != nil {
			return 0, err
		}
		s.set(func(st *ShipStatus) { st.InitialBytes += n })
	}
	arm(10) // the replica makes the whole image durable
	c.WriteFrame(wire.MsgBaseDone, wire.EncodeU64(ckpt))
	if err := c.Flush(); err != nil {
		return 0, err
	}
	ab, err := wire.Expect(c, wire.MsgAck)
	if err != nil {
		return 0, err
	}
	ack, err := wire.DecodeU64(ab)
	if err != nil {
		return 0, fmt.Errorf("%w: the acknowledgement of the initial copy at %d does not decode: %v", wire.ErrFrame, ckpt, err)
	}
	if ack != ckpt {
		return 0, fmt.Errorf("%w: initial copy at %d acknowledged as %d", wire.ErrFrame, ckpt, ack)
	}
	// The copy is the disk at ckpt: a log that overflowed before it
	// needs no resync (and the records after ckpt are still logged,
	// merging being paused).
	if s.vol.ResyncRequired() {
		if err := s.vol.ClearResync(ckpt); err != nil {
			return 0, err
		}
	}
	s.cfg.Log.Info("initial replication complete", "disk", s.disk, "lsn", ckpt)
	return ckpt, nil
}

// zeroMap answers whether ranges of a device read as zeros, from its map
// (blockdev.Map), asked for in ascending order. It says no where the map
// does not know.
type zeroMap struct {
	dev  blockdev.Device
	size int64
	ext  []blockdev.Extent // the map from at on
	at   int64
	err  bool // the device could not be mapped: every range is data
}

func (z *zeroMap) zeros(off, n int64) bool {
	for len(z.ext) > 0 && z.at+z.ext[0].Length <= off {
		z.at += z.ext[0].Length
		z.ext = z.ext[1:]
	}
	if len(z.ext) == 0 || z.at > off {
		if z.err || off >= z.size {
			return false
		}
		ext, err := blockdev.Map(z.dev, off, z.size-off)
		if err != nil || len(ext) == 0 {
			z.err = true
			return false
		}
		z.ext, z.at = ext, off
	}
	pos := z.at
	for _, e := range z.ext {
		if !e.Zero {
			return false
		}
		if pos += e.Length; pos >= off+n {
			return true
		}
	}
	return false // the map stops short of the range: read it
}
