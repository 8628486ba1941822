package replica

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/vrep-io/vrep/blockdev/tracked"
	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/faultpoint"
)

// DefaultBackoff is Hyper-V's retry schedule: 1, 2, 4, 8, 10 minutes, then
// every 30 minutes.
var DefaultBackoff = []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 10 * time.Minute, 30 * time.Minute}

// ShipperConfig configures the primary's side of one disk's stream.
type ShipperConfig struct {
	Addr  string      // the replica, host:port
	TLS   *tls.Config // pki.ClientConfig
	Codec Codec       // preferred compression
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
	Log       *slog.Logger
}

// Health is a disk's replication health, as Hyper-V reports it.
type Health string

// Health values.
const (
	Normal   Health = "Normal"
	Warning  Health = "Warning"  // retrying a recoverable error
	Critical Health = "Critical" // stopped: the operator must act
)

// ShipStatus is what a shipper reports.
type ShipStatus struct {
	Health   Health `json:"health"`
	Reason   string `json:"reason,omitempty"`
	Acked    uint64 `json:"acked_lsn"`
	Initial  int    `json:"initial_percent"`
	Codec    string `json:"codec,omitempty"`
	WireSent int64  `json:"wire_bytes"`   // frames sent, headers included
	Shipped  int64  `json:"record_bytes"` // record payload bytes acknowledged
	// Coalesced counts records not shipped because a later record of the
	// same interval overwrote them entirely.
	Coalesced int64 `json:"coalesced_records"`
	// Lag: records and bytes of log the replica has not acknowledged, and
	// for how long it has been behind.
	LagRecords uint64  `json:"lag_records"`
	LagBytes   int64   `json:"lag_bytes"`
	LagSeconds float64 `json:"lag_seconds"`
}

// Shipper ships one disk's change log to the replica: the initial copy
// when the replica has none, then every durable record, continuously.
type Shipper struct {
	disk string
	vol  *tracked.Volume
	cfg  ShipperConfig

	mu       sync.Mutex
	st       ShipStatus
	caughtUp time.Time // when the replica last had all the previous ack had seen logged
	target   uint64    // the log's last LSN at the previous ack
}

// NewShipper returns a shipper for a tracked volume opened with Retain.
func NewShipper(disk string, vol *tracked.Volume, cfg ShipperConfig) *Shipper {
	if cfg.Backoff == nil {
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
	return &Shipper{disk: disk, vol: vol, cfg: cfg, st: ShipStatus{Health: Normal}}
}

// Status returns the shipper's state.
func (s *Shipper) Status() ShipStatus {
	s.mu.Lock()
	st, caughtUp := s.st, s.caughtUp
	s.mu.Unlock()
	// Lag: the log after the acknowledged LSN, and how long the replica
	// has not had everything the primary logged.
	for _, seg := range s.vol.Log().Segments() {
		switch {
		case seg.Last <= st.Acked:
		case seg.First > st.Acked:
			st.LagBytes += seg.Size
		default:
			st.LagBytes += int64(float64(seg.Size) * float64(seg.Last-st.Acked) / float64(seg.Last-seg.First+1))
		}
	}
	if last := s.vol.Log().LastLSN(); last > st.Acked {
		st.LagRecords = last - st.Acked
		if !caughtUp.IsZero() {
			st.LagSeconds = time.Since(caughtUp).Seconds()
		}
	}
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
	var re *RemoteError
	if errors.As(err, &re) {
		return !re.Recoverable()
	}
	var ce *tls.CertificateVerificationError
	return errors.As(err, &ce) || errors.Is(err, ErrBrokenChain) || errors.Is(err, ErrVersion)
}

// Run ships until ctx ends or a non-recoverable error puts the disk in
// Critical.
func (s *Shipper) Run(ctx context.Context) {
	attempt := 0
	for ctx.Err() == nil {
		progressed, err := s.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if fatal(err) {
			s.set(func(st *ShipStatus) { st.Health, st.Reason = Critical, err.Error() })
			s.cfg.Log.Error("replication stopped: the operator must act", "disk", s.disk, "err", err)
			return
		}
		if progressed {
			attempt = 0
		}
		wait := s.cfg.Backoff[min(attempt, len(s.cfg.Backoff)-1)]
		attempt++
		s.set(func(st *ShipStatus) { st.Health, st.Reason = Warning, fmt.Sprintf("%v; retrying in %v", err, wait) })
		s.cfg.Log.Warn("replication interrupted", "disk", s.disk, "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// session runs one connection; progressed says whether anything was
// acknowledged (a fresh start of the backoff schedule).
func (s *Shipper) session(ctx context.Context) (progressed bool, err error) {
	raw, err := (&net.Dialer{Timeout: 30 * time.Second}).DialContext(ctx, "tcp", s.cfg.Addr)
	if err != nil {
		return false, err
	}
	pc := newProgressConn(raw, s.cfg.Timeout)
	nc := tls.Client(pc, s.cfg.TLS)
	defer nc.Close()
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	if err := nc.HandshakeContext(ctx); err != nil {
		return false, err
	}
	// arm scales the progress timeout: 10 for the ack of a whole initial
	// copy (the replica makes the image durable), else 1.
	arm := func(n int) { pc.scale.Store(int64(n)) }
	c := NewConn(nc)
	defer c.Close()
	c.WriteFrame(MsgHello, Hello{Version: Version, Codecs: AllCodecs, Prefer: s.cfg.Codec}.Encode())
	if err := c.Flush(); err != nil {
		return false, err
	}
	body, err := expect(c, MsgWelcome)
	if err != nil {
		return false, err
	}
	w, err := DecodeWelcome(body)
	if err != nil {
		return false, err
	}
	c.SetCodec(w.Codec)
	s.set(func(st *ShipStatus) { st.Codec = w.Codec.String() })
	c.WriteFrame(MsgOpenDisk, encodeOpenDisk(s.disk, s.vol.Size()))
	if err := c.Flush(); err != nil {
		return false, err
	}
	if body, err = expect(c, MsgDiskState); err != nil {
		return false, err
	}
	applied, seeded, err := decodeDiskState(body)
	if err != nil {
		return false, err
	}
	if !seeded {
		if applied, err = s.initialCopy(c, arm); err != nil {
			return false, err
		}
		progressed = true
		s.set(func(st *ShipStatus) { st.Initial = 100 })
	} else if first := s.vol.Log().Segments()[0].First; first > applied+1 {
		return false, fmt.Errorf("%w: the replica has LSN %d, the primary's log starts at %d", ErrBrokenChain, applied, first)
	} else {
		s.set(func(st *ShipStatus) { st.Initial = 100 })
	}
	s.acked(applied)
	sentBefore := c.Sent()
	log := s.vol.Log()
	limit := minBatch
	lastSent := time.Now()
	for {
		if ctx.Err() != nil {
			return progressed, ctx.Err()
		}
		// Ship only durable records: a power cut can tear and reuse LSNs
		// that were never synced, which the replica would then skip.
		if log.LastLSN() > log.SyncedLSN() {
			if err := log.Sync(); err != nil {
				return progressed, err
			}
		}
		durable := log.SyncedLSN()
		if s.cfg.Through != nil {
			durable = min(durable, s.cfg.Through())
		}
		if durable <= applied {
			if log.LastLSN() <= applied {
				s.mu.Lock()
				s.caughtUp = time.Now()
				s.mu.Unlock()
			}
			if time.Since(lastSent) >= s.cfg.Keepalive {
				arm(1)
				c.WriteFrame(MsgKeepalive, nil)
				if err := c.Flush(); err != nil {
					return progressed, err
				}
				lastSent = time.Now()
			}
			select {
			case <-ctx.Done():
				return progressed, ctx.Err()
			case <-time.After(s.cfg.Poll):
			}
			continue
		}
		typ, build := MsgRecords, s.batch
		if s.cfg.Coalesce {
			typ, build = MsgRecordsRange, s.coalescedBatch
		}
		body, last, payload, err := build(applied, durable, limit)
		if err != nil {
			return progressed, err
		}
		faultpoint.Hit(faultpoint.ShipBeforeSend)
		arm(1)
		lastSent = time.Now()
		c.WriteFrame(typ, body)
		if err := c.Flush(); err != nil {
			return progressed, err
		}
		ab, err := expect(c, MsgAck)
		if err != nil {
			return progressed, err
		}
		ack, err := decodeU64(ab)
		if err != nil {
			return progressed, err
		}
		if ack != last {
			return progressed, fmt.Errorf("%w: sent through %d, acknowledged %d", ErrBrokenChain, last, ack)
		}
		faultpoint.Hit(faultpoint.ShipAfterAck)
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
	s.mu.Lock()
	s.st.Acked, s.st.Health, s.st.Reason = lsn, Normal, ""
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
	body := AppendRecords(nil, s.disk, nil)
	countAt := len(body) - 4
	var count uint32
	var payload int64
	last := applied
	err := s.vol.Log().Scan(applied+1, func(r hrl.Record) error {
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
	err := s.vol.Log().Scan(applied+1, func(r hrl.Record) error {
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
	return AppendRecordsRange(nil, applied+1, last, s.disk, kept), last, payload, nil
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
func (s *Shipper) initialCopy(c *Conn, arm func(int)) (uint64, error) {
	ckpt := s.vol.PauseMerge()
	defer s.vol.ResumeMerge()
	base := s.vol.Base()
	size := base.Size()
	const chunk = 1 << 20
	buf := make([]byte, 8+chunk)
	s.cfg.Log.Info("initial replication started", "disk", s.disk, "size", size, "checkpoint", ckpt)
	for off := int64(0); off < size; off += chunk {
		n := min(chunk, size-off)
		data := buf[8 : 8+n]
		if _, err := base.ReadAt(data, off); err != nil {
			return 0, err
		}
		pct := int(99 * (off + n) / size) // 100 once the replica has made it durable
		s.set(func(st *ShipStatus) { st.Initial = pct })
		if allZero(data) {
			continue
		}
		binary.LittleEndian.PutUint64(buf, uint64(off))
		arm(1)
		if err := c.WriteFrame(MsgBaseChunk, buf[:8+n]); err != nil {
			return 0, err
		}
	}
	arm(10) // the replica makes the whole image durable
	c.WriteFrame(MsgBaseDone, encodeU64(ckpt))
	if err := c.Flush(); err != nil {
		return 0, err
	}
	ab, err := expect(c, MsgAck)
	if err != nil {
		return 0, err
	}
	ack, err := decodeU64(ab)
	if err != nil {
		return 0, fmt.Errorf("%w: the acknowledgement of the initial copy at %d does not decode: %v", ErrFrame, ckpt, err)
	}
	if ack != ckpt {
		return 0, fmt.Errorf("%w: initial copy at %d acknowledged as %d", ErrFrame, ckpt, ack)
	}
	s.cfg.Log.Info("initial replication complete", "disk", s.disk, "lsn", ckpt)
	return ckpt, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
