package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/replicad"
	"github.com/vrep-io/vrep/internal/waitfor"
)

// TestAppPointTestFailover: an ext4 on a FUSE-served disk, replicated; a
// writer appends records and fsyncs each while an app-consistent point
// is taken. On the replica, the point is listed as app-consistent; a test
// failover serves it as a file that passes fsck.ext4 -n, mounts, and
// holds every record fsynced before the point was asked for. What the
// test writes is discarded when it stops; errors are one sentence with
// the right exit code.
func TestAppPointTestFailover(t *testing.T) {
	need(t, "mkfs.ext4", "fsck.ext4", "losetup", "qemu-img")
	needRoot(t)
	e := newEnv(t, 64<<20)
	pkiDir, addr := replicationSetup(t, e)
	repData := filepath.Join(e.dir, "replica")
	repFuse := filepath.Join(e.dir, "rfuse")
	repSock := filepath.Join(e.dir, "r.sock")
	startReplica(t, e.dir, pkiDir, addr, "--nbd", "unix:"+repSock, "--fuse", repFuse)
	t.Cleanup(func() { exec.Command("umount", "-l", repFuse).Run() })
	mnt := filepath.Join(e.dir, "fuse")
	ext4 := filepath.Join(e.dir, "ext4")
	os.Mkdir(ext4, 0o755)
	d := e.start(t, replicaFlags(addr, pkiDir, "--fuse", mnt, "--freeze", "vm1="+ext4, "--freeze-timeout", "5s")...)
	dev := loop(t, filepath.Join(mnt, "vm1", "disk0.img"))
	run(t, "mkfs.ext4", "-q", dev)
	mountFS(t, dev, ext4)

	// The writer: records appended and fsynced one by one.
	f, err := os.OpenFile(filepath.Join(ext4, "journal.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	synced := 0
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		for n := 1; ctx.Err() == nil; n++ {
			if _, err := fmt.Fprintf(f, "record %d\n", n); err != nil {
				done <- err
				return
			}
			if err := f.Sync(); err != nil {
				done <- err
				return
			}
			mu.Lock()
			synced = n
			mu.Unlock()
		}
		done <- nil
	}()
	// progress waits until the writer has fsynced more than n records.
	progress := func(n int, what string) int {
		var now int
		waitfor.True(t, what, func() bool {
			select {
			case err := <-done:
				t.Fatalf("the writer stopped: %v", err)
			default:
			}
			mu.Lock()
			defer mu.Unlock()
			now = synced
			return now > n
		})
		return now
	}
	before := progress(10, "the writer to fsync 10 records")
	var p primary.PointInfo
	code, out := vrepRun(t, "point", "create", "vm1", "--app", "--state", e.state, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &p) != nil || p.Kind != "app-consistent" {
		t.Fatalf("app point: exit %d\n%s", code, out)
	}
	mu.Lock()
	atPoint := synced
	mu.Unlock()
	progress(atPoint+5, "the writer to go on after the thaw") // the file system was thawed
	stop()
	if err := <-done; err != nil {
		t.Fatalf("the writer failed (the file system stayed frozen?): %v", err)
	}
	f.Close()
	waitReplicated(t, e)

	// The replica lists the point.
	var pts []replicad.VMPoint
	code, out = vrepRun(t, "points", "vm1", "--data", repData, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &pts) != nil {
		t.Fatalf("vrep points: exit %d\n%s", code, out)
	}
	found := false
	for _, q := range pts {
		found = found || q.ID == p.ID && q.Kind == "app-consistent" && q.Group == "vm1"
	}
	if !found {
		t.Fatalf("point %d is not listed as app-consistent:\n%s", p.ID, out)
	}
	if code, out = vrepRun(t, "points", "vm1", "--data", repData); code != 0 || !strings.Contains(out, strconv.FormatUint(p.ID, 10)) {
		t.Fatalf("points table: exit %d\n%s", code, out)
	}
	// Ids are JSON strings (a float64 would round 19 digits), and the
	// filters pick the point out.
	var raw []map[string]any
	code, out = vrepRun(t, "points", "vm1", "--data", repData, "--json", "--kind", "app", "--last", "1", "--since", "1h")
	if code != 0 || json.Unmarshal([]byte(out), &raw) != nil || len(raw) != 1 || raw[0]["id"] != strconv.FormatUint(p.ID, 10) {
		t.Fatalf("vrep points --kind app --last 1: exit %d, want one point with the string id %d:\n%s", code, p.ID, out)
	}
	if code, out = vrepRun(t, "points", "vm1", "--data", repData, "--kind", "fuzzy"); code != exitUsage {
		t.Fatalf("vrep points --kind fuzzy: exit %d\n%s", code, out)
	}

	// A test failover at the point.
	id := strconv.FormatUint(p.ID, 10)
	var ti replicad.TestInfo
	code, out = vrepRun(t, "failover", "test", "vm1", "--point", id, "--data", repData, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &ti) != nil || len(ti.Files) != 1 || ti.Exports[0] != "vm1/disk0-test" {
		t.Fatalf("failover test: exit %d\n%s", code, out)
	}
	testFile := filepath.Join(repFuse, "vm1", "disk0-test.img")
	run(t, "fsck.ext4", "-n", "-f", testFile)
	tdev := loop(t, testFile)
	tmnt := filepath.Join(e.dir, "test")
	os.Mkdir(tmnt, 0o755)
	mountFS(t, tdev, tmnt)
	recs := readRecords(t, filepath.Join(tmnt, "journal.log"))
	if recs < before {
		t.Fatalf("the point holds %d records; %d were fsynced before it was asked for", recs, before)
	}
	// The test VM writes; none of it reaches the replica.
	os.WriteFile(filepath.Join(tmnt, "written-by-the-test"), []byte("x"), 0o644)
	run(t, "umount", tmnt)
	exec.Command("losetup", "-d", tdev).Run()
	// Errors: one sentence, the right exit code.
	if code, out = vrepRun(t, "failover", "test", "vm1", "--data", repData); code != exitConflict || !strings.Contains(out, "already running") {
		t.Fatalf("a second test: exit %d\n%s", code, out)
	}
	if code, out = vrepRun(t, "failover", "test", "nope", "--data", repData); code != exitError || !strings.Contains(out, "no VM") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Fatalf("an unknown VM: exit %d\n%s", code, out)
	}
	if code, out = vrepRun(t, "failover", "test", "vm1", "--point", "12", "--data", repData); code != exitConflict {
		t.Fatalf("a test while one runs: exit %d\n%s", code, out)
	}
	if code, out = vrepRun(t, "failover", "test", "../x", "--data", repData); code != exitUsage {
		t.Fatalf("a bad VM name: exit %d\n%s", code, out)
	}
	var st replicad.Status
	if code, out = vrepRun(t, "status", "--data", repData, "--json"); code != 0 || json.Unmarshal([]byte(out), &st) != nil ||
		len(st.Disks) != 1 || !st.Disks[0].Seeded || st.Disks[0].Health != "Normal" || st.Disks[0].LastApplied.IsZero() || len(st.Tests) != 1 {
		t.Fatalf("replica status: exit %d\n%s", code, out)
	}
	if code, out = vrepRun(t, "status", "--api", "unix:"+filepath.Join(repData, "api.sock")); code != 0 || !strings.Contains(out, "Normal") || !strings.Contains(out, "vm1/disk0-test") {
		t.Fatalf("replica status table: exit %d\n%s", code, out)
	}
	if code, out = vrepRun(t, "failover", "test-stop", "vm1", "--data", repData); code != 0 {
		t.Fatalf("test-stop: exit %d\n%s", code, out)
	}
	if code, out = vrepRun(t, "failover", "test-stop", "vm1", "--data", repData); code != exitError || !strings.Contains(out, "no test failover") {
		t.Fatalf("test-stop twice: exit %d\n%s", code, out)
	}
	// Again at the same point: the test's writes are gone.
	if code, out = vrepRun(t, "failover", "test", "vm1", "--point", id, "--data", repData); code != 0 {
		t.Fatalf("failover test again: exit %d\n%s", code, out)
	}
	tdev = loop(t, testFile)
	mountFS(t, tdev, tmnt)
	if _, err := os.Stat(filepath.Join(tmnt, "written-by-the-test")); err == nil {
		t.Fatal("a file written by the earlier test survived its stop")
	}
	run(t, "umount", tmnt)
	exec.Command("losetup", "-d", tdev).Run()
	vrepRun(t, "failover", "test-stop", "vm1", "--data", repData)
	// The replica image equals the primary disk.
	run(t, "umount", ext4)
	exec.Command("losetup", "-d", dev).Run()
	waitReplicated(t, e)
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", e.img, filepath.Join(repData, "primary1", "vm1", "disk0", "image"))
}

// readRecords returns how many consecutive records "record N" from 1 on
// the file holds.
func readRecords(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if sc.Text() != fmt.Sprintf("record %d", n+1) {
			break
		}
		n++
	}
	return n
}
