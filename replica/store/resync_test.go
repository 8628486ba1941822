package store

import (
	"bytes"
	"errors"
	"testing"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/vfs"
	"github.com/vrep-io/vrep/replica/wire"
)

// A resync chunk is checked before anything is written: out of order,
// past the disk, the wrong length, outside a resync, or a mark before the
// chunks it covers are refused, and the image is left as it was. Records
// are refused while a resync is under way; progress survives a reopen.
func TestResyncRefusesBadInput(t *testing.T) {
	everyMarkDurable(t)
	fsys := vfs.OS{}
	dir := t.TempDir()
	d, err := OpenDisk(fsys, dir, diskSize) // 16 chunks of 64 KiB
	if err != nil {
		t.Fatal(err)
	}
	if err := d.ResyncChunk(0, make([]byte, wire.ChunkSize)); !errors.Is(err, wire.ErrResync) {
		t.Fatalf("chunk outside a resync: %v", err)
	}
	if _, _, err := d.ResyncBegin(5, wire.ChunkSize, 16); !errors.Is(err, ErrInvalid) {
		t.Fatalf("resync before the initial copy: %v", err)
	}
	if err := d.FinishBase(4); err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.ResyncBegin(5, wire.ChunkSize, 15); !errors.Is(err, ErrInvalid) {
		t.Fatalf("chunk count not matching the disk: %v", err)
	}
	if _, _, err := d.ResyncBegin(3, wire.ChunkSize, 16); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a target behind the applied LSN: %v", err)
	}
	if from, held, err := d.ResyncBegin(5, wire.ChunkSize, 16); err != nil || from != 0 || held != 5 {
		t.Fatalf("begin: %d (target %d), %v", from, held, err)
	}
	if err := d.ResyncChunk(3, make([]byte, wire.ChunkSize)); !errors.Is(err, wire.ErrResync) {
		t.Fatalf("chunk before the primary said where it starts: %v", err)
	}
	if err := d.ResyncResume(5, wire.ChunkSize, 1); !errors.Is(err, wire.ErrResync) {
		t.Fatalf("resume past the durable progress: %v", err)
	}
	if err := d.ResyncResume(5, wire.ChunkSize, 0); err != nil {
		t.Fatal(err)
	}
	full := bytes.Repeat([]byte{7}, wire.ChunkSize)
	for name, c := range map[string]struct {
		idx  uint64
		data []byte
	}{
		"past the disk":    {16, full},
		"short chunk":      {2, full[:100]},
		"too long a chunk": {2, append(full, 1)},
	} {
		if err := d.ResyncChunk(c.idx, c.data); !errors.Is(err, wire.ErrResync) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := d.ResyncChunk(3, full); err != nil {
		t.Fatal(err)
	}
	if err := d.ResyncChunk(2, full); !errors.Is(err, wire.ErrResync) {
		t.Errorf("chunk out of order: %v", err)
	}
	if _, err := d.ResyncMark(3); !errors.Is(err, wire.ErrResync) {
		t.Errorf("mark before a chunk it covers: %v", err)
	}
	if _, err := d.Apply([]hrl.Record{{LSN: 5, Type: hrl.TypeWrite, Payload: []byte{1}, Span: 1}}); !errors.Is(err, ErrResyncing) {
		t.Errorf("records during a resync: %v", err)
	}
	if durable, err := d.ResyncMark(8); err != nil || !durable {
		t.Fatal(durable, err)
	}
	if err := d.ResyncFinish(5); !errors.Is(err, wire.ErrResync) {
		t.Errorf("finish before every chunk was compared: %v", err)
	}
	d.Close()
	// Reopened (a restarted replica), the resync resumes after chunk 8.
	if d, err = OpenDisk(fsys, dir, diskSize); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if from, held, err := d.ResyncBegin(5, wire.ChunkSize, 16); err != nil || from != 8 || held != 5 || !d.Resyncing() {
		t.Fatalf("resumed at %d (target %d), %v", from, held, err)
	}
	if err := d.ResyncResume(5, wire.ChunkSize, 8); err != nil {
		t.Fatal(err)
	}
	img := make([]byte, diskSize)
	d.ReadAt(img, 0)
	want := make([]byte, diskSize)
	copy(want[3*wire.ChunkSize:], full)
	if !bytes.Equal(img, want) {
		t.Fatal("the image holds something other than the one checked chunk")
	}
	if _, err := d.ResyncMark(16); err != nil {
		t.Fatal(err)
	}
	if err := d.ResyncFinish(5); err != nil {
		t.Fatal(err)
	}
	if applied, _ := d.Applied(); applied != 5 || d.Resyncing() {
		t.Fatalf("after the resync: applied %d, resyncing %v", applied, d.Resyncing())
	}
}

// TestDropHistoryDropsResyncHistory: a commit (or a seed replacing a disk)
// drops every index entry of the disk, the resync's history and bases
// too: a later point must never be read through them.
func TestDropHistoryDropsResyncHistory(t *testing.T) {
	base := randomBytes(9, diskSize)
	cat, d := seededDisk(t, vfs.OS{}, t.TempDir(), base, CatalogConfig{})
	if _, _, err := d.ResyncBegin(0, wire.ChunkSize, 16); err != nil {
		t.Fatal(err)
	}
	if err := d.ResyncResume(0, wire.ChunkSize, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.ResyncChunk(2, bytes.Repeat([]byte{3}, wire.ChunkSize)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ResyncMark(16); err != nil {
		t.Fatal(err)
	}
	if err := d.ResyncFinish(0); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []byte{'r', 'b'} {
		if keys, _ := cat.keys(kind, histKey, 1); len(keys) == 0 {
			t.Fatalf("the resync left no %q entry to drop: the test proves nothing", kind)
		}
	}
	if err := cat.DropHistory(histKey); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []byte{'m', 'u', 'r', 'b'} {
		if keys, _ := cat.keys(kind, histKey, 1); len(keys) != 0 {
			t.Fatalf("%q entries survive DropHistory", kind)
		}
	}
}

// everyMarkDurable makes every resync mark durable for the test.
func everyMarkDurable(t *testing.T) {
	b := resyncDurableBytes
	resyncDurableBytes = 0
	t.Cleanup(func() { resyncDurableBytes = b })
}
