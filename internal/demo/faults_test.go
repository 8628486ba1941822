package demo

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/faultnet"
	"github.com/vrep-io/vrep/internal/nbdclient"
	"github.com/vrep-io/vrep/internal/waitfor"
	"github.com/vrep-io/vrep/internal/wocheck"
)

// The network faults between primary and replica (TESTING.md): each
// cell sets a fault in one phase of replication, heals it, and verifies
// the replica converges to the primary and, in the points phase, that
// every point taken under the fault reads back as a prefix of the
// acknowledged writes.
var faults = []struct {
	name  string
	fault faultnet.Fault
}{
	{"blackhole", faultnet.Fault{Blackhole: true}},
	{"reset-mid-frame", faultnet.Fault{ResetAfter: 70_001}},
	{"latency-jitter", faultnet.Fault{Latency: 15 * time.Millisecond, Jitter: 10 * time.Millisecond}},
	{"bandwidth-1MiBps", faultnet.Fault{Bandwidth: 1 << 20}},
	{"1-byte-slices", faultnet.Fault{Slice: 1}},
	{"half-open", faultnet.Fault{HalfOpen: true}},
	{"bit-flip", faultnet.Fault{FlipAt: 9_000}},
}

const (
	faultDisk  = 8 << 20
	faultBlock = wocheck.BlockSize
)

func TestNetworkFaults(t *testing.T) {
	for _, phase := range []string{"initial", "deltas", "points"} {
		for _, f := range faults {
			t.Run(phase+"/"+f.name, func(t *testing.T) {
				t.Parallel()
				faultCell(t, phase, f.fault)
			})
		}
	}
}

func faultCell(t *testing.T, phase string, fault faultnet.Fault) {
	dir, err := os.MkdirTemp("/tmp", "vrep-fault")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var proxy *faultnet.Proxy
	cfg := PairConfig{
		Via: func(addr string) (string, error) {
			var err error
			proxy, err = faultnet.Listen(addr)
			if err == nil && phase == "initial" {
				proxy.Set(fault) // from the first byte of the initial copy
			}
			if err != nil {
				return "", err
			}
			return proxy.Addr(), nil
		},
		Timeout: 700 * time.Millisecond,
		Backoff: []time.Duration{20 * time.Millisecond, 50 * time.Millisecond},
		Prepare: func(path string) error { // data before protection: the initial copy carries it
			b := make([]byte, faultDisk)
			rand.Read(b[:faultDisk/2])
			return os.WriteFile(path, b, 0o600)
		},
	}
	var logw io.Writer = io.Discard
	if os.Getenv("VREP_FAULT_LOG") != "" {
		logw = os.Stderr
	}
	p, err := StartPair(dir, []string{"vm1/disk0"}, faultDisk, slog.New(slog.NewTextHandler(logw, nil)), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	defer proxy.Close()
	ctx := context.Background()
	cl, err := nbdclient.Dial("unix", p.PrimaryNBD, "vm1/disk0")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	before, err := wocheck.ReadImage(cl, faultDisk/faultBlock)
	if err != nil {
		t.Fatal(err)
	}
	var h *wocheck.History
	type taken struct {
		id uint64
		at time.Time
	}
	var points []taken
	// hit reports whether traffic ran into the fault.
	hit := func() bool {
		ps := proxy.Stats()
		return ps.Swallowed > 0 && (fault.Blackhole || fault.HalfOpen) || ps.Resets > 0 && fault.ResetAfter > 0 ||
			ps.Flips > 0 && fault.FlipAt > 0 || ps.Delayed > 0 && (fault.Latency > 0 || fault.Bandwidth > 0 || fault.Slice > 0)
	}
	switch phase {
	case "initial":
		waitfor.True(t, "the initial copy to run into the fault", hit)
	case "deltas", "points":
		if err := p.WaitReplicated(ctx, waitfor.Patience); err != nil {
			t.Fatal(err)
		}
		proxy.Set(fault)
		w := wocheck.Workload{Disk: 1, Run: 1, Blocks: faultDisk / faultBlock, Seed: 1, FlushEvery: 10}
		// The workload writes for a second, and on until its traffic
		// has run into the fault, however slowly a busy machine writes.
		wctx, cancel := context.WithTimeout(ctx, waitfor.Patience)
		go func() {
			<-time.After(time.Second)
			for wctx.Err() == nil && !hit() {
				time.Sleep(5 * time.Millisecond)
			}
			cancel()
		}()
		done := make(chan *wocheck.History)
		// At most 1,500 writes (about 15 MB): a fault that stops traffic
		// must not hold back more than the log's overflow bound (64 MiB
		// here), past which the design is a resync.
		go func() { done <- w.Write(wctx, cl, 1500) }()
		if phase == "points" {
			for range 4 {
				time.Sleep(200 * time.Millisecond)
				pt, err := p.Primary.TakePoint(ctx, "vm1", false)
				if err != nil {
					t.Fatal(err)
				}
				points = append(points, taken{pt.ID, pt.Time})
			}
		}
		h = <-done
		cancel()
	}
	// The fault bit: it was hit, and a fault that stops traffic held the
	// replica back until healed.
	if phase != "initial" {
		// The workload may have ended (1,500 writes) before its traffic
		// reached the fault; the shipper still carries it there.
		waitfor.True(t, "the workload's traffic to run into the fault", hit)
	}
	st := p.Primary.Status().Disks[0]
	if stops := fault.Blackhole || fault.HalfOpen || fault.ResetAfter > 0 || fault.FlipAt > 0; stops {
		if r := st.Replication; phase == "initial" && r.Initial == 100 || phase != "initial" && r.Acked >= st.LastLSN {
			t.Fatalf("the replica caught up through a fault that stops traffic: %+v", r)
		}
	}
	proxy.Heal()
	if err := p.WaitReplicated(ctx, waitfor.Patience); err != nil {
		t.Fatal(err)
	}
	// The replica equals the primary.
	want := make([]byte, faultDisk)
	if _, err := cl.ReadAt(want, 0); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "replica", "primary", "vm1", "disk0", "image"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("after healing, the replica image differs from the primary disk")
	}
	if st := p.Primary.Status().Disks[0].Replication; st.Health != "Normal" {
		t.Fatalf("health after healing: %s %s", st.Health, st.Reason)
	}
	// Every point taken under the fault is on the replica, and reads back
	// as a prefix of the acknowledged writes.
	for _, pt := range points {
		vp, err := p.Replica.Points("vm1")
		if err != nil {
			t.Fatal(err)
		}
		var lsn uint64
		for _, q := range vp {
			if q.ID == pt.id {
				lsn = q.LSNs["vm1/disk0"]
			}
		}
		if lsn == 0 {
			t.Fatalf("point %d taken under the fault never reached the replica", pt.id)
		}
		v, err := p.Replica.Catalog.OpenView("primary/vm1/disk0", lsn)
		if err != nil {
			t.Fatal(err)
		}
		img, err := wocheck.ReadImage(v, faultDisk/faultBlock)
		v.Close()
		if err != nil {
			t.Fatal(err)
		}
		if rep := wocheck.CheckPoint(before, img, h, pt.at); !rep.OK() {
			t.Fatalf("point %d: %s", pt.id, strings.Join(rep.Violations, "\n"))
		}
	}
}
