package main

import (
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/nbdclient"
	"github.com/vrep-io/vrep/internal/replicad"
	"github.com/vrep-io/vrep/internal/wocheck"
)

// runs is what a crash loop's workload runs did, for checking the primary
// after each restart and the replica's points at any time. Run i wrote
// hists[i] over befores[i] from starts[i] until stops[i]; from then until
// starts[i+1] the disk was befores[i+1] (or, if the primary lived on,
// still befores[i] plus a prefix of hists[i]).
type runs struct {
	t                         *testing.T
	blocks                    int64
	repData, repSock          string
	r                         *rand.Rand
	befores                   []wocheck.Image
	hists                     []*wocheck.History
	starts, stops             []time.Time
	primaryDied               []bool
	pointsChecked, pointsGone int
}

func newRuns(t *testing.T, blocks int64, repData, repSock string, r *rand.Rand) *runs {
	return &runs{t: t, blocks: blocks, repData: repData, repSock: repSock, r: r,
		befores: []wocheck.Image{make(wocheck.Image, blocks)}}
}

// add records a finished run and checks the primary's disk after it (read
// back after any restart) with the write-order checker.
func (rs *runs) add(h *wocheck.History, start, stop time.Time, primaryDied bool, after wocheck.Image, what string) {
	rs.t.Helper()
	i := len(rs.hists)
	if rep := wocheck.Check(rs.befores[i], after, h); !rep.OK() { // the rule of h's queue depth
		rs.t.Fatalf("run %d (%s): %s", i, what, strings.Join(rep.Violations, "\n"))
	}
	rs.hists = append(rs.hists, h)
	rs.starts = append(rs.starts, start)
	rs.stops = append(rs.stops, stop)
	rs.primaryDied = append(rs.primaryDied, primaryDied)
	rs.befores = append(rs.befores, after)
}

// checkPoints reads up to max of the replica's points through test
// failovers and checks each is a prefix of the acknowledged writes.
func (rs *runs) checkPoints(max int) {
	t := rs.t
	t.Helper()
	var pts []replicad.VMPoint
	code, out := vrepRun(t, "points", "vm1", "--data", rs.repData, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &pts) != nil {
		t.Fatalf("vrep points: %d %s", code, out)
	}
	rs.r.Shuffle(len(pts), func(i, j int) { pts[i], pts[j] = pts[j], pts[i] })
	for _, p := range pts[:min(max, len(pts))] {
		code, out := vrepRun(t, "failover", "test", "vm1", "--point", strconv.FormatUint(p.ID, 10), "--data", rs.repData)
		if code != 0 {
			if strings.Contains(out, "no point") || strings.Contains(out, "no such point") {
				rs.pointsGone++ // pruned in between
				continue
			}
			t.Fatalf("vrep failover test: %d %s", code, out)
		}
		cl, err := nbdclient.Dial("unix", rs.repSock, "vm1/disk0-test")
		if err != nil {
			t.Fatal(err)
		}
		img, err := wocheck.ReadImage(cl, rs.blocks)
		cl.Close()
		if err != nil {
			t.Fatal(err)
		}
		if code, out := vrepRun(t, "failover", "test-stop", "vm1", "--data", rs.repData); code != 0 {
			t.Fatalf("vrep failover test-stop: %d %s", code, out)
		}
		i := len(rs.starts) - 1
		for i >= 0 && rs.starts[i].After(p.Time) {
			i--
		}
		var rep wocheck.Report
		switch {
		case i >= 0 && (p.Time.Before(rs.stops[i]) || !rs.primaryDied[i]):
			// During run i, or after it on a primary that lived on (a
			// write in flight when the client hung up may land).
			rep = wocheck.CheckAt(rs.befores[i], img, rs.hists[i], p.Time)
		default: // after a restart, before the next run: the disk was still
			rep = wocheck.CheckPoint(rs.befores[i+1], img, &wocheck.History{}, p.Time)
		}
		if !rep.OK() {
			t.Fatalf("point %d (%s, run %d): %s", p.ID, p.Time.Format("15:04:05.000"), i, strings.Join(rep.Violations, "\n"))
		}
		rs.pointsChecked++
	}
}
