package main

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/nbdclient"
	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/wocheck"
)

// startReplica runs `vrep replica` and returns a kill function.
func startReplica(t *testing.T, dir, pkiDir, addr string) func() {
	t.Helper()
	var out syncBuffer
	cmd := exec.Command(vrepBin, "replica", "--data", filepath.Join(dir, "replica"), "--listen", addr,
		"--tls-dir", pkiDir, "--name", "replica1", "--allow", "primary1")
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("vrep replica did not start:\n%s", out.String())
		}
	}
	kill := func() {
		cmd.Process.Kill()
		<-done
	}
	t.Cleanup(kill)
	return kill
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitReplicated polls vrep status until the replica acknowledged every
// record of the disk.
func waitReplicated(t *testing.T, e *env) primary.DiskStatus {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var st primary.Status
		code, out := vrepRun(t, "status", "--state", e.state, "--json")
		if code == 0 && json.Unmarshal([]byte(out), &st) == nil && len(st.Disks) == 1 {
			d := st.Disks[0]
			if r := d.Replication; r != nil && r.Acked == d.LastLSN && r.Initial == 100 && r.Health == "Normal" {
				return d
			}
			if time.Now().After(deadline) {
				t.Fatalf("not caught up: %s", out)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestReplicationEndToEnd(t *testing.T) {
	need(t, "qemu-io", "qemu-img")
	e := newEnv(t, 32<<20)
	// The disk has data before protection: the initial copy carries it.
	src := filepath.Join(e.dir, "seed.img")
	data := randomFile(t, src, 32<<20)
	clear(data[8<<20 : 16<<20]) // zero chunks are skipped, and must still read as zeros
	os.WriteFile(e.img, data, 0o600)
	pkiDir := filepath.Join(e.dir, "pki")
	vrepRun(t, "cert", "init", "--dir", pkiDir)
	vrepRun(t, "cert", "issue", "--dir", pkiDir, "--name", "replica1")
	vrepRun(t, "cert", "issue", "--dir", pkiDir, "--name", "primary1")
	addr := freePort(t)
	killReplica := startReplica(t, e.dir, pkiDir, addr)
	d := e.start(t, "--replica", addr, "--tls-dir", pkiDir, "--name", "primary1", "--replica-name", "replica1",
		"--retry-schedule", "100ms,200ms")
	u := e.uri("vm1/disk0")
	for i := range 8 { // the VM writes during and after the initial copy
		qemuIO(t, u, "write -P "+strconv.Itoa(0x30+i)+" "+strconv.Itoa(i*3)+"M 512k", "flush")
	}
	st := waitReplicated(t, e)
	if st.Replication.Codec != "zstd" {
		t.Fatalf("codec %q", st.Replication.Codec)
	}
	// The replica dies mid-stream; writes go on; it comes back; the
	// primary resumes from the last acknowledged LSN.
	killReplica()
	qemuIO(t, u, "write -P 0x77 20M 2M", "discard 9M 1M", "write -z 1M 64k", "flush")
	startReplica(t, e.dir, pkiDir, addr)
	waitReplicated(t, e)
	if err := d.stop(); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, d.stderr)
	}
	replicaImg := filepath.Join(e.dir, "replica", "primary1", "vm1", "disk0", "image")
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", e.img, replicaImg)
}

// TestReplicationCrashLoop: a stamped workload writes over NBD while the
// primary, the replica or both are killed with SIGKILL at random moments
// and restarted. Every primary restart is checked by the write-order
// checker; no restart after the first initial copy may start another
// one; at the end the replica converges to the primary byte for byte.
// VREP_REPL_CRASH_ITERATIONS sets the count (make soak).
func TestReplicationCrashLoop(t *testing.T) {
	need(t, "qemu-img")
	iterations := 20
	if s := os.Getenv("VREP_REPL_CRASH_ITERATIONS"); s != "" {
		iterations, _ = strconv.Atoi(s)
	}
	const size = 16 << 20
	const blocks = size / wocheck.BlockSize
	e := newEnv(t, size)
	pkiDir := filepath.Join(e.dir, "pki")
	vrepRun(t, "cert", "init", "--dir", pkiDir)
	vrepRun(t, "cert", "issue", "--dir", pkiDir, "--name", "replica1")
	vrepRun(t, "cert", "issue", "--dir", pkiDir, "--name", "primary1")
	addr := freePort(t)
	args := []string{"--replica", addr, "--tls-dir", pkiDir, "--name", "primary1", "--replica-name", "replica1",
		"--retry-schedule", "50ms,100ms", "--merge-after", "1M"}
	killReplica := startReplica(t, e.dir, pkiDir, addr)
	d := e.start(t, args...)
	waitReplicated(t, e) // the initial copy is done
	r := rand.New(rand.NewPCG(3, 4))
	before := make(wocheck.Image, blocks)
	kills := map[string]int{}
	initialCopies := 0
	for i := range iterations {
		cl, err := nbdclient.Dial("unix", e.sock, "vm1/disk0")
		if err != nil {
			t.Fatal(err)
		}
		victim := []string{"primary", "replica", "both"}[r.IntN(3)]
		kills[victim]++
		killed := make(chan struct{})
		go func() {
			time.Sleep(time.Duration(50+r.IntN(250)) * time.Millisecond)
			if victim != "primary" {
				killReplica()
			}
			if victim != "replica" {
				d.kill()
			} else {
				cl.Close() // end the workload
			}
			close(killed)
		}()
		w := wocheck.Workload{Disk: 1, Run: uint32(i + 1), Blocks: blocks, Seed: uint64(i), FlushEvery: 8}
		h := w.Write(context.Background(), cl, 1<<30)
		<-killed
		cl.Close()
		if victim != "primary" {
			killReplica = startReplica(t, e.dir, pkiDir, addr)
		}
		if victim != "replica" {
			initialCopies += strings.Count(d.stderr.String(), "initial replication started")
			d = e.start(t, args...)
		}
		after := readBack(t, e, blocks)
		if rep := wocheck.CheckSerial(before, after, h); !rep.OK() {
			t.Fatalf("iteration %d (killed %s): %s", i, victim, strings.Join(rep.Violations, "\n"))
		}
		before = after
	}
	waitReplicated(t, e)
	initialCopies += strings.Count(d.stderr.String(), "initial replication started")
	if initialCopies != 1 {
		t.Fatalf("%d initial copies: a crash or disconnect forced a full copy", initialCopies)
	}
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", e.img, filepath.Join(e.dir, "replica", "primary1", "vm1", "disk0", "image"))
	t.Logf("%d iterations (kills: %v), 1 initial copy, replica equal to the primary, 0 write-order violations", iterations, kills)
}
