package seed

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/reedsolomon"
	"github.com/zeebo/xxh3"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/internal/procs"
	"github.com/vrep-io/vrep/internal/vfs"
)

// DefaultChunk is the default chunk size: the initial copy's chunk, so a
// seed stores the same chunks the network copy would send.
const DefaultChunk = 1 << 20

// Source is one disk to export: Dev must read as the disk at LSN for the
// whole export (a tracked volume's base while merging is paused).
type Source struct {
	Name    string // the DISK of VM/DISK
	Dev     io.ReaderAt
	Size    int64
	LSN     uint64
	PointID uint64
	Marker  []byte
}

// Options configure an export.
type Options struct {
	VM, Primary string
	ChunkSize   int64 // default DefaultChunk
	Parity      int   // parity shards; the rest of the directories hold data
	Workers     int   // coding goroutines (default: one per CPU)
	// Progress, if set, is called with the bytes read so far and the
	// bytes of every disk together.
	Progress func(done, total int64)
}

// Export writes the disks as a seed over dirs (one shard per directory)
// and returns its manifest. The manifest goes into each directory last,
// once every shard file is durable: until then the directories hold no
// seed. On error the shard files written are removed.
func Export(ctx context.Context, dirs []string, srcs []Source, opts Options) (_ *Manifest, err error) {
	if opts.ChunkSize == 0 {
		opts.ChunkSize = DefaultChunk
	}
	if opts.Workers <= 0 {
		opts.Workers = procs.CPUs()
	}
	n := len(dirs)
	switch {
	case n == 0:
		return nil, fmt.Errorf("%w: give at least one directory", ErrBadArgs)
	case opts.Parity < 0 || opts.Parity >= n:
		return nil, fmt.Errorf("%w: --parity %d needs at least %d directories (one more than the parity), and %d were given", ErrBadArgs, opts.Parity, opts.Parity+1, n)
	case n > MaxShards:
		return nil, fmt.Errorf("%w: at most %d directories", ErrBadArgs, MaxShards)
	case len(srcs) == 0 || len(srcs) > MaxDisks:
		return nil, fmt.Errorf("%w: %d disks", ErrBadArgs, len(srcs))
	}
	if err := checkDirs(dirs); err != nil {
		return nil, err
	}
	var id [16]byte
	rand.Read(id[:])
	m := &Manifest{SeedID: hex.EncodeToString(id[:]), Created: time.Now().UTC().Truncate(time.Second), VM: opts.VM, Primary: opts.Primary,
		ChunkSize: opts.ChunkSize, DataShards: n - opts.Parity, ParityShards: opts.Parity}
	var total int64
	for _, s := range srcs {
		if err := names.Part(s.Name); err != nil {
			return nil, err
		}
		total += s.Size
	}
	var created []string
	defer func() {
		if err != nil {
			for _, p := range created {
				os.Remove(p)
			}
		}
	}()
	var done int64
	for _, s := range srcs {
		d := Disk{Name: s.Name, Size: s.Size, LSN: s.LSN, PointID: s.PointID, Marker: s.Marker}
		prog := func(n int64) {
			if opts.Progress != nil {
				opts.Progress(done+n, total)
			}
		}
		files, err := exportDisk(ctx, dirs, m, &d, s.Dev, id, opts.Workers, prog, &created)
		if err != nil {
			return nil, fmt.Errorf("seed: disk %s: %w", s.Name, err)
		}
		d.Shards = files
		m.Disks = append(m.Disks, d)
		done += s.Size
	}
	body, err := m.Encode()
	if err != nil {
		return nil, err
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("seed: the manifest written would not read back: %v", err)
	}
	for _, dir := range dirs {
		p := filepath.Join(dir, ManifestName)
		if err := vfs.WriteFileAtomic(vfs.OS{}, p, body); err != nil {
			return nil, fmt.Errorf("seed: writing the manifest: %w", err)
		}
		created = append(created, p)
	}
	return m, nil
}

// checkDirs makes the directories and refuses any that already holds a
// seed (finished or not) or is given twice.
func checkDirs(dirs []string) error {
	var infos []os.FileInfo
	for i, dir := range dirs {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("seed: %w", err)
		}
		fi, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("seed: %w", err)
		}
		for j, o := range infos {
			if os.SameFile(fi, o) {
				return fmt.Errorf("%w: %s and %s are the same directory: each directory stands for one drive", ErrBadArgs, dirs[j], dirs[i])
			}
		}
		infos = append(infos, fi)
		ents, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("seed: %w", err)
		}
		for _, e := range ents {
			if e.Name() == ManifestName || filepath.Ext(e.Name()) == ShardExt {
				return fmt.Errorf("%w: %s already holds a seed (%s): give empty directories", ErrBadArgs, dir, e.Name())
			}
		}
	}
	return nil
}

// exportJob is one stored chunk on its way through the coders.
type exportJob struct {
	j      int64    // stored index
	data   []byte   // DataShards*PieceSize bytes, the chunk zero-padded
	n      int      // the chunk's length
	pieces [][]byte // data pieces, then parity
	sums   []uint64
	hash   [16]byte
	done   chan struct{}
	buf    []byte       // data then parity, pooled
	left   atomic.Int32 // shard writers yet to write their piece
}

// exportDisk writes one disk's shard files and fills d's zero map and
// chunk hashes. A reader streams the disk, coders hash and encode in
// parallel, and one writer per shard file writes its pieces in order.
func exportDisk(ctx context.Context, dirs []string, m *Manifest, d *Disk, dev io.ReaderAt, id [16]byte,
	workers int, progress func(int64), created *[]string) ([]ShardFile, error) {
	k, ns := m.DataShards, m.Shards()
	S := int(m.PieceSize())
	var enc reedsolomon.Encoder
	if m.ParityShards > 0 {
		var err error
		// One goroutine per Encode: the coders are the parallelism.
		if enc, err = reedsolomon.New(k, m.ParityShards, reedsolomon.WithMaxGoroutines(1)); err != nil {
			return nil, err
		}
	}
	chunks := m.Chunks(d)
	d.Zero = make([]byte, (chunks+7)/8)
	// A chunk's data and parity in one buffer, recycled once every shard
	// writer has written its piece: fresh ones would cost an allocation
	// and a clearing of (k+m)/k times the image.
	// NB: a free list, not a sync.Pool, which every collection empties.
	free := make(chan []byte, 3*workers+4*ns+2)
	getBuf := func() []byte {
		select {
		case b := <-free:
			return b
		default:
			return make([]byte, ns*S)
		}
	}
	putBuf := func(b []byte) {
		select {
		case free <- b:
		default:
		}
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	fail := func(err error) { cancel(err) }

	// One writer per shard file.
	type shardOut struct {
		path string
		f    *os.File
		h    *xxh3.Hasher128
		size int64
		in   chan *exportJob
		// kicked: the bytes whose writeback was started (startWriteback)
		kicked int64
	}
	outs := make([]*shardOut, ns)
	for i := range outs {
		p := filepath.Join(dirs[i], d.Name+ShardExt)
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return nil, err
		}
		*created = append(*created, p)
		// Pieces are large: written straight, without a buffer to copy into.
		o := &shardOut{path: p, f: f, h: xxh3.New128(), in: make(chan *exportJob, 4)}
		hdr := shardHeader{index: i, count: ns, seed: id}.encode()
		if _, err := f.Write(hdr); err != nil {
			return nil, err
		}
		o.h.Write(hdr)
		o.size = HeaderSize
		outs[i] = o
	}
	defer func() {
		for _, o := range outs {
			o.f.Close()
		}
	}()
	var wwg sync.WaitGroup
	for i, o := range outs {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			var sum [8]byte
			for job := range o.in {
				if ctx.Err() != nil {
					continue // drain
				}
				binary.LittleEndian.PutUint64(sum[:], job.sums[i])
				if _, err := o.f.Write(job.pieces[i]); err != nil {
					fail(err)
					continue
				}
				if _, err := o.f.Write(sum[:]); err != nil {
					fail(err)
					continue
				}
				o.h.Write(job.pieces[i])
				o.h.Write(sum[:])
				o.size += int64(S) + pieceHashSize
				if job.left.Add(-1) == 0 {
					putBuf(job.buf)
				}
				if o.size-o.kicked >= writebackEvery {
					vfs.StartWriteback(o.f, o.kicked, o.size-o.kicked)
					o.kicked = o.size
				}
			}
			if ctx.Err() != nil {
				return
			}
			if err := o.f.Sync(); err != nil {
				fail(err)
			}
		}()
	}

	// Coders.
	work := make(chan *exportJob, workers)
	var cwg sync.WaitGroup
	for range workers {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			for job := range work {
				job.hash = xxh3.Hash128(job.data[:job.n]).Bytes()
				job.pieces = make([][]byte, ns)
				for i := range k {
					job.pieces[i] = job.data[i*S : (i+1)*S]
				}
				if enc != nil {
					par := job.buf[k*S:]
					for i := range m.ParityShards {
						job.pieces[k+i] = par[i*S : (i+1)*S]
					}
					if err := enc.Encode(job.pieces); err != nil {
						fail(err)
					}
				}
				job.sums = make([]uint64, ns)
				for i, p := range job.pieces {
					job.sums[i] = xxh3.HashSeed(p, pieceSeed(job.j, i))
				}
				close(job.done)
			}
		}()
	}

	// The reader, in chunk order; the ordered queue keeps the writers in
	// stored-chunk order whatever order the coders finish in.
	queue := make(chan *exportJob, 2*workers)
	go func() {
		defer close(queue)
		defer close(work)
		var j int64
		for c := range chunks {
			if ctx.Err() != nil {
				return
			}
			off := c * m.ChunkSize
			n := int(min(m.ChunkSize, d.Size-off))
			buf := getBuf()
			if _, err := dev.ReadAt(buf[:n], off); err != nil && !(errors.Is(err, io.EOF)) {
				fail(fmt.Errorf("reading the disk at %d: %w", off, err))
				return
			}
			clear(buf[n : k*S]) // the last chunk is padded with zeros
			progress(off + int64(n))
			if blockdev.AllZero(buf[:n]) {
				d.Zero[c/8] |= 1 << (c % 8)
				putBuf(buf)
				continue
			}
			job := &exportJob{j: j, data: buf[:k*S], n: n, done: make(chan struct{}), buf: buf}
			job.left.Store(int32(ns))
			j++
			select {
			case work <- job:
			case <-ctx.Done():
				return
			}
			select {
			case queue <- job:
			case <-ctx.Done():
				return
			}
		}
	}()
	var hashes []byte
	for job := range queue {
		select {
		case <-job.done:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		hashes = append(hashes, job.hash[:]...)
		for _, o := range outs {
			select {
			case o.in <- job:
			case <-ctx.Done():
			}
		}
	}
	for range queue { // let the reader end
	}
	cwg.Wait()
	for _, o := range outs {
		close(o.in)
	}
	wwg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	d.Hashes = hashes
	files := make([]ShardFile, ns)
	for i, o := range outs {
		if err := o.f.Close(); err != nil && !errors.Is(err, fs.ErrClosed) {
			return nil, fmt.Errorf("writing %s: %w", o.path, err)
		}
		h := o.h.Sum128().Bytes()
		files[i] = ShardFile{Size: o.size, Hash: hex.EncodeToString(h[:])}
	}
	for _, dir := range dirs {
		if err := (vfs.OS{}).SyncDir(dir); err != nil {
			return nil, fmt.Errorf("seed: %w", err)
		}
	}
	return files, nil
}

// writebackEvery is how many bytes a shard writer (or a restore) leaves
// dirty before it starts their writeback (vfs.StartWriteback): the drive
// then writes while the work goes on, and the fsync at the end finds
// little left to do, instead of the whole file.
const writebackEvery = 8 << 20
