package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/jobs"
	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/replicad"
	"github.com/vrep-io/vrep/internal/waitfor"
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
	// The seed is checked against the primary, and matches.
	waitfor.True(t, "the seed verified", func() bool {
		sv := primaryDisk(t, e).Replication.SeedVerify
		return sv != nil && sv.State == "matched" && sv.Differing == 0 && sv.SeedLSN == lsn
	})
	if st.Replication.InitialBytes != 0 || st.Replication.AwaitingSeed != 0 {
		t.Fatalf("after the seed: %d bytes of initial copy sent over the network, awaiting seed %d", st.Replication.InitialBytes, st.Replication.AwaitingSeed)
	}
	// The export and the import are jobs, and no initial copy ran.
	if j, ok := findJob(jobsOf(t, "--data", repData), jobs.SeedImport, "primary1/vm1"); !ok || j.State != jobs.OK || j.Percent != 100 {
		t.Fatalf("the import's job: %+v", j)
	}
	pj := jobsOf(t, "--state", e.state)
	if j, ok := findJob(pj, jobs.SeedExport, "vm1"); !ok || j.State != jobs.OK || j.Total == 0 {
		t.Fatalf("the export's job: %+v", j)
	}
	if j, ok := findJob(pj, jobs.InitialCopy, "vm1/disk0"); ok {
		t.Fatalf("an initial copy ran after a seed: %+v", j)
	}
	// The seed's point is on the replica, with the points shipped after.
	if code, out := vrepRun(t, "points", "vm1", "--data", repData, "--json"); code != 0 || !strings.Contains(out, strconv.FormatUint(res.PointID, 10)) {
		t.Fatalf("the replica's points lack the seed's point %d: exit %d\n%s", res.PointID, code, out)
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

// exportSeed runs vrep seed export and returns its result.
func exportSeed(t *testing.T, e *env, dirs []string, parity int) primary.SeedResult {
	t.Helper()
	code, out := vrepRun(t, append([]string{"seed", "export", "vm1", "--parity", strconv.Itoa(parity), "--state", e.state, "--json"}, flagEach("--to", dirs)...)...)
	if code != 0 {
		t.Fatalf("seed export: exit %d\n%s", code, out)
	}
	var res primary.SeedResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return res
}

// copyDirs copies seed directories (flat) to fresh ones.
func copyDirs(t *testing.T, e *env, name string, dirs []string) []string {
	t.Helper()
	var out []string
	for i, d := range dirs {
		nd := filepath.Join(e.dir, name+strconv.Itoa(i))
		run(t, "cp", "-r", d, nd)
		out = append(out, nd)
	}
	return out
}

// nothingImported fails the test if the replica's data directory shows
// the disk, seeded or staged.
func nothingImported(t *testing.T, repData string) {
	t.Helper()
	vmDir := filepath.Join(repData, "primary1", "vm1")
	ents, _ := os.ReadDir(vmDir)
	if len(ents) != 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("a failed import left %v in %s", names, vmDir)
	}
}

// TestSeedImportRefuses: bad media and bad arguments get one sentence
// and their exit code, and leave nothing in the replica's data directory.
func TestSeedImportRefuses(t *testing.T) {
	need(t, "qemu-io")
	e := newEnv(t, 8<<20)
	pkiDir, addr := replicationSetup(t, e)
	e.start(t, replicaFlags(addr, pkiDir, "--retry-schedule", "100ms")...)
	qemuIO(t, e.uri("vm1/disk0"), "write -P 0x55 0 3M", "write -P 0x66 6M 1M", "flush")
	good := seedDirs(e, 4)
	exportSeed(t, e, good, 2)
	repData := filepath.Join(e.dir, "replica")
	importArgs := func(dirs []string, more ...string) []string {
		return append(append([]string{"seed", "import", "--data", repData}, flagEach("--from", dirs)...), more...)
	}
	cases := []struct {
		name   string
		damage func(dirs []string) // on a copy of the seed
		more   []string
		code   int
		says   string
	}{
		{"three of four directories missing, parity 2", func(d []string) { os.RemoveAll(d[0]); os.RemoveAll(d[1]); os.RemoveAll(d[3]) },
			nil, exitCorrupt, "needs 2: 3 directories are missing or damaged and the parity covers 2"},
		{"flipped bytes in three shards", func(d []string) {
			for _, x := range d[:3] {
				flipByte(t, filepath.Join(x, "disk0.shard"), 1000)
			}
		}, nil, exitCorrupt, "more shards are damaged than the parity (2) covers"},
		{"two truncated shards and a lost one", func(d []string) {
			os.Truncate(filepath.Join(d[0], "disk0.shard"), 100)
			os.Truncate(filepath.Join(d[1], "disk0.shard"), 5000)
			os.RemoveAll(d[2])
		}, nil, exitCorrupt, "the parity (2) covers"},
		{"another VM", nil, []string{"--vm", "vm2"}, exitUsage, "is of VM vm1, not vm2"},
		{"another primary", nil, []string{"--primary", "primary2"}, exitUsage, "is from primary primary1, not primary2"},
		{"a root that escapes the data directory", nil, []string{"--root", "../etc"}, exitUsage, "must not start with '.'"},
		{"every manifest damaged", func(d []string) {
			for _, x := range d {
				flipByte(t, filepath.Join(x, "manifest.vseed"), 30)
			}
		}, nil, exitCorrupt, "no finished seed in the directories given"},
		{"a manifest naming a path outside the target", func(d []string) {
			for _, x := range d {
				p := filepath.Join(x, "manifest.vseed")
				b, _ := os.ReadFile(p)
				os.WriteFile(p, reframeManifest(t, b, `"vm":"vm1"`, `"vm":"../../etc"`), 0o644)
			}
		}, nil, exitCorrupt, "must not start with '.'"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dirs := copyDirs(t, e, "case"+strconv.Itoa(i)+"-", good)
			if c.damage != nil {
				c.damage(dirs)
			}
			code, out := vrepRun(t, importArgs(dirs, c.more...)...)
			if code != c.code || !strings.Contains(out, c.says) {
				t.Fatalf("exit %d (want %d), output lacks %q:\n%s", code, c.code, c.says, out)
			}
			t.Logf("exit %d: %s", code, out)
			nothingImported(t, repData)
		})
	}
}

// reframeManifest replaces text in a manifest's JSON body and frames it
// again with a good checksum: a manifest that is intact but lies.
func reframeManifest(t *testing.T, b []byte, old, new string) []byte {
	t.Helper()
	body := strings.Replace(string(b[16:len(b)-4]), old, new, 1)
	if body == string(b[16:len(b)-4]) {
		t.Fatalf("%q not in the manifest", old)
	}
	out := append([]byte(nil), b[:12]...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(body)))
	out = append(out, body...)
	return binary.LittleEndian.AppendUint32(out, crc32.Checksum(out, crc32.MakeTable(crc32.Castagnoli)))
}

// TestSeedImportFullDrive: a replica drive too small for the seed is
// refused before anything is written.
func TestSeedImportFullDrive(t *testing.T) {
	needRoot(t)
	need(t, "qemu-io")
	e := newEnv(t, 16<<20)
	pkiDir, addr := replicationSetup(t, e)
	e.start(t, replicaFlags(addr, pkiDir, "--retry-schedule", "100ms")...)
	qemuIO(t, e.uri("vm1/disk0"), "write -P 0x55 0 12M", "flush")
	dirs := seedDirs(e, 3)
	exportSeed(t, e, dirs, 1)
	small := filepath.Join(e.dir, "small")
	os.MkdirAll(small, 0o755)
	run(t, "mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", small)
	t.Cleanup(func() { run(t, "umount", small) })
	code, out := vrepRun(t, append([]string{"seed", "import", "--data", small}, flagEach("--from", dirs)...)...)
	if code != exitError || !strings.Contains(out, "free and the seed needs") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	nothingImported(t, small)
}

// TestSeedOlderThanLog: a seed the primary's log no longer reaches (two
// newer seeds were exported since) is found out when the primary
// connects: the reason says so and offers a resync (which waits for the
// resync window); nothing is sent as an initial copy; `vrep resync
// --now` then brings the replica in line by checksums.
func TestSeedOlderThanLog(t *testing.T) {
	need(t, "qemu-io")
	e := newEnv(t, 8<<20)
	pkiDir, addr := replicationSetup(t, e)
	// An interval copy frequency: each point seals the log's segment, so
	// the log from before the newer seeds can go.
	// The offered resync must wait: a window closed now (the default one
	// is open at night).
	e.start(t, replicaFlags(addr, pkiDir, "--retry-schedule", "100ms,200ms", "--frequency", "1h", "--points-every", "1h",
		"--resync-window", closedWindow())...)
	u := e.uri("vm1/disk0")
	var first []string
	for i := range 3 {
		qemuIO(t, u, "write -P "+strconv.Itoa(0x61+i)+" "+strconv.Itoa(i)+"M 1M", "flush")
		dirs := seedDirs(e, 2)
		for j := range dirs {
			dirs[j] += "-" + strconv.Itoa(i)
		}
		exportSeed(t, e, dirs, 1)
		if i == 0 {
			first = dirs
		}
	}
	repData := filepath.Join(e.dir, "replica")
	if code, out := vrepRun(t, append([]string{"seed", "import", "--data", repData}, flagEach("--from", first)...)...); code != 0 {
		t.Fatalf("import: exit %d\n%s", code, out)
	}
	startReplica(t, e.dir, pkiDir, addr)
	vrepRun(t, "replication", "resume", "vm1", "--state", e.state)
	// The stale seed is named as such and a resync offered (it waits for
	// the resync window); nothing goes over the network as an initial copy.
	deadline := time.Now().Add(waitfor.Patience)
	for {
		st := primaryDisk(t, e)
		if r := st.Replication; r != nil && strings.Contains(r.Reason, "older than what the primary's log still holds") {
			if r.Health == "Normal" || !strings.Contains(r.Reason, "vrep resync VM --now") || r.InitialBytes != 0 {
				t.Fatalf("health %s, reason: %s (initial bytes %d)", r.Health, r.Reason, r.InitialBytes)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stale seed was never reported: %+v", st.Replication)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Taking the offer repairs it by checksums, still without a full copy.
	if code, out := vrepRun(t, "resync", "vm1", "--now", "--state", e.state); code != 0 {
		t.Fatalf("vrep resync --now: exit %d\n%s", code, out)
	}
	if r := waitReplicated(t, e).Replication; r.InitialBytes != 0 {
		t.Fatalf("the resync sent an initial copy: %d bytes", r.InitialBytes)
	}
	replicaImg := filepath.Join(repData, "primary1", "vm1", "disk0", "image")
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", replicaImg, u)
}

// replicaStatus returns the replica daemon's status.
func replicaStatus(t *testing.T, repData string) replicad.Status {
	t.Helper()
	var st replicad.Status
	code, out := vrepRun(t, "status", "--data", repData, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("replica status: %d %s", code, out)
	}
	return st
}

// TestSeedImportThroughDaemon: with the replica daemon running, vrep
// seed import goes through it. One drive is lost and another's shard
// file is a FIFO the test feeds, so the import stalls half-way for as
// long as the test wants: meanwhile the replica's status and metrics show
// its progress and the rebuilt drive, and the primary, told to connect
// now, is refused with the reason (never let near the image). Fed the
// rest, the import finishes, says it ran through the daemon, and
// replication starts after the seed with no initial copy over the
// network; the replica converges byte for byte.
func TestSeedImportThroughDaemon(t *testing.T) {
	need(t, "qemu-io", "qemu-img", "curl")
	e := newEnv(t, 32<<20)
	pkiDir, addr := replicationSetup(t, e)
	e.start(t, replicaFlags(addr, pkiDir, "--retry-schedule", "100ms,200ms")...)
	u := e.uri("vm1/disk0")
	for i := range 8 {
		qemuIO(t, u, "write -P "+strconv.Itoa(0x41+i)+" "+strconv.Itoa(i*4)+"M 2M", "flush")
	}
	dirs := seedDirs(e, 4)
	exportSeed(t, e, dirs, 2)
	qemuIO(t, u, "write -P 0x77 1M 3M", "flush")
	if err := os.RemoveAll(dirs[1]); err != nil {
		t.Fatal(err)
	}
	shard := filepath.Join(dirs[0], "disk0.shard")
	data, err := os.ReadFile(shard)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(shard)
	if err := syscall.Mkfifo(shard, 0o644); err != nil {
		t.Fatal(err)
	}
	startReplica(t, e.dir, pkiDir, addr)
	repData := filepath.Join(e.dir, "replica")
	imp := exec.Command(vrepBin, append([]string{"seed", "import", "--data", repData, "--vm", "vm1"}, flagEach("--from", dirs)...)...)
	var impOut syncBuffer
	imp.Stdout, imp.Stderr = &impOut, &impOut
	if err := imp.Start(); err != nil {
		t.Fatal(err)
	}
	impDone := make(chan error, 1)
	go func() { impDone <- imp.Wait() }()
	t.Cleanup(func() { imp.Process.Kill() })
	// The seed's opening reads the shard's header; the restore then
	// streams it: half now.
	f, err := os.OpenFile(shard, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(data[:32])
	f.Close()
	// NB: the next writer must meet the restore's reader, not the header's.
	waitfor.True(t, "the shard's header read", func() bool { return !openByAny(shard) })
	f, err = os.OpenFile(shard, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	half := len(data) / 2
	if _, err := f.Write(data[32:half]); err != nil {
		t.Fatal(err)
	}
	var st replicad.Status
	waitfor.True(t, "the import's progress in the replica's status", func() bool {
		st = replicaStatus(t, repData)
		si := st.SeedImport
		return si != nil && si.State == "running" && si.BytesDone > 4<<20
	})
	if si := st.SeedImport; si.BytesDone >= si.BytesTotal || si.Percent <= 0 || si.Percent >= 100 || si.DrivesRebuilt != 1 || si.VM != "vm1" {
		t.Fatalf("import status: %+v", si)
	}
	if _, text := vrepRun(t, "status", "--data", repData); !strings.Contains(text, "seed import") || !strings.Contains(text, "1 drives rebuilt") {
		t.Fatalf("status text lacks the import:\n%s", text)
	}
	m := scrape(t, filepath.Join(repData, "api.sock"))
	if v, ok := metricValue(m, "vrep_replica_seed_import_running", `vm="vm1"`); !ok || v != 1 {
		t.Fatalf("metrics: running %v %v\n%s", v, ok, grepLines(m, "seed_import"))
	}
	if v, ok := metricValue(m, "vrep_replica_seed_import_drives_rebuilt", `vm="vm1"`); !ok || v != 1 {
		t.Fatalf("metrics: drives rebuilt %v %v\n%s", v, ok, grepLines(m, "seed_import"))
	}
	// The primary, told to connect now, is refused with the reason.
	vrepRun(t, "replication", "resume", "vm1", "--state", e.state)
	waitfor.True(t, "the primary's stream refused during the import", func() bool {
		r := primaryDisk(t, e).Replication
		return r != nil && strings.Contains(r.Reason, "being imported from seed media")
	})
	if _, err := f.Write(data[half:]); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := <-impDone; err != nil {
		t.Fatalf("seed import: %v\n%s", err, impOut.String())
	}
	out := impOut.String()
	for _, want := range []string{"imported through the running replica daemon", "shard 1 missing: rebuilt", "verified"} {
		if !strings.Contains(out, want) {
			t.Fatalf("import output lacks %q:\n%s", want, out)
		}
	}
	if si := replicaStatus(t, repData).SeedImport; si == nil || si.State != "done" || si.Percent != 100 {
		t.Fatalf("after the import: %+v", si)
	}
	vrepRun(t, "replication", "resume", "vm1", "--state", e.state)
	if r := waitReplicated(t, e).Replication; r.InitialBytes != 0 {
		t.Fatalf("%d bytes of initial copy over the network", r.InitialBytes)
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", filepath.Join(repData, "primary1", "vm1", "disk0", "image"), u)
}

// openByAny says whether any process has path open (by /proc/PID/fd).
func openByAny(path string) bool {
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && l == path {
			return true
		}
	}
	return false
}

// TestSeedImportRerunAfterKill: an import of a two-disk VM is killed
// (SIGKILL, at a fault point) after the first disk is published and
// before its point is indexed, the second disk staged. Run again, the
// import finishes the job: the first disk, imported from this very seed,
// is skipped and said so, its point registered; the second is imported.
// A third run skips both. Replication then starts after the seed on both
// disks with no initial copy, and the replica converges.
func TestSeedImportRerunAfterKill(t *testing.T) {
	need(t, "qemu-io", "qemu-img")
	bin := faultBin(t)
	e := newEnv(t, 16<<20)
	img1 := filepath.Join(e.dir, "disk1.img")
	if err := os.WriteFile(img1, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img1, 16<<20)
	pkiDir, addr := replicationSetup(t, e)
	e.start(t, replicaFlags(addr, pkiDir, "--retry-schedule", "100ms,200ms", "--disk", "vm1/disk1="+img1)...)
	for i, d := range []string{"vm1/disk0", "vm1/disk1"} {
		qemuIO(t, e.uri(d), "write -P "+strconv.Itoa(0x51+i)+" 0 5M", "write -P 0x33 9M 1M", "flush")
	}
	dirs := seedDirs(e, 3)
	res := exportSeed(t, e, dirs, 1)
	if len(res.Disks) != 2 || res.PointID == 0 {
		t.Fatalf("export: %+v", res)
	}
	repData := filepath.Join(e.dir, "replica")
	args := append([]string{"seed", "import", "--data", repData}, flagEach("--from", dirs)...)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "VREP_FAULTPOINT="+faultpoint.SeedPublished+":1")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the import was not killed at its fault point: %v\n%s", err, out)
	}
	code, text := vrepRun(t, args...)
	if code != 0 {
		t.Fatalf("rerun: exit %d\n%s", code, text)
	}
	pt := strconv.FormatUint(res.PointID, 10)
	for _, want := range []string{"primary1/vm1/disk0: skipped: already imported from this seed", "point " + pt + " registered",
		"primary1/vm1/disk1: imported at LSN", "imported offline"} {
		if !strings.Contains(text, want) {
			t.Fatalf("rerun output lacks %q:\n%s", want, text)
		}
	}
	code, text = vrepRun(t, append(args, "--json")...)
	var ir replicad.SeedImportResult
	if code != 0 || json.Unmarshal([]byte(text[strings.Index(text, "{"):]), &ir) != nil || len(ir.Disks) != 2 || ir.Disks[0].Skipped == "" || ir.Disks[1].Skipped == "" {
		t.Fatalf("third run: exit %d\n%s", code, text)
	}
	startReplica(t, e.dir, pkiDir, addr)
	if code, out := vrepRun(t, "points", "vm1", "--data", repData, "--json"); code != 0 || !strings.Contains(out, pt) {
		t.Fatalf("the replica's points lack the seed's point %s on both disks: exit %d\n%s", pt, code, out)
	}
	vrepRun(t, "replication", "resume", "vm1", "--state", e.state)
	waitfor.True(t, "both disks replicated", func() bool {
		var st primary.Status
		code, out := vrepRun(t, "status", "--state", e.state, "--json")
		if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Disks) != 2 {
			return false
		}
		for _, d := range st.Disks {
			r := d.Replication
			if r == nil || r.Acked < d.LastLSN || r.Initial != 100 || r.Health != "Normal" {
				return false
			}
			if r.InitialBytes != 0 {
				t.Fatalf("%s: %d bytes of initial copy over the network", d.Name, r.InitialBytes)
			}
		}
		return true
	})
	for _, d := range []string{"disk0", "disk1"} {
		run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", filepath.Join(repData, "primary1", "vm1", d, "image"), e.uri("vm1/"+d))
	}
}

// TestSeedVerifyMismatch: a seed imported and then changed on the
// replica before the primary connects (two chunks: a flipped byte in
// data, bytes written into a zero chunk) is not trusted: on its first
// connection the primary verifies it by checksums, reports the mismatch
// (status, a "seed" event) and resyncs; the replica ends byte for byte
// equal to the primary, with no initial copy over the network.
func TestSeedVerifyMismatch(t *testing.T) {
	need(t, "qemu-io", "qemu-img")
	e := newEnv(t, 16<<20)
	pkiDir, addr := replicationSetup(t, e)
	e.start(t, replicaFlags(addr, pkiDir, "--retry-schedule", "100ms,200ms")...)
	u := e.uri("vm1/disk0")
	qemuIO(t, u, "write -P 0x41 0 6M", "flush")
	dirs := seedDirs(e, 3)
	res := exportSeed(t, e, dirs, 1)
	repData := filepath.Join(e.dir, "replica")
	if code, out := vrepRun(t, append([]string{"seed", "import", "--data", repData}, flagEach("--from", dirs)...)...); code != 0 {
		t.Fatalf("import: exit %d\n%s", code, out)
	}
	img := filepath.Join(repData, "primary1", "vm1", "disk0", "image")
	flipByte(t, img, 2<<20+100)
	flipByte(t, img, 10<<20+5)
	startReplica(t, e.dir, pkiDir, addr)
	vrepRun(t, "replication", "resume", "vm1", "--state", e.state)
	var st primary.DiskStatus
	waitfor.True(t, "the seed's verify and the resync after it", func() bool {
		st = primaryDisk(t, e)
		r := st.Replication
		return r != nil && r.SeedVerify != nil && r.SeedVerify.State == "differed" && r.Resync != nil && r.Resync.State == "done"
	})
	sv, rs := st.Replication.SeedVerify, st.Replication.Resync
	t.Logf("seed verify: %+v", *sv)
	if sv.Differing != 2 || sv.SeedLSN != res.Disks[0].LSN || rs.Sent != 2 || !strings.Contains(rs.Reason, "differs from the primary in 2 of") {
		t.Fatalf("seed verify %+v, resync %+v", sv, rs)
	}
	if r := waitReplicated(t, e).Replication; r.InitialBytes != 0 {
		t.Fatalf("%d bytes of initial copy over the network", r.InitialBytes)
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", img, u)
	_, evs := vrepRun(t, "events", "--state", e.state, "--json")
	if !strings.Contains(evs, `"kind": "seed"`) || !strings.Contains(evs, "differs from the primary in 2 of") {
		t.Fatalf("no seed event of the mismatch:\n%s", evs)
	}
}
