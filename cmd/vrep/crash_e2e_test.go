package main

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/nbdclient"
	"github.com/vrep-io/vrep/internal/wocheck"
)

// TestCrashLoopWriteOrder: a stamped workload writes over NBD with
// flushes; vrep primary is killed with SIGKILL at a random moment (with
// merges of varying size under way); after a restart the disk, read back
// over NBD, must be the disk before the run plus exactly a prefix of the
// run's writes that holds every write acknowledged before the last
// completed flush. VREP_CRASH_ITERATIONS sets the count (make soak);
// VREP_CRASH_QD the requests in flight (default 1: the serial rule; above
// 1 the concurrent rule of wocheck), over VREP_CRASH_CONNS connections.
func TestCrashLoopWriteOrder(t *testing.T) {
	qd := max(envInt(t, "VREP_CRASH_QD", 1), 1)
	conns := envInt(t, "VREP_CRASH_CONNS", min(qd, 2))
	crashLoopWriteOrder(t, envInt(t, "VREP_CRASH_ITERATIONS", 12), qd, max(conns, 1))
}

// TestCrashLoopWriteOrderQD32: the same at queue depth 32 over two
// connections, the way guests write: a few iterations here,
// VREP_CRASH_QD32_ITERATIONS in make soak.
func TestCrashLoopWriteOrderQD32(t *testing.T) {
	crashLoopWriteOrder(t, envInt(t, "VREP_CRASH_QD32_ITERATIONS", 3), 32, 2)
}

func crashLoopWriteOrder(t *testing.T, iterations, qd, conns int) {
	const size = 16 << 20
	const blocks = size / wocheck.BlockSize
	e := newEnv(t, size)
	before := make(wocheck.Image, blocks)
	r := rand.New(rand.NewPCG(1, 2))
	var writes, lost, acked, durable int
	for i := range iterations {
		mergeAfter := []string{"256K", "1M", "4M", "1G"}[r.IntN(4)]
		d := e.start(t, "--merge-after", mergeAfter)
		var cls []*nbdclient.Client
		var devs []wocheck.Device
		for range conns {
			cl, err := nbdclient.Dial("unix", e.sock, "vm1/disk0")
			if err != nil {
				t.Fatal(err)
			}
			cls = append(cls, cl)
			devs = append(devs, cl)
		}
		killed := make(chan struct{})
		delay := time.Duration(50+r.IntN(400)) * time.Millisecond
		go func() {
			time.Sleep(delay)
			d.kill()
			close(killed)
		}()
		w := wocheck.Workload{Disk: 1, Run: uint32(i + 1), Blocks: blocks, Seed: uint64(i), FlushEvery: 8, Depth: qd}
		var h *wocheck.History
		if qd > 1 {
			h = w.WriteConcurrent(context.Background(), devs, 1<<30)
		} else {
			h = w.Write(context.Background(), cls[0], 1<<30)
		}
		<-killed
		for _, cl := range cls {
			cl.Close()
		}

		d = e.start(t)
		after := readBack(t, e, blocks)
		rep := wocheck.Check(before, after, h)
		if !rep.OK() {
			t.Fatalf("iteration %d (QD %d over %d connections, merge after %s, killed after %v): %v:\n%s",
				i, qd, conns, mergeAfter, delay, rep, strings.Join(rep.Violations, "\n"))
		}
		writes += rep.Writes
		var lastFlush time.Time
		for _, op := range h.Ops {
			if op.Flush && op.Result == wocheck.OK && op.Submit.After(lastFlush) {
				lastFlush = op.Submit
			}
		}
		for _, op := range h.Ops {
			if !op.Flush && op.Result == wocheck.OK {
				acked++
				if op.Ack.Before(lastFlush) {
					durable++ // acknowledged and flushed: the check proved it in
				}
				if op.Seq > rep.Highest {
					lost++ // newer than anything in the image: unflushed, lost to the kill
				}
			}
		}
		before = after
		if err := d.stop(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("QD %d over %d connections: %d iterations, %d writes (%d acknowledged, %d of them flushed), 0 violations, 0 acknowledged-and-flushed writes lost, %d acknowledged unflushed writes lost to kill -9",
		qd, conns, iterations, writes, acked, durable, lost)
}

// readBack decodes the whole disk, read over NBD.
func readBack(t *testing.T, e *env, blocks int64) wocheck.Image {
	t.Helper()
	cl, err := nbdclient.Dial("unix", e.sock, "vm1/disk0")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	img, err := wocheck.ReadImage(cl, blocks)
	if err != nil {
		t.Fatal(err)
	}
	return img
}
