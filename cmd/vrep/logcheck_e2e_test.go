package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/vfs"
)

// TestLogCheckTornTailAfterKill: what a kill -9 of the primary leaves in
// a log whose active segment was written over a reused file (the records
// it got, then the file's old records) is a torn tail, which log-check
// reports with the bytes the next open cuts, exit 0, changing nothing.
// It used to call it corruption ("record checksum mismatch ... needs a
// resync", exit 3) while the restarted primary cut it as torn.
func TestLogCheckTornTailAfterKill(t *testing.T) {
	src := t.TempDir()
	opts := hrl.Options{SegmentSize: 4096, Recycle: 2}
	l, err := hrl.Open(vfs.OS{}, src, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	appendSync := func(n int) {
		t.Helper()
		for i := range n {
			_, b, err := l.Append(hrl.Entry{Type: hrl.TypeWrite, Offset: uint64(i) * 4096, Payload: []byte(strings.Repeat("old and new records ", 1+i%9))})
			if err == nil {
				err = b.Wait()
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	appendSync(100)
	if err := l.DropThrough(l.LastLSN()); err != nil { // sealed files kept for reuse
		t.Fatal(err)
	}
	for segs := len(l.Segments()); len(l.Segments()) == segs; {
		appendSync(1) // until the log rolls into a reused file
	}
	appendSync(2)
	// The kill: the files as they are now, written and synced, never closed.
	state := t.TempDir()
	disk := filepath.Join(state, "disks", "vm1", "disk1")
	logDir := filepath.Join(disk, "log")
	os.MkdirAll(logDir, 0o700)
	names, _ := os.ReadDir(src)
	before := map[string]int64{}
	for _, e := range names {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(logDir, e.Name()), b, 0o600)
		if filepath.Ext(e.Name()) == ".hrl" {
			before[e.Name()] = int64(len(b))
		}
	}
	code, out := vrepRun(t, "log-check", disk)
	if code != 0 || !strings.Contains(out, "torn tail,") {
		t.Fatalf("log-check after a kill: exit %d\n%s", code, out)
	}
	var lc LogCheck
	if code, js := vrepRun(t, "log-check", disk, "--json"); code != 0 || json.Unmarshal([]byte(js), &lc) != nil || lc.TornBytes == 0 || lc.Records == 0 ||
		!strings.Contains(out, fmt.Sprintf("torn tail, %d bytes", lc.TornBytes)) {
		t.Fatalf("log-check --json: exit %d\n%s", code, js)
	}
	// What the next open cuts is what log-check said.
	l2, err := hrl.Open(vfs.OS{}, logDir, opts)
	if err != nil {
		t.Fatalf("opening the log: %v", err)
	}
	l2.Close()
	var cut int64
	for name, n := range before {
		st, err := os.Stat(filepath.Join(logDir, name))
		if err == nil {
			n -= st.Size()
		}
		cut += n
	}
	if want := fmt.Sprintf("torn tail, %d bytes would be cut at open", cut); cut == 0 || !strings.Contains(out, want) {
		t.Fatalf("open cut %d bytes; log-check said:\n%s", cut, out)
	}
	if code, out := vrepRun(t, "log-check", disk); code != 0 || !strings.HasSuffix(strings.TrimSpace(out), ": ok") {
		t.Fatalf("log-check after the open cut the tail: exit %d\n%s", code, out)
	}
}
