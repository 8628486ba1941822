package replica

import (
	"bytes"
	"context"
	"errors"
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
	go srv.Serve(l)
	return l.Addr().String(), func() { srv.Close() }
}

func (r *rig) shipper(t *testing.T, name, addr string) *Shipper {
	cfg, err := pki.ClientConfig(r.pkiDir, name, "replica1")
	if err != nil {
		t.Fatal(err)
	}
	return NewShipper("vm1/disk0", r.vol, ShipperConfig{Addr: addr, TLS: cfg, Codec: CodecZstd,
		Backoff: []time.Duration{10 * time.Millisecond, 50 * time.Millisecond}, Poll: 5 * time.Millisecond, Log: quiet()})
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
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go sh.Run(ctx)
	writeSome(t, rg.vol, rnd, 300) // during the initial copy and after
	last := rg.vol.Log().LastLSN()
	waitFor(t, "catch-up", func() bool { return sh.Status().Acked >= last })
	if st := sh.Status(); st.Health != Normal || st.Initial != 100 || st.Codec != "zstd" || st.Shipped == 0 ||
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
	waitFor(t, "warning", func() bool { return sh.Status().Health == Warning })
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
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { sh.Run(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(waitfor.Patience):
		t.Fatal("an unauthorized primary kept retrying")
	}
	if st := sh.Status(); st.Health != Critical || st.Acked != 0 {
		t.Fatalf("status %+v", st)
	}
	if _, err := os.Stat(filepath.Join(rg.data, "stranger")); err == nil {
		t.Fatal("something was written for an unauthorized primary")
	}
}

func TestPrimaryReachesOnlyItsRoot(t *testing.T) {
	rg := newRig(t, 4<<20)
	addr, stop := rg.serve(t, "", map[string]string{"primary1": "site-a", "stranger": "site-b"})
	defer stop()
	sh := rg.shipper(t, "primary1", addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go sh.Run(ctx)
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
	go srv.Serve(l)
	defer srv.Close()
	rnd := rand.New(rand.NewPCG(5, 5))
	writeSome(t, rg.vol, rnd, 50)
	sh := rg.shipper(t, "primary1", l.Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go sh.Run(ctx)
	waitFor(t, "a retry", func() bool { return sh.Status().Health == Warning })
	waitFor(t, "several retries", func() bool { return injected.Load() >= 4 })
	if st := sh.Status(); st.Health == Critical {
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
		go srv.Serve(l)
		sh := rg.shipper(t, "primary1", l.Addr().String())
		sh.cfg.Keepalive = keepalive
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { sh.Run(ctx); close(done) }()
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
		srv.Close()
		opens := logs.count("replica: stream open")
		if keepalive < time.Second && opens != 1 {
			t.Fatalf("with keepalives: %d streams opened, want 1", opens)
		}
		if keepalive > time.Second && opens < 2 {
			t.Fatalf("without keepalives the idle stream was never dropped (%d opens)", opens)
		}
	}
}
