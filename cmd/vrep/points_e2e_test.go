package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/waitfor"
)

func TestPointsThroughTheAPI(t *testing.T) {
	need(t, "mkfs.ext4", "losetup", "curl")
	needRoot(t)
	e := newEnv(t, 64<<20)
	img2 := filepath.Join(e.dir, "vm2.img")
	os.WriteFile(img2, nil, 0o600)
	os.Truncate(img2, 16<<20)
	mnt := filepath.Join(e.dir, "fuse")
	ext4 := filepath.Join(e.dir, "ext4")
	os.Mkdir(ext4, 0o755)
	d := e.start(t, "--disk", "vm2/disk0="+img2, "--fuse", mnt, "--freeze", "vm1="+ext4,
		"--points-every", "300ms", "--freeze-timeout", "5s")
	dev := loop(t, filepath.Join(mnt, "vm1", "disk0.img"))
	run(t, "mkfs.ext4", "-q", dev)
	mountFS(t, dev, ext4)
	os.WriteFile(filepath.Join(ext4, "data"), []byte("hello"), 0o644)

	var p primary.PointInfo
	code, out := vrepRun(t, "point", "create", "vm1", "--app", "--state", e.state, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &p) != nil || p.Kind != "app-consistent" || p.LSNs["vm1/disk0"] == 0 {
		t.Fatalf("app point of vm1: exit %d\n%s", code, out)
	}
	// The file system was thawed: it takes writes again.
	if err := os.WriteFile(filepath.Join(ext4, "after"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out = vrepRun(t, "point", "create", "vm2", "--app", "--state", e.state)
	if code != 0 || !strings.Contains(out, "crash-consistent") || !strings.Contains(out, "nothing is configured") {
		t.Fatalf("app point of vm2 (nothing to quiesce): exit %d\n%s", code, out)
	}
	code, out = vrepRun(t, "point", "create", "nope", "--state", e.state)
	if code != exitError || !strings.Contains(out, "no such VM") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Fatalf("point of an unknown VM: exit %d\n%s", code, out)
	}
	checkSchedule(t, e, map[string]string{"vm1": "vm1/disk0", "vm2": "vm2/disk0"}, 300*time.Millisecond, 5)
	var st primary.Status
	code, out = vrepRun(t, "status", "--state", e.state, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Disks) != 2 || len(st.Groups) != 2 ||
		st.LastPoint == nil || st.LastPoint.Kind != "crash-consistent" || st.Disks[0].Health != "Normal" {
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	if code, out = vrepRun(t, "status", "--state", e.state); code != 0 || !strings.Contains(out, "vm1/disk0") {
		t.Fatalf("status table: exit %d\n%s", code, out)
	}
	// Prometheus metrics on the same socket.
	metrics := run(t, "curl", "-s", "--unix-socket", filepath.Join(e.state, "api.sock"), "http://vrep/metrics")
	for _, want := range []string{`vrep_disk_last_lsn{disk="vm1/disk0"}`, `vrep_point_hold_seconds{group="vm1",quantile="0.99"}`, "vrep_last_point_timestamp_seconds"} {
		if !strings.Contains(metrics, want) {
			t.Fatalf("metrics lack %s:\n%s", want, metrics)
		}
	}
	run(t, "umount", ext4)
	exec.Command("losetup", "-d", dev).Run()
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	// The points are markers in the change logs.
	code, out = vrepRun(t, "log-check", filepath.Join(e.state, "disks", "vm2", "disk0"))
	if code != 0 || strings.Contains(out, " 0 points") {
		t.Fatalf("log-check vm2: exit %d\n%s", code, out)
	}
}

// checkSchedule waits until the point schedule has taken at least n
// crash-consistent points of every group in disks (group → its one
// disk), as the daemon's API lists them, and checks them: each belongs to
// a configured group and holds exactly that group's disk, no group gets
// more than a tick's worth over another, and they come at the cadence or
// slower (a slow machine only spaces them out).
func checkSchedule(t *testing.T, e *env, disks map[string]string, every time.Duration, n int) {
	t.Helper()
	api := filepath.Join(e.state, "api.sock")
	var byGroup map[string][]primary.PointInfo
	var out string
	waitfor.True(t, fmt.Sprintf("the schedule to take %d points of each of %d groups", n, len(disks)), func() bool {
		out = run(t, "curl", "-s", "--unix-socket", api, "http://vrep/v1/points")
		var pts []primary.PointInfo
		if err := json.Unmarshal([]byte(out), &pts); err != nil {
			t.Fatalf("GET /v1/points: %v\n%s", err, out)
		}
		byGroup = map[string][]primary.PointInfo{}
		for _, p := range pts {
			// Points asked for by hand in this test are app-consistent or
			// carry the reason they are not.
			if p.Kind == "crash-consistent" && p.Reason == "" {
				byGroup[p.Group] = append(byGroup[p.Group], p)
			}
		}
		for g := range disks {
			if len(byGroup[g]) < n {
				return false
			}
		}
		return true
	})
	counts := map[string]int{}
	for g, pts := range byGroup {
		disk, ok := disks[g]
		if !ok {
			t.Fatalf("the schedule took %d points of group %q, which is not configured:\n%s", len(pts), g, out)
		}
		for _, p := range pts {
			if _, has := p.LSNs[disk]; !has || len(p.LSNs) != 1 {
				t.Fatalf("scheduled point %d of group %s holds %v, want exactly %s", p.ID, g, p.LSNs, disk)
			}
		}
		// A slow take of one group delays the other's in the same tick, and
		// the ticker hands over a missed tick at once: single gaps may be
		// short, but most are the cadence or longer.
		var gaps []time.Duration
		for i := 1; i < len(pts); i++ {
			gaps = append(gaps, pts[i].Time.Sub(pts[i-1].Time))
		}
		slices.Sort(gaps)
		if med := gaps[len(gaps)/2]; med < every/2 {
			t.Fatalf("group %s: scheduled points %v apart (median of %d gaps), want about %v:\n%s", g, med, len(gaps), every, out)
		}
		counts[g] = len(pts)
	}
	lo, hi := math.MaxInt, 0
	for g := range disks {
		lo, hi = min(lo, counts[g]), max(hi, counts[g])
	}
	if hi-lo > 2 {
		t.Fatalf("scheduled points per group %v: every tick takes one of each group", counts)
	}
}
