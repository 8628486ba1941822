package seed

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/klauspost/reedsolomon"
	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/internal/procs"
)

// Seed is a seed found in directories, ready to restore.
type Seed struct {
	M    *Manifest
	dirs []string
	// paths[disk][i] is the shard file of index i for disk; "" when no
	// directory holds it (lost, or its header is damaged).
	paths map[string][]string
	// Notes says what was found wrong while opening: manifests that do
	// not read, shard files missing or with a damaged header.
	Notes []string
	// bufs recycles the pieces a restore reads: a piece and its hash.
	bufs pieceBufs
}

// pieceBufs is a free list of piece buffers of one size (a piece and
// its hash): a restore reads twice the image or more through them, and
// fresh buffers cost an allocation and a clearing each. NB: not a
// sync.Pool, which every garbage collection empties: a short-lived
// process (vrep seed import) would allocate nearly every piece anew.
type pieceBufs struct {
	size int
	free chan []byte
}

func (b *pieceBufs) get() []byte {
	select {
	case p := <-b.free:
		return p[:b.size]
	default:
		return make([]byte, b.size)
	}
}

// put returns p, if it came from get (its capacity says so).
func (b *pieceBufs) put(p []byte) {
	if cap(p) != b.size {
		return
	}
	select {
	case b.free <- p[:b.size]:
	default:
	}
}

func (b *pieceBufs) putAll(ps [][]byte) {
	for i, p := range ps {
		b.put(p)
		ps[i] = nil
	}
}

// Open finds the seed in dirs, which may be given in any order and may
// lack up to ParityShards of its drives. Directories that hold different
// seeds, or the same shard twice, are refused.
func Open(dirs []string) (*Seed, error) {
	s := &Seed{dirs: dirs, paths: map[string][]string{}}
	var firstDir string
	for _, dir := range dirs {
		if _, err := os.Stat(dir); err != nil {
			s.Notes = append(s.Notes, fmt.Sprintf("%s: %v", dir, unwrapPath(err)))
			continue
		}
		b, err := readLimited(filepath.Join(dir, ManifestName), 20+MaxManifest)
		if err != nil {
			s.Notes = append(s.Notes, fmt.Sprintf("%s: no manifest (%v)", dir, unwrapPath(err)))
			continue
		}
		m, err := DecodeManifest(b)
		if err != nil {
			s.Notes = append(s.Notes, fmt.Sprintf("%s: %v", dir, err))
			continue
		}
		if s.M == nil {
			s.M, firstDir = m, dir
		} else if m.SeedID != s.M.SeedID {
			return nil, fmt.Errorf("%w: %s and %s hold different seeds (%s of %s at %s, and %s of %s at %s): give the directories of one export",
				ErrBadArgs, firstDir, dir, s.M.SeedID[:8], s.M.VM, s.M.Created.Format("2006-01-02 15:04"), m.SeedID[:8], m.VM, m.Created.Format("2006-01-02 15:04"))
		}
	}
	if s.M == nil {
		return nil, fmt.Errorf("%w (%s)", ErrNoSeed, strings.Join(s.Notes, "; "))
	}
	// Enough for every piece in flight: the readers' queues, the feeder's
	// job, the workers' jobs.
	s.bufs = pieceBufs{size: int(s.M.PieceSize()) + pieceHashSize, free: make(chan []byte, s.M.Shards()*(4+2+2*procs.CPUs()))}
	id, _ := hex.DecodeString(s.M.SeedID)
	owner := map[string]string{} // "disk/index" → directory
	for _, d := range s.M.Disks {
		paths := make([]string, s.M.Shards())
		for _, dir := range dirs {
			p := filepath.Join(dir, d.Name+ShardExt)
			hdr, err := readHeader(p)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				s.Notes = append(s.Notes, fmt.Sprintf("%s: %v", p, err))
				continue
			}
			if !bytes.Equal(hdr.seed[:], id) || hdr.count != s.M.Shards() {
				s.Notes = append(s.Notes, fmt.Sprintf("%s: a shard of another seed", p))
				continue
			}
			key := fmt.Sprintf("%s/%d", d.Name, hdr.index)
			if o, ok := owner[key]; ok {
				return nil, fmt.Errorf("%w: %s and %s hold the same shard (%d) of disk %s: is a directory given twice, or copied?", ErrBadArgs, o, dir, hdr.index, d.Name)
			}
			owner[key] = dir
			paths[hdr.index] = p
		}
		for i, p := range paths {
			if p == "" {
				s.Notes = append(s.Notes, fmt.Sprintf("disk %s: shard %d of %d is missing", d.Name, i, len(paths)))
			}
		}
		s.paths[d.Name] = paths
	}
	return s, nil
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func readLimited(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}

func readHeader(p string) (shardHeader, error) {
	f, err := os.Open(p)
	if err != nil {
		return shardHeader{}, err
	}
	defer f.Close()
	b := make([]byte, HeaderSize)
	if _, err := io.ReadFull(f, b); err != nil {
		return shardHeader{}, errors.New("truncated before the end of its header")
	}
	h, ok := decodeShardHeader(b)
	if !ok {
		return shardHeader{}, errors.New("damaged header")
	}
	return h, nil
}

// Available is how many shards of the disk were found.
func (s *Seed) Available(disk string) int {
	n := 0
	for _, p := range s.paths[disk] {
		if p != "" {
			n++
		}
	}
	return n
}

// Missing returns the indexes of the disk's shard files that no
// directory holds whole enough to read (lost, or a damaged header).
func (s *Seed) Missing(disk string) []int {
	var out []int
	for i, p := range s.paths[disk] {
		if p == "" {
			out = append(out, i)
		}
	}
	return out
}

// ShardReport is what restoring found in one shard file.
type ShardReport struct {
	Index     int    `json:"index"`
	Path      string `json:"path,omitempty"` // "" when missing
	BadPieces int64  `json:"bad_pieces"`     // pieces that failed their hash, or past a truncation
	Truncated bool   `json:"truncated"`
	HashOK    bool   `json:"hash_ok"` // the whole file matches the manifest
}

// Report is what restoring one disk found and did.
type Report struct {
	Disk    string        `json:"disk"`
	Shards  []ShardReport `json:"shards"`
	Stored  int64         `json:"stored_chunks"`
	Rebuilt int64         `json:"rebuilt_chunks"` // chunks with a data piece rebuilt from parity
	Zero    int64         `json:"zero_chunks"`
	Written int64         `json:"bytes_written"`
}

// Damaged says whether any shard file was missing or damaged.
func (r Report) Damaged() bool {
	for _, s := range r.Shards {
		if !s.HashOK {
			return true
		}
	}
	return false
}

// Writebacker is a WriterAt that can start writing what it holds dirty
// to its drive without waiting (from off, n bytes; 0: to the end):
// Restore asks it to as it goes, so the image's fsync at the end finds
// little left to write.
type Writebacker interface {
	StartWriteback(off, n int64)
}

// Restore writes disk into w (which must read as zeros where nothing is
// written: zero chunks are skipped), verifying every piece and chunk and
// rebuilding from parity what is missing or damaged. progress, if set,
// gets the disk's bytes done so far. Every shard file present is read
// whole, so the report names every damage, repaired or not.
func (s *Seed) Restore(ctx context.Context, disk string, w io.WriterAt, workers int, progress func(int64)) (Report, error) {
	m := s.M
	d := m.Disk(disk)
	if d == nil {
		return Report{}, fmt.Errorf("%w: the seed holds no disk %s", ErrBadArgs, disk)
	}
	if workers <= 0 {
		workers = procs.CPUs()
	}
	k, ns := m.DataShards, m.Shards()
	S := int(m.PieceSize())
	stored := m.Stored(d)
	rep := Report{Disk: disk, Stored: stored, Zero: m.Chunks(d) - stored, Shards: make([]ShardReport, ns)}
	paths := s.paths[disk]
	if have := s.Available(disk); have < k {
		return rep, fmt.Errorf("%w: disk %s has %d of its %d shards and needs %d: %d directories are missing or damaged and the parity covers %d",
			ErrDamaged, disk, have, ns, k, ns-have, m.ParityShards)
	}
	var enc reedsolomon.Encoder
	if m.ParityShards > 0 {
		var err error
		if enc, err = reedsolomon.New(k, m.ParityShards, reedsolomon.WithMaxGoroutines(1)); err != nil {
			return rep, err
		}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	// One reader per shard file, in piece order.
	ins := make([]chan []byte, ns)
	var rwg sync.WaitGroup
	for i := range ns {
		rep.Shards[i] = ShardReport{Index: i, Path: paths[i]}
		ins[i] = make(chan []byte, 4)
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			defer close(ins[i])
			s.readShard(ctx, d, i, paths[i], stored, S, ins[i], &rep.Shards[i])
		}()
	}

	type job struct {
		c      int64
		j      int64
		pieces [][]byte
	}
	work := make(chan job, workers)
	var rebuilt, written atomic.Int64
	wb, _ := w.(Writebacker)
	var wwg sync.WaitGroup
	for range workers {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			h := xxh3.New128()
			for jb := range work {
				if ctx.Err() != nil {
					s.bufs.putAll(jb.pieces)
					continue
				}
				good := 0
				for _, p := range jb.pieces {
					if p != nil {
						good++
					}
				}
				if good < k {
					cancel(fmt.Errorf("%w: chunk %d of disk %s has %d intact pieces of %d and needs %d: more shards are damaged than the parity (%d) covers",
						ErrDamaged, jb.c, disk, good, ns, k, m.ParityShards))
					s.bufs.putAll(jb.pieces)
					continue
				}
				missing := false
				for i, p := range jb.pieces[:k] {
					if p == nil {
						// Rebuilt into a pooled buffer (its capacity is used).
						jb.pieces[i] = s.bufs.get()[:0]
						missing = true
					}
				}
				if missing {
					if err := enc.ReconstructData(jb.pieces); err != nil {
						cancel(fmt.Errorf("%w: chunk %d of disk %s: %v", ErrDamaged, jb.c, disk, err))
						s.bufs.putAll(jb.pieces)
						continue
					}
					rebuilt.Add(1)
				}
				// The data pieces are the chunk, in order: hashed and
				// written where they stand, with no copy into one buffer.
				off := jb.c * m.ChunkSize
				n := int(min(m.ChunkSize, d.Size-off))
				h.Reset()
				for i := 0; i < k && i*S < n; i++ {
					h.Write(jb.pieces[i][:min(S, n-i*S)])
				}
				if sum := h.Sum128().Bytes(); !bytes.Equal(sum[:], d.Hashes[jb.j*chunkHashSize:(jb.j+1)*chunkHashSize]) {
					cancel(fmt.Errorf("%w: chunk %d of disk %s does not match its hash even after rebuilding", ErrDamaged, jb.c, disk))
					s.bufs.putAll(jb.pieces)
					continue
				}
				for i := 0; i < k && i*S < n; i++ {
					if _, err := w.WriteAt(jb.pieces[i][:min(S, n-i*S)], off+int64(i*S)); err != nil {
						cancel(fmt.Errorf("writing the image: %w", err))
						break
					}
				}
				s.bufs.putAll(jb.pieces)
				if done := written.Add(int64(n)); wb != nil && done/writebackEvery != (done-int64(n))/writebackEvery {
					wb.StartWriteback(0, 0)
				}
			}
		}()
	}

	var j int64
	chunks := m.Chunks(d)
feed:
	for c := range chunks {
		if progress != nil {
			progress(c * m.ChunkSize)
		}
		if d.IsZero(c) {
			continue
		}
		jb := job{c: c, j: j, pieces: make([][]byte, ns)}
		j++
		for i := range ns {
			select {
			case p := <-ins[i]:
				jb.pieces[i] = p
			case <-ctx.Done():
				break feed
			}
		}
		select {
		case work <- jb:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wwg.Wait()
	for i := range ins {
		for range ins[i] { // let the readers end
		}
	}
	rwg.Wait()
	if err := context.Cause(ctx); err != nil {
		return rep, err
	}
	if progress != nil {
		progress(d.Size)
	}
	rep.Rebuilt, rep.Written = rebuilt.Load(), written.Load()
	return rep, nil
}

// readShard streams shard file i of d, sending each piece that passes its
// hash (nil for one that does not, or past a truncation) and noting in r
// what it found. The file is whole (HashOK) when its header is exactly
// what the export wrote, every piece passes its hash and nothing follows
// the last: every byte of it is checked that way, so the whole file's
// hash in the manifest (for tools that check a shard file alone) is not
// computed again over the same bytes.
func (s *Seed) readShard(ctx context.Context, d *Disk, i int, path string, stored int64, S int, out chan<- []byte, r *ShardReport) {
	send := func(p []byte) bool {
		select {
		case out <- p:
			return true
		case <-ctx.Done():
			return false
		}
	}
	missingAll := func(from int64) {
		for j := from; j < stored; j++ {
			if !send(nil) {
				return
			}
		}
	}
	if path == "" {
		r.BadPieces = stored
		missingAll(0)
		return
	}
	f, err := os.Open(path)
	if err != nil {
		r.BadPieces = stored
		missingAll(0)
		return
	}
	defer f.Close()
	br := f // pieces are large: read straight, without a buffer to copy from
	hdr := make([]byte, HeaderSize)
	if _, err := io.ReadFull(br, hdr); err != nil {
		r.Truncated, r.BadPieces = true, stored
		missingAll(0)
		return
	}
	id, _ := hex.DecodeString(s.M.SeedID)
	want := shardHeader{index: i, count: s.M.Shards()}
	copy(want.seed[:], id)
	headerOK := bytes.Equal(hdr, want.encode())
	for j := range stored {
		p := s.bufs.get()
		_, err := io.ReadFull(br, p)
		if err != nil {
			s.bufs.put(p)
			r.Truncated = true
			r.BadPieces += stored - j
			missingAll(j)
			return
		}
		piece := p[:S]
		if xxh3.HashSeed(piece, pieceSeed(j, i)) != binary.LittleEndian.Uint64(p[S:]) {
			s.bufs.put(p)
			r.BadPieces++
			piece = nil
		}
		if !send(piece) {
			return
		}
	}
	var one [1]byte
	n, _ := br.Read(one[:])
	r.HashOK = headerOK && n == 0 && r.BadPieces == 0
}

// isHole says whether r's n bytes at off are a hole of its file (never
// written, read as zeros), by lseek(SEEK_DATA) on r's descriptor when it
// has one (SyscallConn); false when it cannot tell.
func isHole(r any, off, n int64) bool {
	sc, ok := r.(interface {
		SyscallConn() (syscall.RawConn, error)
	})
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	hole := false
	rc.Control(func(fd uintptr) {
		next, err := unix.Seek(int(fd), off, unix.SEEK_DATA)
		// ENXIO: no data from off to the end of the file.
		hole = errors.Is(err, unix.ENXIO) || err == nil && next >= off+n
	})
	return hole
}

// Verify reads a restored image back and compares every chunk with the
// manifest: stored chunks by hash, the others must be zeros. It returns
// the chunks that differ.
func (m *Manifest) Verify(ctx context.Context, disk string, r io.ReaderAt, workers int) ([]int64, error) {
	d := m.Disk(disk)
	if d == nil {
		return nil, fmt.Errorf("%w: the seed holds no disk %s", ErrBadArgs, disk)
	}
	if workers <= 0 {
		workers = procs.CPUs()
	}
	chunks := m.Chunks(d)
	// The stored index of each chunk, so workers may take any chunk.
	idx := make([]int64, chunks)
	var j int64
	for c := range chunks {
		idx[c] = -1
		if !d.IsZero(c) {
			idx[c] = j
			j++
		}
	}
	var (
		mu   sync.Mutex
		bad  []int64
		next atomic.Int64
		wg   sync.WaitGroup
		ferr atomic.Pointer[error]
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, m.ChunkSize)
			for ctx.Err() == nil && ferr.Load() == nil {
				c := next.Add(1) - 1
				if c >= chunks {
					return
				}
				off := c * m.ChunkSize
				n := int(min(m.ChunkSize, d.Size-off))
				if idx[c] < 0 && isHole(r, off, int64(n)) {
					continue // a zero chunk never written: nothing to read
				}
				if _, err := r.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
					ferr.Store(&err)
					return
				}
				ok := false
				if idx[c] < 0 {
					ok = blockdev.AllZero(buf[:n])
				} else {
					h := xxh3.Hash128(buf[:n]).Bytes()
					ok = bytes.Equal(h[:], d.Hashes[idx[c]*chunkHashSize:(idx[c]+1)*chunkHashSize])
				}
				if !ok {
					mu.Lock()
					bad = append(bad, c)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if p := ferr.Load(); p != nil {
		return nil, *p
	}
	sort.Slice(bad, func(a, b int) bool { return bad[a] < bad[b] })
	return bad, ctx.Err()
}
