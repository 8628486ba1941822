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
// completed flush. VREP_CRASH_ITERATIONS sets the count (make soak).
func TestCrashLoopWriteOrder(t *testing.T) {
	iterations := envInt(t, "VREP_CRASH_ITERATIONS", 12)
	const size = 16 << 20
	const blocks = size / wocheck.BlockSize
	e := newEnv(t, size)
	before := make(wocheck.Image, blocks)
	r := rand.New(rand.NewPCG(1, 2))
	var writes, lost, acked int
	for i := range iterations {
		mergeAfter := []string{"256K", "1M", "4M", "1G"}[r.IntN(4)]
		d := e.start(t, "--merge-after", mergeAfter)
		cl, err := nbdclient.Dial("unix", e.sock, "vm1/disk0")
		if err != nil {
			t.Fatal(err)
		}
		killed := make(chan struct{})
		delay := time.Duration(50+r.IntN(400)) * time.Millisecond
		go func() {
			time.Sleep(delay)
			d.kill()
			close(killed)
		}()
		w := wocheck.Workload{Disk: 1, Run: uint32(i + 1), Blocks: blocks, Seed: uint64(i), FlushEvery: 8}
		h := w.Write(context.Background(), cl, 1<<30)
		<-killed
		cl.Close()

		d = e.start(t)
		after := readBack(t, e, blocks)
		rep := wocheck.CheckSerial(before, after, h)
		if !rep.OK() {
			t.Fatalf("iteration %d (merge after %s, killed after %v): %d writes, newest in image %d, flushed %d:\n%s",
				i, mergeAfter, delay, rep.Writes, rep.Highest, rep.Required, strings.Join(rep.Violations, "\n"))
		}
		writes += rep.Writes
		lost += rep.Writes - int(rep.Highest)
		for _, op := range h.Ops {
			if !op.Flush && op.Result == wocheck.OK {
				acked++
			}
		}
		before = after
		if err := d.stop(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d iterations, %d writes (%d acknowledged), %d unflushed writes lost to kill -9, 0 violations", iterations, writes, acked, lost)
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
