package receive

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"

	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/replica/store"
	"github.com/vrep-io/vrep/replica/wire"
)

// reverseData takes a disk's diverged ranges from the new primary of a
// VM this host ran (wire.MsgReverseData): only into a disk adopted for
// reverse replication (a resync to LSN 0 begun, nothing applied), each
// chunk's old content kept as history. The VM's fence (its other streams
// wait meanwhile) does not apply: this is the stream it waits for.
func (s *Server) reverseData(nc net.Conn, c *wire.Conn, root string, body []byte, log *slog.Logger, fail func(uint16, error)) {
	req, err := wire.DecodeReverseData(body)
	if err != nil {
		fail(wire.CodeBadRequest, err)
		return
	}
	vm, dname, _ := names.Disk(req.Disk)
	dir := filepath.Join(s.cfg.Data, root, vm, dname)
	key := root + "/" + vm + "/" + dname
	me := &diskStream{conn: nc, done: make(chan struct{})}
	defer close(me.done)
	s.mu.Lock()
	if s.busy[dir] != nil {
		s.mu.Unlock()
		fail(wire.CodeRetry, fmt.Errorf("disk %s has a stream open", req.Disk))
		return
	}
	s.busy[dir] = me
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.busy, dir)
		s.mu.Unlock()
	}()
	d, err := store.OpenDiskExisting(s.fs, dir, req.Size)
	if err != nil {
		fail(wire.CodeBadRequest, err)
		return
	}
	defer d.Close()
	if s.cfg.Catalog != nil {
		if err := d.WithHistory(s.cfg.Catalog, key); err != nil {
			fail(wire.CodeRetry, err)
			return
		}
	}
	if applied, _ := d.Applied(); applied != 0 || !d.Resyncing() {
		fail(wire.CodeBadRequest, fmt.Errorf("disk %s is not waiting for reverse replication (applied LSN %d)", req.Disk, applied))
		return
	}
	chunks := wire.Chunks(req.Size, req.ChunkSize)
	if _, _, err := d.ResyncBegin(0, uint32(req.ChunkSize), chunks); err != nil {
		fail(wire.CodeBadRequest, err)
		return
	}
	// From chunk 0, whatever an earlier session left: the chunks sent
	// are the diverged ones, and a chunk written twice keeps its first
	// history.
	if err := d.ResyncResume(0, uint32(req.ChunkSize), 0); err != nil {
		fail(wire.CodeBadRequest, err)
		return
	}
	c.WriteFrame(wire.MsgAck, wire.EncodeU64(0))
	if err := c.Flush(); err != nil {
		return
	}
	var n uint64
	for {
		t, body, err := c.ReadFrame()
		if err != nil {
			log.Info("replica: reverse data ended", "disk", req.Disk, "err", err)
			return
		}
		switch t {
		case wire.MsgResyncChunk:
			i, data, err := wire.DecodeChunk(body)
			if err == nil {
				err = d.ResyncChunk(i, data)
			}
			if err != nil {
				fail(wire.CodeBadRequest, err)
				return
			}
			n++
		case wire.MsgResyncMark:
			next, err := wire.DecodeU64(body)
			if err == nil {
				_, err = d.ResyncMark(next)
			}
			if err != nil {
				fail(wire.CodeBadRequest, err)
				return
			}
		case wire.MsgResyncDone:
			target, _, err := wire.DecodeResyncDone(body)
			if err == nil {
				err = d.ResyncFinish(target)
			}
			if err != nil {
				fail(wire.CodeBadRequest, err)
				return
			}
			log.Info("replica: reverse data applied: the image is the new primary's disk", "disk", req.Disk, "chunks", n)
			c.WriteFrame(wire.MsgAck, wire.EncodeU64(0))
			c.Flush()
			return
		default:
			fail(wire.CodeBadRequest, errors.New("unexpected message in reverse data"))
			return
		}
	}
}
