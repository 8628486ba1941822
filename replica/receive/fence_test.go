package receive

import (
	"math/rand/v2"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vrep-io/vrep/internal/pki"
	"github.com/vrep-io/vrep/replica/health"
	"github.com/vrep-io/vrep/replica/ship"
)

// TestFenceSupersedes: once the replica fences a VM (it failed over
// there), the stream open now is closed and every new one is refused
// with CodeSuperseded: the shipper stops in Critical with the replica's
// reason and tells its caller (who fences the disk), and nothing more is
// applied. Unfence accepts the stream again.
func TestFenceSupersedes(t *testing.T) {
	rg := newRig(t, 4<<20)
	cfg, err := pki.ServerConfig(rg.pkiDir, "replica1")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(ServerConfig{Data: rg.data, TLS: cfg, Allow: map[string]string{"primary1": ""}, Log: quiet()})
	serveJoined(t, srv, l)
	var told atomic.Pointer[string]
	sh := rg.shipper(t, "primary1", l.Addr().String(), func(c *ship.ShipperConfig) {
		c.OnSuperseded = func(msg string) { told.Store(&msg) }
	})
	runJoined(t, sh)
	rnd := rand.New(rand.NewPCG(3, 3))
	writeSome(t, rg.vol, rnd, 20)
	last := rg.vol.Log().LastLSN()
	waitFor(t, "catch-up", func() bool { return sh.Status().Acked >= last })
	why := "superseded: VM vm1 failed over to replica1 (generation 2) at 2026-11-30T10:00:00Z"
	srv.Fence("primary1", "vm1", why)
	before := rg.replicaImage(t, "primary1")
	writeSome(t, rg.vol, rnd, 20)
	waitFor(t, "Critical", func() bool { return sh.Status().Health == health.Critical })
	if st := sh.Status(); !strings.Contains(st.Reason, why) {
		t.Fatalf("status reason %q does not name the failover", st.Reason)
	}
	if p := told.Load(); p == nil || *p != why {
		t.Fatalf("OnSuperseded told %v", p)
	}
	if string(rg.replicaImage(t, "primary1")) != string(before) {
		t.Fatal("records were applied to a fenced VM's disk")
	}
	srv.Unfence("primary1", "vm1")
	sh.Resume()
	last = rg.vol.Log().LastLSN()
	waitFor(t, "catch-up after the unfence", func() bool { return sh.Status().Acked >= last })
}
