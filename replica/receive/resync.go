package receive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"

	"github.com/vrep-io/vrep/replica/store"
	"github.com/vrep-io/vrep/replica/wire"
)

// hashBatch is how many chunk sums go in one ResyncHashes message: 256
// chunks (16 MiB of disk at 64 KiB) keep the primary busy while the next
// batch is hashed, and bound what the replica holds unwritten.
const hashBatch = 256

// testHookResyncMark, if set, runs after each durable resync mark, before
// the primary is told; an error ends the stream there, as a cut link
// would.
var testHookResyncMark atomic.Pointer[func(next uint64) error]

// resync runs a resync or a verify the primary opened with start (see
// replica/wire, resync.go) and returns the LSN to acknowledge. The
// replica hashes its side ahead of the primary on a goroutine that is the
// connection's only writer until the exchange ends; the caller's
// goroutine reads the chunks, marks and the end. Nothing is written to
// the image that was not checked (disk, index, order, length).
func (s *Server) resync(ctx context.Context, c *wire.Conn, d *store.Disk, key string, start []byte, log *slog.Logger) (uint64, error) {
	m, err := wire.DecodeResyncStart(start, d.Size())
	if err != nil {
		return 0, err
	}
	var dev io.ReaderAt = d
	from, held := uint64(0), uint64(0)
	switch m.Kind {
	case wire.KindVerify:
		if d.Resyncing() {
			return 0, fmt.Errorf("%w: a resync of this disk is under way; verify after it completes", store.ErrInvalid)
		}
		if m.Target != 0 {
			if s.cfg.Catalog == nil {
				return 0, fmt.Errorf("%w: this replica keeps no points", store.ErrNoPoint)
			}
			v, err := s.cfg.Catalog.OpenView(key, m.Target)
			if err != nil {
				return 0, err
			}
			defer v.Close()
			dev = v
		} else if _, seeded := d.Applied(); !seeded {
			return 0, fmt.Errorf("%w: no initial copy to verify", store.ErrInvalid)
		}
	default:
		if from, held, err = d.ResyncBegin(m.Target, m.ChunkSize, m.Chunks); err != nil {
			return 0, err
		}
	}
	c.WriteFrame(wire.MsgResyncFrom, wire.EncodeResyncFrom(from, held))
	if err := c.Flush(); err != nil {
		return 0, err
	}
	if m.Kind == wire.KindResync {
		// The primary says where the comparison starts.
		body, err := wire.Expect(c, wire.MsgResyncResume)
		if err == nil {
			from, err = wire.DecodeU64(body)
		}
		if err == nil {
			err = d.ResyncResume(m.Target, m.ChunkSize, from)
		}
		if err != nil {
			return 0, err
		}
		log.Info("replica: resync", "target_lsn", m.Target, "chunks", m.Chunks, "from_chunk", from, "held_target", held)
	}
	// The writer: hash batches, then durable marks until the exchange
	// ends. It is the connection's only writer meanwhile; the reader
	// never waits for it (it leaves the last durable mark in durable),
	// since both directions may be full at once.
	var durable atomic.Uint64
	durableSig := make(chan struct{}, 1)
	send := func(t wire.MsgType, body []byte) error {
		if err := c.WriteFrame(t, body); err != nil {
			return err
		}
		return c.Flush()
	}
	var told uint64
	tell := func() error {
		if next := durable.Load(); next > told {
			told = next
			return send(wire.MsgResyncDurable, wire.EncodeU64(next))
		}
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hashed := make(chan error, 1)
	go func() {
		hashed <- func() error {
			for first := from; first < m.Chunks; first += hashBatch {
				n := min(hashBatch, m.Chunks-first)
				sums, err := wire.HashChunks(ctx, dev, d.Size(), int(m.ChunkSize), first, n, 0)
				if err != nil {
					return err
				}
				if err := tell(); err != nil {
					return err
				}
				if err := send(wire.MsgResyncHashes, wire.EncodeHashes(first, sums)); err != nil {
					return err
				}
			}
			for {
				select {
				case <-ctx.Done():
					return nil // every batch was sent
				case <-durableSig:
					if err := tell(); err != nil {
						return err
					}
				}
			}
		}()
	}()
	// stop ends the writer and returns its error, so the caller may write.
	stop := func() error {
		cancel()
		return <-hashed
	}
	for {
		t, body, err := c.ReadFrame()
		if err != nil {
			stop()
			return 0, err
		}
		switch t {
		case wire.MsgKeepalive:
		case wire.MsgResyncChunk:
			if m.Kind != wire.KindResync {
				stop()
				return 0, fmt.Errorf("%w: a chunk during a verify", wire.ErrResync)
			}
			idx, data, err := wire.DecodeChunk(body)
			if err == nil {
				err = d.ResyncChunk(idx, data)
			}
			if err != nil {
				stop()
				return 0, err
			}
		case wire.MsgResyncMark:
			next, err := wire.DecodeU64(body)
			isDurable := false
			if err == nil && m.Kind == wire.KindResync {
				isDurable, err = d.ResyncMark(next)
			}
			if hook := testHookResyncMark.Load(); err == nil && isDurable && hook != nil {
				err = (*hook)(next)
			}
			if err == nil && isDurable {
				durable.Store(next)
				select {
				case durableSig <- struct{}{}:
				default:
				}
			}
			if err != nil {
				stop()
				return 0, err
			}
		case wire.MsgResyncDone:
			target, sent, err := wire.DecodeResyncDone(body)
			if herr := stop(); herr != nil && err == nil {
				err = herr
			}
			if err != nil {
				return 0, err
			}
			if m.Kind == wire.KindVerify {
				log.Info("replica: verify done", "point_lsn", m.Target, "differing_chunks", sent)
				return 0, nil
			}
			if target != m.Target {
				return 0, fmt.Errorf("%w: resync to LSN %d ended as LSN %d", wire.ErrResync, m.Target, target)
			}
			if err := d.ResyncFinish(target); err != nil {
				return 0, err
			}
			log.Info("replica: resync complete", "lsn", target, "chunks_this_session", sent)
			return target, nil
		case wire.MsgError:
			stop()
			return 0, wire.DecodeError(body)
		default:
			stop()
			return 0, fmt.Errorf("%w: unexpected message %d during a resync", wire.ErrFrame, t)
		}
	}
}

// resyncCode classifies a resync error for the primary.
func resyncCode(err error) uint16 {
	switch {
	case errors.Is(err, wire.ErrResync), errors.Is(err, wire.ErrFrame), errors.Is(err, store.ErrInvalid), errors.Is(err, store.ErrNoPoint):
		return wire.CodeBadRequest
	}
	return wire.CodeRetry
}
