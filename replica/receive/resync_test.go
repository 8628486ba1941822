package receive

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/blockdev/tracked"
	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/faultnet"
	"github.com/vrep-io/vrep/internal/pki"
	"github.com/vrep-io/vrep/replica/health"
	"github.com/vrep-io/vrep/replica/ship"
	"github.com/vrep-io/vrep/replica/store"
	"github.com/vrep-io/vrep/replica/wire"
)

// resyncRig is a rig whose volume overflows at 1 MiB of unshipped log and
// whose replica keeps history.
func newResyncRig(t testing.TB, size int64) *rig {
	dir := t.TempDir()
	r := &rig{pkiDir: filepath.Join(dir, "pki"), data: filepath.Join(dir, "replica")}
	pki.InitCA(r.pkiDir)
	for _, n := range []string{"replica1", "primary1"} {
		if err := pki.Issue(r.pkiDir, n, pki.HostValidity); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "disk.img")
	os.WriteFile(img, nil, 0o600)
	os.Truncate(img, size)
	base, err := blockdev.OpenFile(img)
	if err != nil {
		t.Fatal(err)
	}
	v, err := tracked.Open(filepath.Join(dir, "state"), base, tracked.Options{Retain: true, MergeAfter: 256 << 10,
		MergeIdle: 10 * time.Millisecond, OverflowBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	r.vol, r.base = v, base
	t.Cleanup(func() { v.Close(); base.Close() })
	return r
}

// serveHistory starts a replica with a catalog on addr ("": any port).
func (r *rig) serveHistory(t testing.TB, addr string) (string, *store.Catalog, func()) {
	cfg, err := pki.ServerConfig(r.pkiDir, "replica1")
	if err != nil {
		t.Fatal(err)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := store.OpenCatalog(store.CatalogConfig{Data: r.data, Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(ServerConfig{Data: r.data, TLS: cfg, Allow: map[string]string{"primary1": ""}, Catalog: cat, Log: quiet()})
	stopSrv := serveJoined(t, srv, l)
	closed := false
	stop := func() {
		stopSrv()
		if !closed {
			closed = true
			cat.Close()
		}
	}
	t.Cleanup(stop)
	return l.Addr().String(), cat, stop
}

// point appends a crash-consistent point and returns its LSN.
func point(t *testing.T, v *tracked.Volume, id uint64) uint64 {
	release := v.Hold()
	lsn, b, err := v.AppendMarkerHeld(hrl.Marker{ID: id, Time: time.Now().UnixNano(), Kind: hrl.KindCrash})
	release()
	if err == nil {
		err = b.Wait()
	}
	if err == nil {
		err = v.Sync()
	}
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

func viewBytes(t *testing.T, cat *store.Catalog, lsn uint64) []byte {
	t.Helper()
	v, err := cat.OpenView("primary1/vm1/disk0", lsn)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	b := make([]byte, v.Size())
	if _, err := v.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func always(sc *ship.ShipperConfig) { sc.ResyncWindow = health.ResyncWindow{Always: true} }

// A log that overflowed while the replica was away is brought back by a
// resync that sends only the chunks that differ; the replica is then equal
// byte for byte, records follow, and the point from before reads back
// exactly.
func TestResyncAfterLogOverflow(t *testing.T) {
	const size = 32 << 20
	rg := newResyncRig(t, size)
	rnd := rand.New(rand.NewPCG(7, 7))
	writeSome(t, rg.vol, rnd, 100)
	addr, cat, stop := rg.serveHistory(t, "")
	sh := rg.shipper(t, "primary1", addr, always)
	runJoined(t, sh)
	waitFor(t, "the initial copy", func() bool { return sh.Status().Initial == 100 })
	// At most 20 writes of 32 KiB: the log cannot overflow before point
	// 1 is shipped, however slow the shipper.
	writeSome(t, rg.vol, rnd, 20)
	p1 := point(t, rg.vol, 1)
	waitFor(t, "point 1 on the replica", func() bool { return sh.Status().Acked >= p1 })
	at1 := rg.primaryImage(t)
	if !bytes.Equal(viewBytes(t, cat, p1), at1) {
		t.Fatal("point 1 differs before the resync")
	}
	stop()
	// The replica is away: the log overflows (1 MiB of 4 KiB writes).
	for !rg.vol.ResyncRequired() {
		writeSome(t, rg.vol, rnd, 50)
	}
	writeSome(t, rg.vol, rnd, 20)
	_, cat, stop = rg.serveHistory(t, addr)
	defer stop()
	waitFor(t, "the resync", func() bool { r := sh.Status().Resync; return r != nil && r.State == "done" })
	// Nothing written since: the replica holds everything, and the
	// status says so without waiting for a write.
	target := sh.Status().Resync.TargetLSN
	waitFor(t, "the resync's target acknowledged", func() bool { st := sh.Status(); return st.Acked >= target && st.LagRecords == 0 })
	writeSome(t, rg.vol, rnd, 20) // records follow the resync
	p2 := point(t, rg.vol, 2)
	waitFor(t, "catch-up after the resync", func() bool { return sh.Status().Acked >= p2 })
	if !bytes.Equal(rg.replicaImage(t, "primary1"), rg.primaryImage(t)) {
		t.Fatal("replica differs from the primary after the resync")
	}
	if !bytes.Equal(viewBytes(t, cat, p1), at1) {
		t.Fatal("the point from before the resync does not read back exactly")
	}
	if rg.vol.ResyncRequired() {
		t.Fatal("the volume still reports a resync required")
	}
	st := sh.Status()
	r := st.Resync
	if r.Sent == 0 || r.BytesSent >= size/2 || r.Compared != r.Chunks || st.Health != health.Normal {
		t.Fatalf("resync status %+v (health %s: %s): want some chunks sent, far fewer than the disk", r, st.Health, st.Reason)
	}
	bases, err := cat.ResyncBases("primary1/vm1/disk0")
	if err != nil || len(bases) != 1 || bases[0] != r.TargetLSN {
		t.Fatalf("resync bases %v (%v), want [%d]", bases, err, r.TargetLSN)
	}
}

// plant overwrites chunks of the replica image with garbage and returns
// them.
func plant(t *testing.T, rg *rig, chunks []uint64) {
	f, err := os.OpenFile(filepath.Join(rg.data, "primary1", "vm1", "disk0", "image"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, c := range chunks {
		if _, err := f.WriteAt(bytes.Repeat([]byte{0xAB}, 4096), int64(c)*wire.ChunkSize+8192); err != nil {
			t.Fatal(err)
		}
	}
}

// Differences planted in the replica image are found by a verify and
// repaired by a resync asked for by hand; a link cut after the first
// durable mark resumes at that mark and sends none of the chunks before
// it again; the points from before read back exactly throughout.
func TestVerifyAndResumedResync(t *testing.T) {
	const size = 64 << 20 // 1024 chunks: four hash batches
	rg := newResyncRig(t, size)
	rnd := rand.New(rand.NewPCG(8, 8))
	writeSome(t, rg.vol, rnd, 100)
	addr, cat, stop := rg.serveHistory(t, "")
	sh := rg.shipper(t, "primary1", addr, always)
	runJoined(t, sh)
	// A point taken before the initial copy starts is inside it, and no
	// point on the replica.
	waitFor(t, "the initial copy", func() bool { return sh.Status().Initial == 100 })
	p1 := point(t, rg.vol, 1)
	waitFor(t, "point 1", func() bool { return sh.Status().Acked >= p1 && sh.Status().Connected })
	// Point 1 as the replica holds it: with the damage planted below.
	at1 := rg.primaryImage(t)
	stop() // plant while the replica is down
	// Chunks 0..39 make the first durable mark (wire.DurableBytes): the
	// replica makes a mark durable once 2 MiB of chunks wait for it.
	var planted []uint64
	for c := range uint64(40) {
		planted = append(planted, c)
	}
	planted = append(planted, 100, 255, 256, 300, 600, 1023)
	plant(t, rg, planted)
	for _, c := range planted {
		copy(at1[int64(c)*wire.ChunkSize+8192:], bytes.Repeat([]byte{0xAB}, 4096))
	}
	restarted := time.Now()
	addr, cat, stop = rg.serveHistory(t, addr)
	writeSome(t, rg.vol, rnd, 5) // the idle stream notices the restart when it sends
	waitFor(t, "reconnect", func() bool { st := sh.Status(); return st.Connected && st.Since.After(restarted) })
	res, err := sh.Verify(t.Context(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Differing) != len(planted) {
		t.Fatalf("verify found %v, planted %v", res.Differing, planted)
	}
	for i := range planted {
		if res.Differing[i] != planted[i] {
			t.Fatalf("verify found %v, planted %v", res.Differing, planted)
		}
	}
	if r := sh.Status().Resync; r != nil {
		t.Fatalf("a verify started a resync: %+v", r)
	}
	// The link is cut right after the first durable mark.
	cut, checked := make(chan uint64, 1), make(chan struct{})
	marks := 0
	hook := func(next uint64) error {
		marks++
		switch marks {
		case 1:
			cut <- next
			return errors.New("test: link cut")
		case 2: // the resumed session holds here while the test looks
			<-checked
		}
		return nil
	}
	testHookResyncMark.Store(&hook)
	defer testHookResyncMark.Store(nil)
	if err := sh.Resync(true); err != nil {
		t.Fatal(err)
	}
	if err := sh.Resync(true); err != nil && !errors.Is(err, ship.ErrResyncRunning) {
		t.Fatal(err)
	}
	at := <-cut
	// Mid-resync the old point still reads back exactly.
	if !bytes.Equal(viewBytes(t, cat, p1), at1) {
		t.Fatal("point 1 changed during the resync")
	}
	close(checked)
	waitFor(t, "the resync", func() bool { r := sh.Status().Resync; return r != nil && r.State == "done" })
	r := sh.Status().Resync
	var after uint64
	for _, c := range planted {
		if c >= at {
			after++
		}
	}
	if r.Sessions != 2 || r.ResumedAt != at || r.SessionSent != after {
		t.Fatalf("resync %+v: want 2 sessions, the second from chunk %d sending only the %d planted chunks after it", r, at, after)
	}
	last := point(t, rg.vol, 2)
	waitFor(t, "catch-up", func() bool { return sh.Status().Acked >= last })
	if !bytes.Equal(rg.replicaImage(t, "primary1"), rg.primaryImage(t)) {
		t.Fatal("replica differs after the resync")
	}
	res, err = sh.Verify(t.Context(), 0, nil)
	if err != nil || len(res.Differing) != 0 {
		t.Fatalf("verify after the resync: %v, %v", res.Differing, err)
	}
	// Point 1 reads back as the replica held it: with the planted damage,
	// which the resync's history kept.
	if !bytes.Equal(viewBytes(t, cat, p1), at1) {
		t.Fatal("point 1 does not read back as it was after the resync")
	}
}

// A quiet disk takes points that the replica applies while the base stays
// merged through the last write: a resync then targets the newest of
// those points, never an LSN behind the replica's.
func TestResyncAfterPointsOnly(t *testing.T) {
	rg := newResyncRig(t, 8<<20)
	writeSome(t, rg.vol, rand.New(rand.NewPCG(9, 9)), 20)
	addr, _, _ := rg.serveHistory(t, "")
	sh := rg.shipper(t, "primary1", addr, always)
	runJoined(t, sh)
	waitFor(t, "the initial copy", func() bool { return sh.Status().Initial == 100 })
	var last uint64
	for i := range 3 {
		last = point(t, rg.vol, uint64(i+1))
	}
	waitFor(t, "the points", func() bool { return sh.Status().Acked >= last })
	if err := sh.Resync(true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the resync", func() bool { r := sh.Status().Resync; return r != nil && (r.State == "done" || r.State == "failed") })
	if r := sh.Status().Resync; r.State != "done" || r.TargetLSN != last || r.Sent != 0 {
		t.Fatalf("resync %+v: want done at the last point's LSN %d, nothing sent", r, last)
	}
}

// TestResyncPauseIsBounded: a resync keeps the primary's merging paused
// across a cut link, so that it resumes where it stopped; but not without
// end: once the log written since it froze the base passes the overflow
// bound (the replica stays away), merging resumes and the resync starts
// again later from a new checkpoint.
func TestResyncPauseIsBounded(t *testing.T) {
	const size = 64 << 20
	rg := newResyncRig(t, size)
	writeSome(t, rg.vol, rand.New(rand.NewPCG(9, 9)), 50)
	addr, _, stop := rg.serveHistory(t, "")
	sh := rg.shipper(t, "primary1", addr, always)
	runJoined(t, sh)
	waitFor(t, "the initial copy", func() bool { return sh.Status().Initial == 100 && sh.Status().Connected })
	// The replica goes away right after the resync's first durable mark,
	// which 2 MiB of differing chunks make.
	var damaged []uint64
	for c := range uint64(40) {
		damaged = append(damaged, c)
	}
	plant(t, rg, damaged)
	gone := make(chan struct{})
	hook := func(uint64) error {
		select {
		case <-gone:
		default:
			close(gone)
		}
		return errors.New("test: the replica went away")
	}
	testHookResyncMark.Store(&hook)
	defer testHookResyncMark.Store(nil)
	if err := sh.Resync(true); err != nil {
		t.Fatal(err)
	}
	<-gone
	stop()
	// Merging is held for the resync: what was merged before it may be
	// checkpointed, nothing written after it is merged.
	rg.vol.Merge()
	held := rg.vol.Checkpoint()
	p := bytes.Repeat([]byte{0x5C}, 1<<20)
	for i := range 8 {
		rg.vol.WriteAt(p, int64(i)<<20)
	}
	rg.vol.Merge()
	if c := rg.vol.Checkpoint(); c != held {
		t.Fatalf("the checkpoint moved from %d to %d while a resync held merging", held, c)
	}
	// Past the bound (64 MiB of log here), merging resumes by itself.
	for i := range 72 {
		if _, err := rg.vol.WriteAt(p, int64(i%64)<<20); err != nil {
			t.Fatal(err)
		}
	}
	last := rg.vol.Log().LastLSN()
	waitFor(t, "merging to resume", func() bool { rg.vol.Merge(); return rg.vol.Checkpoint() >= last })
}

// A log that overflows while the replica is connected (the link too slow
// for the writes) is resynced in the same session; once done, with nothing
// written since, the shipper counts the resync's target as acknowledged
// (else a quiet disk shows records behind until its next write).
func TestOverflowWhileConnected(t *testing.T) {
	const size = 32 << 20
	rg := newResyncRig(t, size)
	rnd := rand.New(rand.NewPCG(9, 9))
	writeSome(t, rg.vol, rnd, 20)
	addr, cat, _ := rg.serveHistory(t, "")
	px, err := faultnet.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	sh := rg.shipper(t, "primary1", px.Addr(), always)
	runJoined(t, sh)
	// A point taken before the initial copy's checkpoint is inside the
	// copy, not in the catalog (on a busy machine the shipper may start
	// after the point is written and merged).
	waitFor(t, "the initial copy", func() bool { return sh.Status().Initial == 100 })
	p1 := point(t, rg.vol, 1)
	waitFor(t, "point 1 on the replica", func() bool { return sh.Status().Acked >= p1 })
	at1 := rg.primaryImage(t)
	px.Set(faultnet.Fault{Bandwidth: 16 << 10})
	for !rg.vol.ResyncRequired() {
		writeSome(t, rg.vol, rnd, 20)
	}
	px.Set(faultnet.Fault{}) // the link is fast again, and still up
	waitFor(t, "the resync", func() bool { r := sh.Status().Resync; return r != nil && r.State == "done" })
	st := sh.Status()
	if st.Resync.Sessions != 1 || !st.Connected {
		t.Fatalf("resync %+v, connected %v: want it run in the session that saw the overflow", st.Resync, st.Connected)
	}
	target := st.Resync.TargetLSN
	waitFor(t, "the resync's target acknowledged", func() bool { st := sh.Status(); return st.Acked >= target && st.LagRecords == 0 })
	if !bytes.Equal(rg.replicaImage(t, "primary1"), rg.primaryImage(t)) {
		t.Fatal("replica differs from the primary after the resync")
	}
	if !bytes.Equal(viewBytes(t, cat, p1), at1) {
		t.Fatal("the point from before the resync does not read back exactly")
	}
}
