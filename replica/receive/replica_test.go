package receive

import (
	"bytes"
	"context"
	"errors"
	"github.com/vrep-io/vrep/replica/health"
	"github.com/vrep-io/vrep/replica/ship"
	"github.com/vrep-io/vrep/replica/wire"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/blockdev/tracked"
	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/pki"
	"github.com/vrep-io/vrep/internal/vfs"
	"github.com/vrep-io/vrep/internal/waitfor"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type rig struct {
	pkiDir, data string
	vol          *tracked.Volume
	base         *blockdev.File
}

func newRig(t *testing.T, size int64) *rig {
	dir := t.TempDir()
	r := &rig{pkiDir: filepath.Join(dir, "pki"), data: filepath.Join(dir, "replica")}
	pki.InitCA(r.pkiDir)
	for _, n := range []string{"replica1", "primary1", "stranger"} {
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
	v, err := tracked.Open(filepath.Join(dir, "state"), base, tracked.Options{Retain: true, MergeAfter: 256 << 10, MergeIdle: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r.vol, r.base = v, base
	t.Cleanup(func() { v.Close(); base.Close() })
	return r
}

// serve starts a replica on a loopback port and returns its address and
// a stop function.
func (r *rig) serve(t *testing.T, addr string, allow map[string]string) (string, func()) {
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
	srv := NewServer(ServerConfig{Data: r.data, TLS: cfg, Allow: allow, Log: quiet()})
	return l.Addr().String(), serveJoined(t, srv, l)
}

// serveJoined runs srv.Serve(l) and returns a stop function that closes
// the server and waits for Serve to return; the test's cleanup calls it
// too, so no accept loop outlives its test.
func serveJoined(t testing.TB, srv *Server, l net.Listener) func() {
	done := make(chan struct{})
	go func() { srv.Serve(l); close(done) }()
	var once sync.Once
	stop := func() { once.Do(func() { srv.Close(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// runJoined runs sh until the test ends (or the returned wait's ctx is
// cancelled) and joins it in the test's cleanup. The returned channel is
// closed when Run has returned.
func runJoined(t testing.TB, sh *ship.Shipper) (context.CancelFunc, <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { sh.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return cancel, done
}

func (r *rig) shipper(t testing.TB, name, addr string, opts ...func(*ship.ShipperConfig)) *ship.Shipper {
	cfg, err := pki.ClientConfig(r.pkiDir, name, "replica1")
	if err != nil {
		t.Fatal(err)
	}
	sc := ship.ShipperConfig{Addr: addr, TLS: cfg, Codec: wire.CodecZstd,
		Backoff: []time.Duration{10 * time.Millisecond, 50 * time.Millisecond}, Poll: 5 * time.Millisecond, Log: quiet()}
	for _, o := range opts {
		o(&sc)
	}
	return ship.NewShipper("vm1/disk0", r.vol, sc)
}

func writeSome(t *testing.T, v *tracked.Volume, r *rand.Rand, n int) {
	for range n {
		size := 4096 * (1 + r.IntN(8))
		off := r.Int64N(v.Size()/4096-8) * 4096
		p := make([]byte, size)
		for i := range p {
			p[i] = byte(r.Uint32() % 7) // compressible, like real data
		}
		if _, err := v.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitfor.True(t, what, cond)
}

func (r *rig) replicaImage(t *testing.T, root string) []byte {
	b, err := os.ReadFile(filepath.Join(r.data, root, "vm1", "disk0", "image"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (r *rig) primaryImage(t *testing.T) []byte {
	b := make([]byte, r.vol.Size())
	if _, err := r.vol.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReplicateConvergesAcrossRestarts(t *testing.T) {
	rg := newRig(t, 32<<20)
	rnd := rand.New(rand.NewPCG(1, 1))
	writeSome(t, rg.vol, rnd, 200) // before protection: goes in the initial copy
	rg.vol.Merge()
	addr, stop := rg.serve(t, "", map[string]string{"primary1": ""})
	sh := rg.shipper(t, "primary1", addr)
	runJoined(t, sh)
	writeSome(t, rg.vol, rnd, 300) // during the initial copy and after
	last := rg.vol.Log().LastLSN()
	waitFor(t, "catch-up", func() bool { return sh.Status().Acked >= last })
	if st := sh.Status(); st.Health != health.Normal || st.Initial != 100 || st.Codec != "zstd" || st.Shipped == 0 ||
		st.WireSent == 0 || st.WireSent > st.Shipped {
		t.Fatalf("status %+v (compressible records must cost fewer wire bytes)", st)
	}
	if !bytes.Equal(rg.replicaImage(t, "primary1"), rg.primaryImage(t)) {
		t.Fatal("replica differs from the primary after catch-up")
	}
	// The replica goes away; writes go on; it comes back on the same
	// address; the shipper retries and resumes from the acked LSN.
	stop()
	writeSome(t, rg.vol, rnd, 200)
	waitFor(t, "warning", func() bool { return sh.Status().Health == health.Warning })
	_, stop = rg.serve(t, addr, map[string]string{"primary1": ""})
	defer stop()
	last = rg.vol.Log().LastLSN()
	waitFor(t, "catch-up after the replica restarted", func() bool { return sh.Status().Acked >= last })
	if !bytes.Equal(rg.replicaImage(t, "primary1"), rg.primaryImage(t)) {
		t.Fatal("replica differs from the primary after resuming")
	}
	// Shipped and merged segments are released.
	if n := len(rg.vol.Log().Segments()); n > 4 {
		t.Errorf("%d segments kept after everything was acknowledged", n)
	}
}

func TestUnauthorizedPrimaryIsCritical(t *testing.T) {
	rg := newRig(t, 4<<20)
	addr, stop := rg.serve(t, "", map[string]string{"primary1": ""})
	defer stop()
	sh := rg.shipper(t, "stranger", addr)
	cancel, done := runJoined(t, sh)
	// It stops in Critical and waits for the operator (Resume), without
	// retrying.
	waitFor(t, "Critical", func() bool { return sh.Status().Health == health.Critical })
	if st := sh.Status(); st.Acked != 0 || st.Connected || !st.NextSend.IsZero() || !strings.Contains(st.Reason, "replication resume") {
		t.Fatalf("status %+v", st)
	}
	// Resume retries at once: refused again, Critical again.
	if was := sh.Resume(); was != "stopped" {
		t.Fatalf("Resume of a stopped shipper says %q", was)
	}
	waitFor(t, "Critical after the resume", func() bool { return sh.Status().Health == health.Critical })
	cancel()
	<-done
	if _, err := os.Stat(filepath.Join(rg.data, "stranger")); err == nil {
		t.Fatal("something was written for an unauthorized primary")
	}
}

func TestPrimaryReachesOnlyItsRoot(t *testing.T) {
	rg := newRig(t, 4<<20)
	addr, stop := rg.serve(t, "", map[string]string{"primary1": "site-a", "stranger": "site-b"})
	defer stop()
	sh := rg.shipper(t, "primary1", addr)
	runJoined(t, sh)
	writeSome(t, rg.vol, rand.New(rand.NewPCG(2, 2)), 20)
	last := rg.vol.Log().LastLSN()
	waitFor(t, "catch-up", func() bool { return sh.Status().Acked >= last })
	if _, err := os.Stat(filepath.Join(rg.data, "site-a", "vm1", "disk0", "image")); err != nil {
		t.Fatalf("primary1's disk is not under its root: %v", err)
	}
	if _, err := os.Stat(filepath.Join(rg.data, "site-b")); err == nil {
		t.Fatal("primary1 wrote into another primary's root")
	}
}

// TestReplicaIOErrorIsRetried: an I/O error on the replica (a full disk,
// say) is the replica's trouble, not the primary's: the primary retries
// in Warning, never Critical, and converges once the fault clears.
func TestReplicaIOErrorIsRetried(t *testing.T) {
	rg := newRig(t, 4<<20)
	cfg, _ := pki.ServerConfig(rg.pkiDir, "replica1")
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := NewServer(ServerConfig{Data: "/data", TLS: cfg, Allow: map[string]string{"primary1": ""}, Log: quiet()})
	mem := vfs.NewMem(1)
	var failing atomic.Bool
	var injected atomic.Int32
	failing.Store(true)
	mem.Inject = func(op, name string) error {
		if failing.Load() && op == "write" && filepath.Base(name) == "image" {
			injected.Add(1)
			return errors.New("injected ENOSPC")
		}
		return nil
	}
	srv.fs = mem
	serveJoined(t, srv, l)
	rnd := rand.New(rand.NewPCG(5, 5))
	writeSome(t, rg.vol, rnd, 50)
	sh := rg.shipper(t, "primary1", l.Addr().String())
	runJoined(t, sh)
	waitFor(t, "a retry", func() bool { return sh.Status().Health == health.Warning })
	waitFor(t, "several retries", func() bool { return injected.Load() >= 4 })
	if st := sh.Status(); st.Health == health.Critical {
		t.Fatalf("an I/O error on the replica stopped replication: %+v", st)
	}
	failing.Store(false)
	last := rg.vol.Log().LastLSN()
	waitFor(t, "catch-up after the fault cleared", func() bool { return sh.Status().Acked >= last })
	got, err := vfs.ReadFile(mem, "/data/primary1/vm1/disk0/image")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, rg.primaryImage(t)) {
		t.Fatal("replica differs from the primary after the fault cleared")
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// TestIdleStreamKeptAlive: a replica gives up on a stream silent past its
// idle timeout; a primary with nothing to ship sends keepalives, so a
// long copy interval keeps its one stream open.
func TestIdleStreamKeptAlive(t *testing.T) {
	for _, keepalive := range []time.Duration{100 * time.Millisecond, time.Hour} {
		rg := newRig(t, 8<<20)
		cfg, err := pki.ServerConfig(rg.pkiDir, "replica1")
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var logs lockedBuffer
		const idle = time.Second // ten keepalives: a busy machine may delay a few
		srv := NewServer(ServerConfig{Data: rg.data, TLS: cfg, Allow: map[string]string{"primary1": ""},
			IdleTimeout: idle, Log: slog.New(slog.NewTextHandler(&logs, nil))})
		stopSrv := serveJoined(t, srv, l)
		sh := rg.shipper(t, "primary1", l.Addr().String(), func(c *ship.ShipperConfig) { c.Keepalive = keepalive })
		cancel, done := runJoined(t, sh)
		r := rand.New(rand.NewPCG(1, 1))
		for round := range 2 {
			writeSome(t, rg.vol, r, 20)
			waitFor(t, "the replica to catch up", func() bool { return sh.Status().Acked == rg.vol.Log().LastLSN() })
			if keepalive > time.Second {
				// Silent: the replica drops the stream after its idle timeout.
				waitFor(t, "the replica to drop the silent stream", func() bool { return logs.count("replica: stream closed") > round })
			} else {
				// Kept alive: the stream must outlive three idle timeouts.
				time.Sleep(3 * idle)
			}
		}
		cancel()
		<-done
		stopSrv()
		opens := logs.count("replica: stream open")
		if keepalive < time.Second && opens != 1 {
			t.Fatalf("with keepalives: %d streams opened, want 1", opens)
		}
		if keepalive > time.Second && opens < 2 {
			t.Fatalf("without keepalives the idle stream was never dropped (%d opens)", opens)
		}
	}
}

// A new stream (a restarted primary) whose first batch is a copy
// frequency away: meanwhile its lag in bytes is the log past what the
// replica holds, not the records' share of a segment that also holds
// large writes the replica has.
func TestLagBytesExactBeforeFirstBatch(t *testing.T) {
	rg := newRig(t, 32<<20)
	addr, _ := rg.serve(t, "", map[string]string{"primary1": ""})
	var through atomic.Uint64 // the LSN of the last tick
	interval := func(c *ship.ShipperConfig) {
		c.Through, c.Interval = through.Load, 5*time.Minute
	}
	sh := rg.shipper(t, "primary1", addr, interval)
	cancel, done := runJoined(t, sh)
	waitFor(t, "the initial copy", func() bool { return sh.Status().Initial == 100 })
	big := bytes.Repeat([]byte{0x5a}, 1<<20)
	for i := range 3 {
		if _, err := rg.vol.WriteAt(big, int64(i)<<20); err != nil {
			t.Fatal(err)
		}
	}
	through.Store(rg.vol.Log().LastLSN())
	waitFor(t, "the large writes shipped", func() bool { return sh.Status().Acked == through.Load() })
	cancel()
	<-done
	small := bytes.Repeat([]byte{0xa5}, 4096)
	for i := range 256 {
		if _, err := rg.vol.WriteAt(small, 8<<20+int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(rg.vol.Log().Segments()); n != 1 {
		t.Fatalf("the log has %d segments: the test needs the large and the small writes in one", n)
	}
	sh = rg.shipper(t, "primary1", addr, interval)
	runJoined(t, sh)
	waitFor(t, "the new stream", func() bool { st := sh.Status(); return st.Connected && st.Acked == through.Load() })
	// The records, their headers, and a page for the log's sync records.
	if st := sh.Status(); st.LagBytes < 1<<20 || st.LagBytes > 1<<20+256*hrl.RecHeaderSize+4096 {
		t.Fatalf("lag %d bytes with 256 records of 4 KiB after what the replica holds", st.LagBytes)
	}
}
