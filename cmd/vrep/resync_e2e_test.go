package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/waitfor"
	"github.com/vrep-io/vrep/replica/ship"
	"github.com/vrep-io/vrep/replica/wire"
)

// resyncStatus polls vrep status until the disk's resync satisfies ok.
func resyncStatus(t *testing.T, e *env, what string, ok func(*ship.ResyncProgress) bool) *ship.ResyncProgress {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		var st primary.Status
		code, out := vrepRun(t, "status", "--state", e.state, "--json")
		if code == 0 && json.Unmarshal([]byte(out), &st) == nil && len(st.Disks) == 1 {
			if r := st.Disks[0].Replication; r != nil && r.Resync != nil && ok(r.Resync) {
				return r.Resync
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestResyncEndToEnd: the replica is away while the VM writes more than
// the log may hold; the log overflows and the disk needs a resync, which
// waits for its window until vrep resync --now. The replica is killed -9
// right after its first durable mark; restarted, the resync resumes there
// and sends none of those chunks again, and of the chunks after it only
// those the primary had sent past the last mark the replica confirmed
// (at most wire.WindowBytes). The point from
// before reads back exactly through a test failover; damage planted in
// the replica image is listed by vrep verify (exit 3) and repaired by a
// resync; at the end the replica equals the primary byte for byte.
func TestResyncEndToEnd(t *testing.T) {
	need(t, "qemu-io", "qemu-img")
	const size = 32 << 20 // 512 chunks of 64 KiB: two hash batches
	e := newEnv(t, size)
	pkiDir, addr := replicationSetup(t, e)
	repSock := filepath.Join(e.dir, "r.sock")
	repData := filepath.Join(e.dir, "replica")
	killReplica := startReplica(t, e.dir, pkiDir, addr, "--nbd", "unix:"+repSock)
	window := closedWindow()
	d := e.start(t, replicaFlags(addr, pkiDir, "--retry-schedule", "100ms,200ms", "--resync-window", window)...)
	u := e.uri("vm1/disk0")
	qemuIO(t, u, "write -P 0x11 0 32M", "flush")
	waitReplicated(t, e)
	code, out := vrepRun(t, "point", "create", "vm1", "--state", e.state, "--json")
	var p primary.PointInfo
	if code != 0 || json.Unmarshal([]byte(out), &p) != nil {
		t.Fatalf("point create: exit %d\n%s", code, out)
	}
	waitReplicated(t, e)
	killReplica()
	// 80 MiB of writes: past the log's bound (64 MiB for a small disk).
	qemuIO(t, u, "write -P 0x22 0 32M", "write -P 0x33 0 32M", "write -P 0x44 0 16M", "flush")
	var st primary.Status
	if code, out = vrepRun(t, "status", "--state", e.state, "--json"); code != 0 || json.Unmarshal([]byte(out), &st) != nil || !st.Disks[0].ResyncRequired {
		t.Fatalf("the log did not overflow: %s", out)
	}
	// The replica comes back armed to die after its first durable batch.
	died := startReplicaEnv(t, faultBin(t), []string{"VREP_FAULTPOINT=resync-after-mark:1"}, e.dir, pkiDir, addr, "--nbd", "unix:"+repSock).done
	r := resyncStatus(t, e, "the resync to wait for its window", func(r *ship.ResyncProgress) bool { return r.State == "waiting" })
	if !strings.Contains(r.Reason, "waits for the resync window "+window) {
		t.Fatalf("waiting resync: %+v", r)
	}
	if code, out = vrepRun(t, "resync", "vm1", "--now", "--state", e.state); code != 0 || !strings.Contains(out, "vm1/disk0") {
		t.Fatalf("vrep resync --now: exit %d\n%s", code, out)
	}
	<-died
	killReplica = startReplica(t, e.dir, pkiDir, addr, "--nbd", "unix:"+repSock)
	r = resyncStatus(t, e, "the resync to complete", func(r *ship.ResyncProgress) bool { return r.State == "done" })
	// Every chunk differed (0x11 against 0x44 and 0x33). The replica
	// died right after its first durable mark; the resumed session
	// started there and sent only the chunks after it. The first session
	// sent no more than the window past the last mark the replica said
	// durable (here: none), so that is all that was sent twice.
	bound := uint64(wire.WindowBytes / wire.ChunkSize)
	if r.Sessions != 2 || r.ResumedAt == 0 || r.ResumedAt >= 512 || r.SessionSent != 512-r.ResumedAt || r.Compared != 512 ||
		r.Sent < 512 || r.Sent-512 > bound {
		t.Fatalf("resync %+v: want two sessions, the second resuming at the replica's durable mark and sending the chunks after it, and at most %d chunks sent twice", r, bound)
	}
	waitReplicated(t, e)
	// The point from before the resync reads back exactly.
	id := strconv.FormatUint(p.ID, 10)
	if code, out = vrepRun(t, "failover", "test", "vm1", "--point", id, "--data", repData); code != 0 {
		t.Fatalf("failover test: exit %d\n%s", code, out)
	}
	qemuIO(t, "nbd+unix:///vm1/disk0-test?socket="+repSock, "read -P 0x11 0 32M")
	if code, out = vrepRun(t, "failover", "test-stop", "vm1", "--data", repData); code != 0 {
		t.Fatalf("test-stop: exit %d\n%s", code, out)
	}

	// Damage planted in the replica image: found by verify, repaired by
	// a resync.
	killReplica()
	replicaImg := filepath.Join(repData, "primary1", "vm1", "disk0", "image")
	f, err := os.OpenFile(replicaImg, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []int64{5, 300} {
		f.WriteAt(bytes.Repeat([]byte{0xEE}, 512), c*65536+1024)
	}
	f.Close()
	startReplica(t, e.dir, pkiDir, addr, "--nbd", "unix:"+repSock)
	qemuIO(t, u, "write -P 0x55 31M 64k", "flush") // the stream notices the new replica
	waitReplicated(t, e)
	code, out = vrepRun(t, "verify", "vm1", "--state", e.state)
	if code != exitCorrupt || !strings.Contains(out, "2 of 512 chunks differ") || !strings.Contains(out, ": 5 300 ") {
		t.Fatalf("verify of a damaged replica: exit %d\n%s", code, out)
	}
	if code, out = vrepRun(t, "resync", "vm1", "--now", "--wait", "--state", e.state); code != 0 || !strings.Contains(out, "resync done") {
		t.Fatalf("resync --wait: exit %d\n%s", code, out)
	}
	if r = resyncStatus(t, e, "done", func(r *ship.ResyncProgress) bool { return r.State == "done" }); r.Sent != 2 {
		t.Fatalf("repair resync sent %d chunks, want the 2 damaged ones: %+v", r.Sent, r)
	}
	waitReplicated(t, e)
	if code, out = vrepRun(t, "verify", "vm1", "--state", e.state); code != 0 || !strings.Contains(out, "equal at LSN") {
		t.Fatalf("verify after the repair: exit %d\n%s", code, out)
	}
	// Bad input: one sentence, nothing done.
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"resync", "nope"}, exitError, "nope"},
		{[]string{"verify", "vm1", "--point", "999"}, exitError, "no such point"},
		{[]string{"resync", "vm1", "--disk", "disk9"}, exitError, "no disk disk9"},
		{[]string{"resync", "../x"}, exitUsage, ""},
	} {
		code, out := vrepRun(t, append(c.args, "--state", e.state)...)
		if code != c.code || !strings.Contains(out, c.want) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
			t.Errorf("vrep %v: exit %d, want %d and one sentence with %q:\n%s", c.args, code, c.code, c.want, out)
		}
	}
	if err := d.stop(); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, d.stderr)
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", e.img, replicaImg)
}

// TestResyncResumesAfterPrimaryKill: the primary is killed -9 right after
// the replica confirmed its first durable mark. Restarted, the primary's
// disk has moved on (it replayed its log, and the VM wrote a chunk below
// that mark while the replica was away): the resync resumes at the
// replica's durable mark, not at chunk 0, sending first the chunk
// written since, and the replica ends equal byte for byte.
func TestResyncResumesAfterPrimaryKill(t *testing.T) {
	need(t, "qemu-io", "qemu-img")
	const size = 32 << 20 // 512 chunks
	e := newEnv(t, size)
	pkiDir, addr := replicationSetup(t, e)
	repData := filepath.Join(e.dir, "replica")
	killReplica := startReplica(t, e.dir, pkiDir, addr)
	e.bin, e.daemonEnv = faultBin(t), []string{"VREP_FAULTPOINT=resync-after-durable:1"}
	flags := replicaFlags(addr, pkiDir, "--retry-schedule", "100ms,200ms", "--resync-window", "always")
	d := e.start(t, flags...)
	u := e.uri("vm1/disk0")
	qemuIO(t, u, "write -P 0x11 0 32M", "flush")
	waitReplicated(t, e)
	// Every chunk of the replica differs.
	killReplica()
	replicaImg := filepath.Join(repData, "primary1", "vm1", "disk0", "image")
	if err := os.WriteFile(replicaImg, bytes.Repeat([]byte{0xEE}, size), 0o600); err != nil {
		t.Fatal(err)
	}
	killReplica = startReplica(t, e.dir, pkiDir, addr)
	qemuIO(t, u, "write -P 0x55 31M 64k", "flush") // the stream notices the new replica
	waitReplicated(t, e)
	if code, out := vrepRun(t, "resync", "vm1", "--now", "--state", e.state); code != 0 {
		t.Fatalf("vrep resync --now: exit %d\n%s", code, out)
	}
	if !d.exitedWithin(waitfor.Patience) {
		t.Fatal("the primary did not reach its fault point")
	}
	// While the replica is away, the restarted primary takes a write
	// below the replica's durable mark, and merges it at its stop: its
	// disk is then at a newer LSN than the one the resync started for.
	killReplica()
	e.bin, e.daemonEnv = "", nil
	d = e.start(t, flags...)
	qemuIO(t, u, "write -P 0x66 320k 64k", "flush") // chunk 5
	if err := d.stop(); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, d.stderr)
	}
	d = e.start(t, flags...)
	startReplica(t, e.dir, pkiDir, addr)
	r := resyncStatus(t, e, "the resync to complete", func(r *ship.ResyncProgress) bool { return r.State == "done" })
	// Sent: chunk 5, and at most the chunks from the mark on but chunk
	// 496 (the 0x55 write, replicated as a record); fewer when the first
	// session's chunks past the mark reached the image.
	if r.ResumedAt <= 5 || r.ResumedAt > 496 || r.Changed != 1 || r.SessionSent > 512-r.ResumedAt-1+1 || r.Compared != 512 {
		t.Fatalf("resync %+v: want it resumed at the replica's durable mark, sending the chunks after it and chunk 5", r)
	}
	waitReplicated(t, e)
	if err := d.stop(); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, d.stderr)
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", e.img, replicaImg)
}

// TestResyncAfterCorruptLog: a record the replica has not received yet is
// damaged in the primary's log file (a bit flipped in its payload). The
// shipper finds the record's checksum wrong, the disk needs a resync,
// which runs (window "always") and brings the replica to the primary's
// disk byte for byte; records then ship again.
func TestResyncAfterCorruptLog(t *testing.T) {
	need(t, "qemu-io", "qemu-img")
	const size = 32 << 20
	e := newEnv(t, size)
	pkiDir, addr := replicationSetup(t, e)
	repData := filepath.Join(e.dir, "replica")
	killReplica := startReplica(t, e.dir, pkiDir, addr)
	d := e.start(t, replicaFlags(addr, pkiDir, "--retry-schedule", "100ms,200ms", "--resync-window", "always")...)
	u := e.uri("vm1/disk0")
	qemuIO(t, u, "write -P 0x11 0 32M", "flush")
	waitReplicated(t, e)
	killReplica()
	qemuIO(t, u, "write -P 0x5A 4M 1M", "flush")
	// Flip a bit in the middle of that write's payload, in the log file.
	var seg string
	var at int64 = -1
	filepath.Walk(e.state, func(path string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || at >= 0 || filepath.Base(filepath.Dir(path)) != "log" {
			return nil
		}
		b, _ := os.ReadFile(path)
		if i := bytes.Index(b, bytes.Repeat([]byte{0x5A}, 64<<10)); i >= 0 {
			seg, at = path, int64(i)+32<<10
		}
		return nil
	})
	if at < 0 {
		t.Fatal("the write is in no log segment")
	}
	f, err := os.OpenFile(seg, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0x5B}, at)
	f.Close()
	replicaImg := filepath.Join(repData, "primary1", "vm1", "disk0", "image")
	startReplica(t, e.dir, pkiDir, addr)
	r := resyncStatus(t, e, "the resync after the corrupt log", func(r *ship.ResyncProgress) bool { return r.State == "done" })
	first := r
	if !strings.Contains(r.Reason, "corrupt") || r.Sent == 0 || r.Sent > 17 {
		t.Fatalf("resync %+v: want it run for the corrupt log, sending the chunks of the 1 MiB write", r)
	}
	// Records ship again, and the damaged record is not read again: no
	// second resync.
	qemuIO(t, u, "write -P 0x66 8M 64k", "flush")
	waitReplicated(t, e)
	qemuIO(t, u, "write -P 0x67 9M 64k", "flush")
	st := waitReplicated(t, e)
	if r := st.Replication.Resync; r == nil || r.Started != first.Started || r.State != "done" {
		t.Fatalf("resync after the records that followed: %+v, want the one resync, done", r)
	}
	if err := d.stop(); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, d.stderr)
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", e.img, replicaImg)
}

// closedWindow is a resync window surely closed now, whatever the time of
// day: it opens in two hours. (The default window, 18:00-06:00, is open
// at night, and a test that needs a resync to wait must not pass by day
// only.)
func closedWindow() string {
	open := time.Now().Add(2 * time.Hour)
	return open.Format("15:04") + "-" + open.Add(time.Hour).Format("15:04")
}
