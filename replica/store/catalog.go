// Package store is the replica's disks and their history: the apply
// engine (the image and its applied LSN, idempotent by LSN), undo
// segments that keep old content before it is overwritten, the point
// catalog indexed in badger, read-only point views, copy-on-write
// overlays and retention. The on-disk formats are specified on Disk
// (disk.go), on Catalog (this file) and in history.go.
package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/vfs"
)

// The catalog is the replica's history: the recovery points that reached
// it and, for every disk, undo entries — the old content of the blocks
// each applied record overwrote — so that any retained point can be read
// back without copying (see View).
//
// Reading block b at point P (the disk's marker at LSN p) returns the
// oldest undo entry covering b with an LSN above p, else the image: that
// entry holds b as it was before the first record after P changed it.
//
// The index is an embedded badger database under DATA/index. Keys (part
// of the format; KEY is the disk's directory under the data directory,
// "ROOT/VM/DISK", which holds no NUL byte):
//
//	"m\x00" KEY "\x00" LSN(uint64 BE)  a point: the marker payload (hrl.Marker)
//	"u\x00" KEY "\x00" LSN(uint64 BE)  the undo entry of the record at LSN
//
// One undo entry per applied record, not per block: the index grows by one
// key per record whatever its size, and a view resolves its blocks once,
// when it opens, by scanning the entries newer than its point.
//
// An undo entry's value (little-endian): kind uint8 (1: in an undo
// segment, 2: inline), 3 zero bytes, length uint32, disk offset uint64,
// CRC32C of the old bytes uint32, then for kind 1 the segment's first LSN
// uint64 and the byte offset of the old bytes in it uint64, for kind 2
// the old bytes. The offset and length are the record's range widened to
// whole 4 KiB blocks (clipped to the disk's end).
//
// Undo segments are files DISK/undo/FIRSTLSN.undo (16 hex digits) holding
// entries: a 32-byte header — magic "VUND", CRC32C of the bytes, LSN
// uint64, disk offset uint64, length uint32, CRC32C of the header's first
// 28 bytes — then the old bytes. The index is the authority; a segment
// tail the index does not point at (a crash before the index committed)
// is ignored.
//
// Crash safety: the undo entries of a batch are durable (segment fsynced,
// index committed) before any of the batch's records touches the image,
// and an entry that exists is never captured again, so a replay after a
// crash cannot record already-overwritten bytes as history.
type Catalog struct {
	cfg CatalogConfig
	fs  vfs.FS
	db  *badger.DB

	mu    sync.Mutex
	disks map[string]*shared
	// pruneMu orders pruning with opening views: a view never opens on a
	// point pruning is about to drop.
	pruneMu sync.Mutex
	held    map[string]int // disks retention leaves alone (Hold); under pruneMu
}

// UndoBlock is the unit undo entries are widened to.
const UndoBlock = 4096

// Retention is how long a disk's points are kept.
type Retention struct {
	// Window keeps points newer than this. The newest point is always
	// kept (Window 0: "latest point only", with just the history that
	// point needs).
	Window time.Duration
	// KeepApp keeps this many newest app-consistent points even when
	// older than the window, as Hyper-V keeps its VSS points by count.
	KeepApp int
}

// CatalogConfig configures a catalog.
type CatalogConfig struct {
	// Data is the replica's data directory: disks under it, the index in
	// Data/index unless Index says otherwise.
	Data  string
	Index string
	// FS holds the disks (default the OS; tests cut its power).
	FS vfs.FS
	// Retention is the default policy; Overrides holds policies by "VM"
	// or "VM/DISK" (a disk's own entry wins over its VM's).
	Retention Retention
	Overrides map[string]Retention
	// Inline keeps undo bytes in badger values instead of undo segments
	// (measured for the choice; segments are the default).
	Inline bool
	Log    *slog.Logger
	// Now is the clock retention is judged by (tests set it).
	Now func() time.Time
}

// shared is the state a disk's apply stream and its open views share.
type shared struct {
	mu      sync.RWMutex // held for writing while a batch changes the image
	views   map[*View]struct{}
	pins    map[uint64]int // point LSN → test failovers holding it
	maxUndo uint64         // the newest LSN with an undo entry (0: unknown or none)
}

// OpenCatalog opens (creating) the catalog of the replica data directory.
func OpenCatalog(cfg CatalogConfig) (*Catalog, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.FS == nil {
		cfg.FS = vfs.OS{}
	}
	if cfg.Index == "" {
		cfg.Index = filepath.Join(cfg.Data, "index")
	}
	opts := badger.DefaultOptions(cfg.Index).
		WithSyncWrites(true).
		WithLogger(nil).
		WithValueThreshold(1 << 10).
		WithNumVersionsToKeep(1).
		WithMemTableSize(16 << 20).
		WithValueLogFileSize(256 << 20).
		WithBlockCacheSize(16 << 20)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("replica: opening the point index: %w", err)
	}
	return &Catalog{cfg: cfg, fs: cfg.FS, db: db, disks: map[string]*shared{}}, nil
}

// Close closes the index.
func (c *Catalog) Close() error { return c.db.Close() }

func (c *Catalog) shared(key string) *shared {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.disks[key]
	if s == nil {
		s = &shared{views: map[*View]struct{}{}, pins: map[uint64]int{}}
		c.disks[key] = s
	}
	return s
}

func indexKey(kind byte, disk string, lsn uint64) []byte {
	k := make([]byte, 0, 3+len(disk)+8)
	k = append(k, kind, 0)
	k = append(k, disk...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, lsn)
}

func indexPrefix(kind byte, disk string) []byte {
	return append(append([]byte{kind, 0}, disk...), 0)
}

// undoRef locates one undo entry.
type undoRef struct {
	lsn    uint64
	off    int64 // disk offset
	length int64
	crc    uint32
	seg    uint64 // segment first LSN (kind 1)
	segOff int64  // offset of the bytes in the segment
	inline []byte // kind 2
}

const undoRefSize = 36

func (r *undoRef) encode() []byte {
	b := make([]byte, 20, undoRefSize+len(r.inline))
	b[0] = 1
	if r.inline != nil {
		b[0] = 2
	}
	binary.LittleEndian.PutUint32(b[4:], uint32(r.length))
	binary.LittleEndian.PutUint64(b[8:], uint64(r.off))
	binary.LittleEndian.PutUint32(b[16:], r.crc)
	if r.inline != nil {
		return append(b, r.inline...)
	}
	b = binary.LittleEndian.AppendUint64(b, r.seg)
	return binary.LittleEndian.AppendUint64(b, uint64(r.segOff))
}

func decodeUndoRef(lsn uint64, v []byte) (*undoRef, error) {
	if len(v) < 20 || v[1]|v[2]|v[3] != 0 {
		return nil, errors.New("replica: malformed undo entry in the index")
	}
	r := &undoRef{lsn: lsn, length: int64(binary.LittleEndian.Uint32(v[4:])),
		off: int64(binary.LittleEndian.Uint64(v[8:])), crc: binary.LittleEndian.Uint32(v[16:])}
	switch v[0] {
	case 1:
		if len(v) != undoRefSize {
			return nil, errors.New("replica: malformed undo entry in the index")
		}
		r.seg = binary.LittleEndian.Uint64(v[20:])
		r.segOff = int64(binary.LittleEndian.Uint64(v[28:]))
	case 2:
		if int64(len(v)-20) != r.length {
			return nil, errors.New("replica: malformed inline undo entry in the index")
		}
		r.inline = v[20:]
	default:
		return nil, fmt.Errorf("replica: unknown undo entry kind %d", v[0])
	}
	if r.off < 0 || r.length <= 0 || r.segOff < 0 {
		return nil, errors.New("replica: undo entry out of range")
	}
	return r, nil
}

// PointInfo is one point of one disk.
type PointInfo struct {
	hrl.Marker
	LSN uint64
}

// diskPoints returns the points of disk in LSN order, at most through
// applied (markers of a batch are indexed before the batch is durable).
func (c *Catalog) diskPoints(disk string, applied uint64) ([]PointInfo, error) {
	var out []PointInfo
	pre := indexPrefix('m', disk)
	err := c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: pre, PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			lsn := binary.BigEndian.Uint64(k[len(k)-8:])
			if lsn > applied {
				break
			}
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			m, err := hrl.DecodeMarker(v)
			if err != nil {
				return fmt.Errorf("replica: point index of %s: %w", disk, err)
			}
			out = append(out, PointInfo{Marker: m, LSN: lsn})
		}
		return nil
	})
	return out, err
}

// undoSizes returns the LSN and length of every undo entry of disk.
func (c *Catalog) undoSizes(disk string) (lsns []uint64, sizes []int64, err error) {
	pre := indexPrefix('u', disk)
	err = c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: pre, PrefetchValues: false})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			lsns = append(lsns, binary.BigEndian.Uint64(k[len(k)-8:]))
			var n int64
			if err := it.Item().Value(func(v []byte) error {
				if len(v) < 8 {
					return errors.New("replica: short undo entry in the index")
				}
				n = int64(binary.LittleEndian.Uint32(v[4:]))
				return nil
			}); err != nil {
				return err
			}
			sizes = append(sizes, n)
		}
		return nil
	})
	return lsns, sizes, err
}

// keys returns up to max index keys of kind for disk.
func (c *Catalog) keys(kind byte, disk string, max int) ([][]byte, error) {
	var out [][]byte
	err := c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: indexPrefix(kind, disk)})
		defer it.Close()
		for it.Rewind(); it.Valid() && len(out) < max; it.Next() {
			out = append(out, it.Item().KeyCopy(nil))
		}
		return nil
	})
	return out, err
}

// undoAfter returns the undo entries of disk with an LSN above lsn, in
// LSN order.
func (c *Catalog) undoAfter(disk string, lsn uint64) ([]*undoRef, error) {
	var out []*undoRef
	pre := indexPrefix('u', disk)
	err := c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: pre, PrefetchValues: true, PrefetchSize: 256})
		defer it.Close()
		for it.Seek(indexKey('u', disk, lsn+1)); it.Valid(); it.Next() {
			k := it.Item().Key()
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			r, err := decodeUndoRef(binary.BigEndian.Uint64(k[len(k)-8:]), v)
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// The history a resync saved (resync.go) counts as well.
	rs, err := c.resyncAfter(disk, lsn)
	return mergeHistory(out, rs), err
}

// lastUndo returns the newest LSN with an undo entry for disk (0: none).
func (c *Catalog) lastUndo(disk string) (uint64, error) {
	var lsn uint64
	pre := indexPrefix('u', disk)
	err := c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: pre, Reverse: true})
		defer it.Close()
		it.Seek(append(slices.Clone(pre), 0xff))
		if it.Valid() {
			k := it.Item().Key()
			lsn = binary.BigEndian.Uint64(k[len(k)-8:])
		}
		return nil
	})
	return lsn, err
}

// existingUndo returns the undo entries already indexed for the given
// LSNs (a batch replayed after a crash).
func (c *Catalog) existingUndo(disk string, lsns []uint64) (map[uint64]*undoRef, error) {
	return c.lookupUndo(lsns, func(lsn uint64) ([]byte, uint64) { return indexKey('u', disk, lsn), lsn })
}

// lookupUndo reads the undo entries indexed under the keys of ids (an id
// without one is left out); at gives an id's key and the LSN its entry
// is decoded with.
func (c *Catalog) lookupUndo(ids []uint64, at func(id uint64) (key []byte, lsn uint64)) (map[uint64]*undoRef, error) {
	out := map[uint64]*undoRef{}
	err := c.db.View(func(txn *badger.Txn) error {
		for _, id := range ids {
			key, lsn := at(id)
			it, err := txn.Get(key)
			if errors.Is(err, badger.ErrKeyNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			v, err := it.ValueCopy(nil)
			if err != nil {
				return err
			}
			r, err := decodeUndoRef(lsn, v)
			if err != nil {
				return err
			}
			out[id] = r
		}
		return nil
	})
	return out, err
}

// readUndo reads n bytes of an undo entry's old content from at.
func (c *Catalog) readUndo(disk string, r *undoRef, p []byte, at int64, segs *segFiles) error {
	if r.inline != nil {
		copy(p, r.inline[at:])
		return nil
	}
	f, err := segs.get(r.seg)
	if err != nil {
		return err
	}
	n, err := f.ReadAt(p, r.segOff+at)
	if n == len(p) {
		return nil
	}
	return fmt.Errorf("replica: reading undo segment %016x of %s: %w", r.seg, disk, err)
}

// segFiles is a set of open undo segments of one disk, for reading.
type segFiles struct {
	fs    vfs.FS
	dir   string
	mu    sync.Mutex
	files map[uint64]vfs.File
}

func segName(dir string, first uint64) string {
	return filepath.Join(dir, fmt.Sprintf("%016x.undo", first))
}

func (s *segFiles) get(first uint64) (vfs.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.files[first]; f != nil {
		return f, nil
	}
	f, err := s.fs.Open(segName(s.dir, first))
	if err != nil {
		return nil, fmt.Errorf("replica: undo segment: %w", err)
	}
	if s.files == nil {
		s.files = map[uint64]vfs.File{}
	}
	s.files[first] = f
	return f, nil
}

func (s *segFiles) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.files {
		f.Close()
	}
	s.files = nil
}

// policy returns the retention of disk "ROOT/VM/DISK".
func (c *Catalog) policy(disk string) Retention {
	parts := strings.Split(disk, "/")
	if len(parts) == 3 {
		if r, ok := c.cfg.Overrides[parts[1]+"/"+parts[2]]; ok {
			return r
		}
		if r, ok := c.cfg.Overrides[parts[1]]; ok {
			return r
		}
	}
	return c.cfg.Retention
}

// keep returns the points of a disk that retention keeps, and the oldest
// kept point's LSN (the history before it can go).
func (c *Catalog) keep(disk string, pts []PointInfo) (kept []PointInfo, oldest uint64) {
	if len(pts) == 0 {
		return nil, 0
	}
	pol := c.policy(disk)
	cut := c.cfg.Now().Add(-pol.Window).UnixNano()
	s := c.shared(disk)
	s.mu.RLock()
	pinned := maps.Clone(s.pins) // counts; an unpinned point is deleted
	s.mu.RUnlock()
	apps := 0
	for i := len(pts) - 1; i >= 0; i-- {
		p := pts[i]
		k := i == len(pts)-1 || p.Time >= cut || pinned[p.LSN] > 0 || strings.HasPrefix(p.Group, SplitBrainGroup)
		if p.Kind == hrl.KindApp {
			apps++
			k = k || apps <= pol.KeepApp
		}
		if k {
			kept = append(kept, p)
		}
	}
	slices.Reverse(kept)
	return kept, kept[0].LSN
}

// Prune applies retention to every disk: points outside the window go,
// then the undo entries no kept point needs, then undo segments nothing
// points into; badger's value log is garbage-collected. A crash at any
// step leaves a consistent index: points go before the history they
// need, and segment files after the entries pointing into them.
func (c *Catalog) Prune() error {
	disks, err := c.indexDisks()
	if err != nil {
		return err
	}
	for _, disk := range disks {
		if err := c.pruneDisk(disk); err != nil {
			return err
		}
	}
	for c.db.RunValueLogGC(0.5) == nil {
	}
	return nil
}

func (c *Catalog) pruneDisk(disk string) error {
	c.pruneMu.Lock()
	defer c.pruneMu.Unlock()
	if c.held[disk] > 0 {
		return nil
	}
	st, err := c.state(disk)
	if err != nil {
		return err
	}
	applied := st.applied
	pts, err := c.diskPoints(disk, applied)
	if err != nil {
		return err
	}
	kept, oldest := c.keep(disk, pts)
	if len(kept) == 0 {
		// No point yet: no history is needed before the first one.
		oldest = applied
	}
	keptSet := map[uint64]bool{}
	for _, p := range kept {
		keptSet[p.LSN] = true
	}
	wb := c.db.NewWriteBatch()
	dropped := 0
	for _, p := range pts {
		if !keptSet[p.LSN] {
			if err := wb.Delete(indexKey('m', disk, p.LSN)); err != nil {
				wb.Cancel()
				return err
			}
			dropped++
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("replica: pruning points of %s: %w", disk, err)
	}
	if dropped > 0 {
		faultpoint.Hit(faultpoint.PruneBetweenDelete)
	}
	lsns, _, err := c.undoSizes(disk)
	if err != nil {
		return err
	}
	wb = c.db.NewWriteBatch()
	undone := 0
	for _, lsn := range lsns {
		if lsn > oldest {
			break
		}
		if err := wb.Delete(indexKey('u', disk, lsn)); err != nil {
			wb.Cancel()
			return err
		}
		undone++
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("replica: pruning history of %s: %w", disk, err)
	}
	rsUndone, err := c.pruneResync(disk, oldest)
	if err != nil {
		return err
	}
	undone += rsUndone
	// Segments: one covers its first LSN up to the next one's; the newest
	// may still be written to and stays.
	dir := filepath.Join(c.dir(disk), "undo")
	segs, err := listSegments(c.fs, dir)
	if err != nil {
		return err
	}
	removed := 0
	for i := 0; i+1 < len(segs); i++ {
		if segs[i+1]-1 <= oldest {
			if err := c.fs.Remove(segName(dir, segs[i])); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("replica: %w", err)
			}
			removed++
		}
	}
	if removed > 0 {
		if err := c.fs.SyncDir(dir); err != nil {
			return fmt.Errorf("replica: %w", err)
		}
	}
	if dropped+undone+removed > 0 {
		c.cfg.Log.Info("replica: retention pruned", "disk", disk, "points", dropped, "undo_entries", undone, "segments", removed, "oldest_lsn", oldest)
	}
	return nil
}

// listSegments returns the first LSNs of the undo segments in dir, sorted.
func listSegments(fsys vfs.FS, dir string) ([]uint64, error) {
	names, err := fsys.List(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("replica: %w", err)
	}
	var out []uint64
	for _, n := range names {
		var first uint64
		if len(n) == 21 && strings.HasSuffix(n, ".undo") {
			if _, err := fmt.Sscanf(n[:16], "%016x", &first); err == nil {
				out = append(out, first)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// Disks returns the disks with a state file under the data directory, as
// "ROOT/VM/DISK", sorted.
func (c *Catalog) Disks() ([]string, error) {
	matches, err := filepath.Glob(filepath.Join(c.cfg.Data, "*", "*", "*", "state"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range matches {
		rel, err := filepath.Rel(c.cfg.Data, filepath.Dir(m))
		if err == nil {
			out = append(out, filepath.ToSlash(rel))
		}
	}
	slices.Sort(out)
	return out, nil
}

// indexDisks returns the disks the index holds points or history of.
func (c *Catalog) indexDisks() ([]string, error) {
	seen := map[string]bool{}
	err := c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); {
			k := it.Item().Key()
			if len(k) < 11 || k[1] != 0 {
				it.Next()
				continue
			}
			disk := string(k[2 : len(k)-9])
			if k[0] == 'r' && len(k) >= 19 { // resync entries: slot and chunk (resync.go)
				disk = string(k[2 : len(k)-17])
			}
			seen[disk] = true
			it.Seek(append(indexPrefix(k[0], disk)[:len(disk)+2], 1)) // past this disk's keys
		}
		return nil
	})
	out := slices.Sorted(maps.Keys(seen))
	return out, err
}

// dir returns the directory of disk ("ROOT/VM/DISK").
func (c *Catalog) dir(disk string) string { return filepath.Join(c.cfg.Data, disk) }

// state reads a disk's state file.
func (c *Catalog) state(disk string) (diskState, error) { return readState(c.fs, c.dir(disk)) }

// DiskHistory is what the catalog knows of one disk.
type DiskHistory struct {
	Disk        string      `json:"disk"` // ROOT/VM/DISK
	Size        int64       `json:"size"`
	Seeded      bool        `json:"seeded"`
	Applied     uint64      `json:"applied_lsn"`
	Points      []PointInfo `json:"-"`
	UndoBytes   int64       `json:"history_bytes"`
	UndoEntries int         `json:"history_entries"`
	// AfterPoint[i] is the undo bytes newer than Points[i]: what reading
	// that point costs in history.
	AfterPoint []int64 `json:"-"`
}

// History returns the points and history of disk.
func (c *Catalog) History(disk string) (DiskHistory, error) {
	st, err := c.state(disk)
	if err != nil {
		return DiskHistory{}, err
	}
	h := DiskHistory{Disk: disk, Size: st.size, Seeded: st.seeded, Applied: st.applied}
	if h.Points, err = c.diskPoints(disk, st.applied); err != nil {
		return h, err
	}
	lsns, sizes, err := c.undoSizes(disk)
	if err != nil {
		return h, err
	}
	h.UndoEntries = len(lsns)
	for _, n := range sizes {
		h.UndoBytes += n
	}
	h.AfterPoint = make([]int64, len(h.Points))
	j := len(lsns)
	var sum int64
	for i := len(h.Points) - 1; i >= 0; i-- {
		for j > 0 && lsns[j-1] > h.Points[i].LSN {
			j--
			sum += sizes[j]
		}
		h.AfterPoint[i] = sum
	}
	return h, nil
}

// indexBatch commits undo entries and markers of one batch, durably.
func (c *Catalog) indexBatch(disk string, refs []*undoRef, markers []hrl.Record) error {
	wb := c.db.NewWriteBatch()
	for _, r := range refs {
		if err := wb.Set(indexKey('u', disk, r.lsn), r.encode()); err != nil {
			wb.Cancel()
			return err
		}
	}
	for _, m := range markers {
		if err := wb.Set(indexKey('m', disk, m.LSN), bytes.Clone(m.Payload)); err != nil {
			wb.Cancel()
			return err
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("replica: indexing history: %w", err)
	}
	return nil
}
