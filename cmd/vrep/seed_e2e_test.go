package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vrep-io/vrep/internal/primary"
)

// seedDirs returns n directories for a seed under the test's directory.
func seedDirs(e *env, n int) []string {
	var dirs []string
	for i := range n {
		dirs = append(dirs, filepath.Join(e.dir, "drive"+strconv.Itoa(i)))
	}
	return dirs
}

func flagEach(flag string, vals []string) []string {
	var out []string
	for _, v := range vals {
		out = append(out, flag, v)
	}
	return out
}

// flipByte flips one byte of a file.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// primaryStatus returns the primary's one disk.
func primaryDisk(t *testing.T, e *env) primary.DiskStatus {
	t.Helper()
	var st primary.Status
	code, out := vrepRun(t, "status", "--state", e.state, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Disks) != 1 {
		t.Fatalf("status: %d %s", code, out)
	}
	return st.Disks[0]
}

// TestSeedEndToEnd: a disk written through NBD is exported over four
// directories with parity 2 while replication waits for its seed; the VM
// writes on; one directory is lost and another has flipped bytes; the
// import rebuilds the disk on the replica; replication then starts after
// the seed with no initial copy over the network, and the replica
// converges to the primary byte for byte.
func TestSeedEndToEnd(t *testing.T) {
	need(t, "qemu-io", "qemu-img")
	e := newEnv(t, 32<<20)
	pkiDir, addr := replicationSetup(t, e)
	// The replica is not up yet: the primary must not copy over the
	// network meanwhile either, once the seed is exported.
	d := e.start(t, replicaFlags(addr, pkiDir, "--retry-schedule", "100ms,200ms")...)
	u := e.uri("vm1/disk0")
	for i := range 8 { // half the disk written, half left zero
		qemuIO(t, u, "write -P "+strconv.Itoa(0x41+i)+" "+strconv.Itoa(i*4)+"M 2M", "flush")
	}
	dirs := seedDirs(e, 4)
	code, out := vrepRun(t, append([]string{"seed", "export", "vm1", "--parity", "2", "--state", e.state, "--json"}, flagEach("--to", dirs)...)...)
	if code != 0 {
		t.Fatalf("seed export: exit %d\n%s", code, out)
	}
	var res primary.SeedResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if res.PointID == 0 || len(res.Disks) != 1 || res.Data != 2 || res.Parity != 2 {
		t.Fatalf("export: %+v", res)
	}
	lsn := res.Disks[0].LSN
	// Half the disk is zeros and not on the media: data plus parity is
	// twice the written half, so the media hold about the image's size.
	if res.OnMedia > 33<<20 || res.Disks[0].Zero < 14 {
		t.Fatalf("%d bytes on media for a half-written 32 MiB disk, %d zero chunks", res.OnMedia, res.Disks[0].Zero)
	}
	if st := primaryDisk(t, e); st.Replication == nil || st.Replication.AwaitingSeed != lsn {
		t.Fatalf("status does not show the disk waiting for its seed at %d: %+v", lsn, st.Replication)
	}
	_, text := vrepRun(t, "status", "--state", e.state)
	if !strings.Contains(text, "waiting for its seed") {
		t.Fatalf("status text:\n%s", text)
	}
	// The VM writes on after the seed: these ship over the network.
	qemuIO(t, u, "write -P 0x77 1M 3M", "write -z 5M 64k", "discard 12M 1M", "write -P 0x78 30M 1M", "flush")

	// One drive lost, one damaged.
	if err := os.RemoveAll(dirs[1]); err != nil {
		t.Fatal(err)
	}
	shard := filepath.Join(dirs[2], "disk0.shard")
	for _, off := range []int64{40, 100_000, 3_000_000} {
		flipByte(t, shard, off)
	}
	repData := filepath.Join(e.dir, "replica")
	code, out = vrepRun(t, append([]string{"seed", "import", "--data", repData, "--vm", "vm1", "--primary", "primary1"}, flagEach("--from", dirs)...)...)
	if code != 0 {
		t.Fatalf("seed import: exit %d\n%s", code, out)
	}
	for _, want := range []string{"shard 1 missing: rebuilt", "shard 2 (", "damaged pieces: rebuilt", "imported at LSN " + strconv.FormatUint(lsn, 10), "verified"} {
		if !strings.Contains(out, want) {
			t.Fatalf("import output lacks %q:\n%s", want, out)
		}
	}
	startReplica(t, e.dir, pkiDir, addr)
	vrepRun(t, "replication", "resume", "vm1", "--state", e.state)
	st := waitReplicated(t, e)
	if st.Replication.InitialBytes != 0 || st.Replication.AwaitingSeed != 0 {
		t.Fatalf("after the seed: %d bytes of initial copy sent over the network, awaiting seed %d", st.Replication.InitialBytes, st.Replication.AwaitingSeed)
	}
	if strings.Contains(d.stderr.String(), "initial replication started") {
		t.Fatalf("the primary started an initial copy:\n%s", d.stderr)
	}
	if err := d.stop(); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, d.stderr)
	}
	replicaImg := filepath.Join(repData, "primary1", "vm1", "disk0", "image")
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", e.img, replicaImg)
}
