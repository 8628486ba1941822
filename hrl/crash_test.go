package hrl

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vrep-io/vrep/internal/vfs"
)

// errKilled fails every mutating call of a killFS after its kill.
var errKilled = errors.New("test: process killed")

// killFS is what a kill -9 leaves: every byte the process wrote stays (in
// the page cache), synced or not, and nothing it would have written after
// the kill does. The write the kill lands in may be left partly done, as
// a pwritev interrupted by a fatal signal is.
type killFS struct {
	vfs.FS
	mu     sync.Mutex
	left   int // mutating calls before the kill; <0: none pending
	killed bool
	rng    *rand.Rand
}

// enter counts a mutating call and reports whether it may go ahead; at
// the kill, partial is how many of its bytes a write still writes.
func (k *killFS) enter(n int) (ok bool, partial int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.killed {
		return false, 0
	}
	if k.left == 0 {
		k.killed = true
		if n > 0 {
			partial = k.rng.IntN(n)
		}
		return false, partial
	}
	if k.left > 0 {
		k.left--
	}
	return true, 0
}

func (k *killFS) Create(name string) (vfs.File, error) {
	if ok, _ := k.enter(0); !ok {
		return nil, errKilled
	}
	f, err := k.FS.Create(name)
	if err != nil {
		return nil, err
	}
	return &killFile{File: f, k: k}, nil
}

func (k *killFS) Open(name string) (vfs.File, error) {
	f, err := k.FS.Open(name)
	if err != nil {
		return nil, err
	}
	return &killFile{File: f, k: k}, nil
}

func (k *killFS) Remove(name string) error {
	if ok, _ := k.enter(0); !ok {
		return errKilled
	}
	return k.FS.Remove(name)
}

func (k *killFS) Rename(oldname, newname string) error {
	if ok, _ := k.enter(0); !ok {
		return errKilled
	}
	return k.FS.Rename(oldname, newname)
}

func (k *killFS) SyncDir(dir string) error {
	if ok, _ := k.enter(0); !ok {
		return errKilled
	}
	return k.FS.SyncDir(dir)
}

type killFile struct {
	vfs.File
	k *killFS
}

func (f *killFile) WriteAt(p []byte, off int64) (int, error) {
	ok, partial := f.k.enter(len(p))
	if !ok {
		if partial > 0 {
			f.File.WriteAt(p[:partial], off)
		}
		return 0, errKilled
	}
	return f.File.WriteAt(p, off)
}

func (f *killFile) Sync() error {
	if ok, _ := f.k.enter(0); !ok {
		return errKilled
	}
	return f.File.Sync()
}

func (f *killFile) Truncate(size int64) error {
	if ok, _ := f.k.enter(0); !ok {
		return errKilled
	}
	return f.File.Truncate(size)
}

// crashLog runs a seeded workload of appends, flushes, seals and drops
// over recycled or fresh segment files and crashes it at a random call:
// a kill -9 (everything written stays) or a power cut (only synced data
// stays, with unsynced pages kept at random). It returns the file system
// as the crash left it, and a note of what was done, for failures.
func crashLog(seed uint64, opts Options) (*vfs.Mem, string) {
	rng := rand.New(rand.NewPCG(seed, 11))
	mem := vfs.NewMem(seed)
	kill := rng.IntN(2) == 0
	kfs := &killFS{FS: mem, left: -1, rng: rng}
	l, err := Open(kfs, "/log", opts)
	if err != nil {
		panic(err)
	}
	// A history first, so that later segments reuse dropped files.
	var lsn uint64
	for range 40 + rng.IntN(40) {
		lsn++
		_, b, _ := l.Append(write(lsn, recyclePayload(lsn)))
		b.Wait()
	}
	l.Sync()
	l.DropThrough(lsn)
	at := 3 + rng.IntN(200)
	if kill {
		kfs.mu.Lock()
		kfs.left = at
		kfs.mu.Unlock()
	} else {
		mem.CutAfter(at)
	}
	var synced uint64
	for i := 0; ; i++ {
		_, b, err := l.Append(write(lsn+1, recyclePayload(lsn+1)))
		if err != nil || b.Wait() != nil {
			break
		}
		lsn++
		switch rng.IntN(10) {
		case 0, 1:
			if l.Sync() != nil {
				break
			}
			synced = lsn
		case 2:
			if _, err := l.Seal(); err != nil {
				break
			}
		case 3:
			l.DropThrough(synced)
		}
		if i > 1000 {
			break
		}
	}
	l.Close()
	mem.Revive()
	what := "power cut"
	if kill {
		what = "kill -9"
	}
	what = fmt.Sprintf("%s after %d calls, recycle %d", what, at, opts.Recycle)
	// Now and then, bytes an earlier crash or a reservation leaves: zeros
	// past the end of a segment, or a damaged byte anywhere.
	names := segmentFiles(mem)
	if len(names) > 0 {
		name := "/log/" + names[rng.IntN(len(names))]
		switch rng.IntN(6) {
		case 0:
			b, _ := vfs.ReadFile(mem, name)
			f, _ := mem.Open(name)
			f.WriteAt(make([]byte, 1+rng.IntN(8192)), int64(len(b)))
			f.Sync()
			what += ", zeros after " + name
		case 1:
			b, _ := vfs.ReadFile(mem, name)
			if len(b) > 0 {
				at := rng.IntN(len(b))
				f, _ := mem.Open(name)
				f.WriteAt([]byte{b[at] ^ byte(1+rng.IntN(255))}, int64(at))
				f.Sync()
				what += fmt.Sprintf(", byte %d of %s flipped", at, name)
			}
		}
	}
	return mem, what
}

// segmentFiles lists the segment files of /log.
func segmentFiles(fs vfs.FS) []string {
	names, _ := fs.List("/log")
	var out []string
	for _, n := range names {
		if strings.HasSuffix(n, suffix) {
			out = append(out, n)
		}
	}
	return out
}

// segmentBytes sums the sizes of the segment files of /log.
func segmentBytes(t *testing.T, fs vfs.FS) (total int64, sizes map[string]int64) {
	t.Helper()
	sizes = map[string]int64{}
	for _, n := range segmentFiles(fs) {
		b, err := vfs.ReadFile(fs, filepath.Join("/log", n))
		if err != nil {
			t.Fatal(err)
		}
		sizes[n] = int64(len(b))
		total += int64(len(b))
	}
	return total, sizes
}

// TestCheckAgreesWithOpen: after a crash, Check judges a log exactly as
// recovery (Open) then does. Where Open cuts a torn tail, Check reports
// a torn tail of the same number of bytes (not corruption); where Open
// reports corruption, so does Check; and Check passes the records Open
// keeps.
func TestCheckAgreesWithOpen(t *testing.T) {
	seeds := uint64(600)
	if testing.Short() {
		seeds = 200
	}
	verdicts := map[string]int{}
	for seed := range seeds {
		opts := Options{SegmentSize: 2048}
		if seed%3 != 0 {
			opts.Recycle = 3
		}
		fs, what := crashLog(seed, opts)
		verdicts[checkAgrees(t, fs, opts, fmt.Sprintf("seed %d (%s)", seed, what))]++
	}
	t.Logf("verdicts: %v", verdicts)
	for _, v := range []string{"clean", "torn", "corrupt"} {
		if verdicts[v] == 0 {
			t.Errorf("no seed gave a %s log: the test does not cover it", v)
		}
	}
}

// checkAgrees checks a crashed log with Check, then opens it, and
// reports what both found: clean, torn or corrupt.
func checkAgrees(t *testing.T, fs *vfs.Mem, opts Options, what string) string {
	t.Helper()
	// A log Open finds empty starts a segment at FirstLSN: far from any
	// name the crash left, so that the bytes Open cut can be counted.
	opts.FirstLSN = 1 << 40
	before, sizes := segmentBytes(t, fs)
	var checked []rec
	torn, cerr := Check(fs, "/log", func(r Record) {
		checked = append(checked, rec{r.Type, r.LSN, r.Offset, string(r.Payload)})
	})
	if cerr != nil && !IsCorruption(cerr) {
		t.Fatalf("%s: Check: unclassified error %v", what, cerr)
	}
	if _, after := segmentBytes(t, fs); fmt.Sprint(after) != fmt.Sprint(sizes) {
		t.Fatalf("%s: Check changed the log: %v, was %v", what, after, sizes)
	}
	l, oerr := Open(fs, "/log", opts)
	switch {
	case IsCorruption(oerr):
		if !IsCorruption(cerr) {
			t.Fatalf("%s: Open reports corruption (%v), Check says %v, torn tail %v", what, oerr, cerr, torn)
		}
		return "corrupt"
	case oerr != nil:
		t.Fatalf("%s: Open: %v", what, oerr)
	}
	defer l.Close()
	if cerr != nil {
		t.Fatalf("%s: Open succeeds (cutting %v), Check says: %v", what, l.TornTail(), cerr)
	}
	_, after := segmentBytes(t, fs)
	cut := before
	for name, n := range after {
		if _, ok := sizes[name]; ok {
			cut -= n
		}
	}
	switch {
	case cut == 0 && torn != nil && torn.Bytes != 0:
		t.Fatalf("%s: Check reports a torn tail (%v), Open cut nothing", what, torn)
	case cut != 0 && torn == nil:
		t.Fatalf("%s: Open cut %d bytes, Check reports no torn tail", what, cut)
	case torn != nil && torn.Bytes != cut:
		t.Fatalf("%s: Check says %v, Open cut %d bytes", what, torn, cut)
	case fmt.Sprint(torn) != fmt.Sprint(l.TornTail()):
		t.Fatalf("%s: Check says %v, Open says it cut %v", what, torn, l.TornTail())
	}
	if got := scanAll(t, l, 1); fmt.Sprint(got) != fmt.Sprint(checked) {
		t.Fatalf("%s: Check passed %d records, Open keeps %d", what, len(checked), len(got))
	}
	if torn != nil {
		return "torn"
	}
	return "clean"
}
