package main

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/nbdclient"
	"github.com/vrep-io/vrep/internal/wocheck"
)

// TestFaultPointCrashes: each named fault point in the code (log written
// but not synced, synced but not acknowledged, a batch before it is sent,
// an ack before the log is released, undo durable before the index,
// history committed before the image, the image synced before the applied
// LSN is published, points pruned before their history) kills the daemon
// it lives in, at a random pass, while a stamped workload writes and the
// primary takes a point every 100 ms. After each crash the daemon
// restarts; the primary is checked by the write-order checker, the
// replica's points through test failovers; no crash may force a full
// copy, and the replica converges to the primary. VREP_FAULTPOINT_ROUNDS
// sets how many times every point is visited (make soak).
func TestFaultPointCrashes(t *testing.T) {
	need(t, "qemu-img")
	rounds := envInt(t, "VREP_FAULTPOINT_ROUNDS", 1)
	const size = 16 << 20
	const blocks = size / wocheck.BlockSize
	e := newEnv(t, size)
	pkiDir, addr := replicationSetup(t, e)
	args := replicaFlags(addr, pkiDir, "--retry-schedule", "50ms,100ms", "--merge-after", "1M", "--points-every", "100ms")
	repSock := filepath.Join(e.dir, "replica-nbd.sock")
	repData := filepath.Join(e.dir, "replica")
	repArgs := []string{"--nbd", "unix:" + repSock, "--retention", "1s", "--prune-every", "150ms"}
	killReplica, repDone := startReplicaEnv(t, nil, e.dir, pkiDir, addr, repArgs...)
	d := e.start(t, args...)
	waitReplicated(t, e)
	r := rand.New(rand.NewPCG(5, 6))
	runs := newRuns(t, blocks, repData, repSock, r)
	onReplica := map[string]bool{faultpoint.ApplyBeforeIndex: true, faultpoint.ApplyBeforeImage: true,
		faultpoint.ApplyBeforeState: true, faultpoint.PruneBetweenDelete: true}
	hits := map[string]int{}
	initialCopies, iter := 0, 0
	for range rounds {
		for _, fp := range faultpoint.All {
			armed := []string{"VREP_FAULTPOINT=" + fp + ":" + strconv.Itoa(1+r.IntN(20))}
			if onReplica[fp] {
				killReplica()
				killReplica, repDone = startReplicaEnv(t, armed, e.dir, pkiDir, addr, repArgs...)
			} else {
				d.kill()
				initialCopies += strings.Count(d.stderr.String(), "initial replication started")
				e.daemonEnv = armed
				d = e.start(t, args...)
				e.daemonEnv = nil
			}
			cl, err := nbdclient.Dial("unix", e.sock, "vm1/disk0")
			if err != nil && onReplica[fp] {
				t.Fatal(err)
			}
			// The workload writes at most 2,000 times (the log must stay
			// within its bound while the replica is down or slow), then
			// the points every 100 ms keep both daemons busy until the
			// armed one dies, or 10 s pass.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if onReplica[fp] {
				go func(done <-chan struct{}) {
					select {
					case <-done:
					case <-ctx.Done():
					}
					cancel()
				}(repDone)
			}
			w := wocheck.Workload{Disk: 1, Run: uint32(iter + 1), Blocks: blocks, Seed: uint64(iter), FlushEvery: 8}
			start := time.Now()
			h := &wocheck.History{Disk: w.Disk, Run: w.Run}
			if cl != nil { // else the armed primary died at start
				h = w.Write(ctx, cl, 2000)
				cl.Close()
			}
			var hit bool
			if onReplica[fp] {
				select {
				case <-repDone:
					hit = true
				case <-ctx.Done():
					select {
					case <-repDone:
						hit = true
					default:
					}
				}
				killReplica()
				killReplica, repDone = startReplicaEnv(t, nil, e.dir, pkiDir, addr, repArgs...)
			} else {
				deadline, _ := ctx.Deadline()
				hit = d.exitedWithin(time.Until(deadline))
				d.kill()
				initialCopies += strings.Count(d.stderr.String(), "initial replication started")
				d = e.start(t, args...)
			}
			cancel()
			stop := time.Now()
			if hit {
				hits[fp]++
			}
			runs.add(h, start, stop, !onReplica[fp], readBack(t, e, blocks), "fault point "+fp)
			runs.checkPoints(2)
			iter++
			if iter%4 == 0 {
				waitReplicated(t, e)
			}
		}
	}
	waitReplicated(t, e)
	runs.checkPoints(1 << 20)
	for _, fp := range faultpoint.All {
		if hits[fp] == 0 {
			t.Errorf("fault point %s was never reached", fp)
		}
	}
	initialCopies += strings.Count(d.stderr.String(), "initial replication started")
	if initialCopies != 1 {
		t.Fatalf("%d initial copies: a crash forced a full copy", initialCopies)
	}
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", e.img, filepath.Join(repData, "primary1", "vm1", "disk0", "image"))
	t.Logf("%d crashes at fault points (hits %v), 1 initial copy, replica equal to the primary, 0 write-order violations, %d points checked",
		iter, hits, runs.pointsChecked)
}
