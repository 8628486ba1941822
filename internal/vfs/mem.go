package vfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"sync"
)

// ErrCut is returned by every call on a Mem after its power was cut and
// before Revive.
var ErrCut = errors.New("vfs: power cut")

// Mem is an in-memory FS for crash tests. Every call takes one lock, so a
// power cut is atomic with respect to in-flight I/O: it happens between
// two calls, never inside one.
//
// A power cut keeps what was synced: file data as of its last Sync and
// directory entries as of their directory's last SyncDir. Pages written
// but not synced survive or not at random (seeded), as kernel writeback
// would leave them, so a torn log tail can hold holes.
type Mem struct {
	mu      sync.Mutex
	live    map[string]*inode
	durable map[string]*inode
	dirs    map[string]bool
	gen     int
	cut     bool
	left    int // mutating calls before the cut; <0: no cut pending
	rng     *rand.Rand
	// Inject, when set, is called (under the lock) before every call with
	// the operation name ("create", "write", "sync", ...) and file name; an
	// error it returns fails the call without effect.
	Inject func(op, name string) error
}

type inode struct {
	data   []byte
	synced []byte
}

// NewMem returns an empty file system whose power cuts draw on seed.
func NewMem(seed uint64) *Mem {
	return &Mem{live: map[string]*inode{}, durable: map[string]*inode{}, dirs: map[string]bool{".": true, "/": true},
		left: -1, rng: rand.New(rand.NewPCG(seed, 3))}
}

// SetInject sets Inject while the file system is in use.
func (m *Mem) SetInject(f func(op, name string) error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.Inject = f
}

// CutAfter arranges for the power to be cut just before the n-th next
// mutating call (write, sync, create, rename, remove, truncate, syncdir).
func (m *Mem) CutAfter(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.left = n
}

// Cut cuts the power now.
func (m *Mem) Cut() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cutLocked()
}

// IsCut reports whether the power is off.
func (m *Mem) IsCut() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cut
}

func (m *Mem) cutLocked() {
	if m.cut {
		return
	}
	m.cut = true
	m.left = -1
	m.gen++ // every open file is dead
	after := map[string]*inode{}
	for name, ino := range m.durable {
		after[name] = m.survivor(ino)
	}
	m.live = after
	m.durable = map[string]*inode{}
	for name, ino := range after {
		m.durable[name] = ino
	}
}

// survivor is what a power cut leaves of a file: the synced content, with
// each unsynced 4 KiB page of the newer content kept at random.
func (m *Mem) survivor(ino *inode) *inode {
	const page = 4096
	n := len(ino.synced)
	if len(ino.data) != n && m.rng.IntN(2) == 0 {
		n = len(ino.data)
	}
	out := make([]byte, n)
	copy(out, ino.synced)
	for p := 0; p < n; p += page {
		end := min(p+page, n, len(ino.data))
		if p < end && m.rng.IntN(2) == 0 {
			copy(out[p:end], ino.data[p:end])
		}
	}
	return &inode{data: out, synced: append([]byte(nil), out...)}
}

// Revive turns the power back on, with the files as the cut left them.
func (m *Mem) Revive() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cut = false
}

// enter is called under the lock at the start of every call.
func (m *Mem) enter(op, name string, mutating bool) error {
	if mutating && m.left >= 0 {
		if m.left == 0 {
			m.cutLocked()
		} else {
			m.left--
		}
	}
	if m.cut {
		return fmt.Errorf("%s %s: %w", op, name, ErrCut)
	}
	if m.Inject != nil {
		if err := m.Inject(op, name); err != nil {
			return err
		}
	}
	return nil
}

func clean(name string) string { return filepath.Clean(name) }

func (m *Mem) open(name string, create bool) (File, error) {
	name = clean(name)
	m.mu.Lock()
	defer m.mu.Unlock()
	op := "open"
	if create {
		op = "create"
	}
	if err := m.enter(op, name, create); err != nil {
		return nil, err
	}
	if !m.dirs[filepath.Dir(name)] {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
	}
	ino := m.live[name]
	switch {
	case create && ino != nil:
		ino.data = ino.data[:0:0]
	case create:
		ino = &inode{}
		m.live[name] = ino
	case ino == nil:
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
	}
	return &memFile{m: m, name: name, ino: ino, gen: m.gen}, nil
}

// Create creates or truncates name.
func (m *Mem) Create(name string) (File, error) { return m.open(name, true) }

// Open opens an existing file.
func (m *Mem) Open(name string) (File, error) { return m.open(name, false) }

// Remove removes name.
func (m *Mem) Remove(name string) error {
	name = clean(name)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("remove", name, true); err != nil {
		return err
	}
	if m.live[name] == nil {
		return &fs.PathError{Op: "remove", Path: name, Err: fs.ErrNotExist}
	}
	delete(m.live, name)
	return nil
}

// Rename renames oldname to newname, replacing newname.
func (m *Mem) Rename(oldname, newname string) error {
	oldname, newname = clean(oldname), clean(newname)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("rename", oldname, true); err != nil {
		return err
	}
	ino := m.live[oldname]
	if ino == nil {
		return &fs.PathError{Op: "rename", Path: oldname, Err: fs.ErrNotExist}
	}
	delete(m.live, oldname)
	m.live[newname] = ino
	return nil
}

// MkdirAll creates dir; directories are durable at once.
func (m *Mem) MkdirAll(dir string) error {
	dir = clean(dir)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("mkdir", dir, false); err != nil {
		return err
	}
	for d := dir; !m.dirs[d]; d = filepath.Dir(d) {
		m.dirs[d] = true
	}
	return nil
}

// List returns the sorted names of the files in dir.
func (m *Mem) List(dir string) ([]string, error) {
	dir = clean(dir)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("list", dir, false); err != nil {
		return nil, err
	}
	if !m.dirs[dir] {
		return nil, &fs.PathError{Op: "list", Path: dir, Err: fs.ErrNotExist}
	}
	var names []string
	for name := range m.live {
		if filepath.Dir(name) == dir {
			names = append(names, filepath.Base(name))
		}
	}
	sort.Strings(names)
	return names, nil
}

// SyncDir makes the entries of dir durable.
func (m *Mem) SyncDir(dir string) error {
	dir = clean(dir)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.enter("syncdir", dir, true); err != nil {
		return err
	}
	for name := range m.durable {
		if filepath.Dir(name) == dir && m.live[name] == nil {
			delete(m.durable, name)
		}
	}
	for name, ino := range m.live {
		if filepath.Dir(name) == dir {
			m.durable[name] = ino
		}
	}
	return nil
}

type memFile struct {
	m    *Mem
	name string
	ino  *inode
	gen  int
}

func (f *memFile) enter(op string, mutating bool) error {
	if err := f.m.enter(op, f.name, mutating); err != nil {
		return err
	}
	if f.gen != f.m.gen {
		return fmt.Errorf("%s %s: file opened before a power cut: %w", op, f.name, ErrCut)
	}
	return nil
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.enter("read", false); err != nil {
		return 0, err
	}
	if off >= int64(len(f.ino.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.ino.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.enter("write", true); err != nil {
		return 0, err
	}
	if end := off + int64(len(p)); end > int64(len(f.ino.data)) {
		f.ino.data = append(f.ino.data, make([]byte, end-int64(len(f.ino.data)))...)
	}
	return copy(f.ino.data[off:], p), nil
}

func (f *memFile) Sync() error {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.enter("sync", true); err != nil {
		return err
	}
	f.ino.synced = append(f.ino.synced[:0:0], f.ino.data...)
	return nil
}

func (f *memFile) Truncate(size int64) error {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.enter("truncate", true); err != nil {
		return err
	}
	if size <= int64(len(f.ino.data)) {
		f.ino.data = f.ino.data[:size]
	} else {
		f.ino.data = append(f.ino.data, make([]byte, size-int64(len(f.ino.data)))...)
	}
	return nil
}

func (f *memFile) Size() (int64, error) {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.enter("stat", false); err != nil {
		return 0, err
	}
	return int64(len(f.ino.data)), nil
}

func (f *memFile) Close() error { return nil }
