package main

import (
	"crypto/tls"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vrep-io/vrep/internal/waitfor"
)

// scrape returns the Prometheus text a daemon serves on its API socket.
func scrape(t *testing.T, sock string) string {
	t.Helper()
	return run(t, "curl", "-sf", "--unix-socket", sock, "http://vrep/metrics")
}

// metricValue finds the series of metric name whose labels include every
// one of labels (each as k="v"), and returns its value.
func metricValue(text, name string, labels ...string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		series, val, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		n, ls, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		all := true
		for _, l := range labels {
			all = all && strings.Contains(ls, l)
		}
		if !all {
			continue
		}
		v, err := strconv.ParseFloat(val, 64)
		return v, err == nil
	}
	return 0, false
}

// TestReplicaMetrics: the replica serves Prometheus metrics on its API
// socket, per VM and disk; under a workload, scraped twice, the bytes
// received and the applied LSN move, a point appears, and health is a
// labelled gauge.
func TestReplicaMetrics(t *testing.T) {
	need(t, "qemu-io", "curl")
	e := newEnv(t, 16<<20)
	pkiDir, addr := replicationSetup(t, e)
	startReplica(t, e.dir, pkiDir, addr)
	e.start(t, replicaFlags(addr, pkiDir, "--points-every", "200ms")...)
	sock := filepath.Join(e.dir, "replica", "api.sock")
	u := e.uri("vm1/disk0")
	qemuIO(t, u, "write -P 0x11 0 1M", "flush")
	waitReplicated(t, e)
	disk := []string{`root="primary1"`, `vm="vm1"`, `disk="vm1/disk0"`}
	var first string
	waitfor.True(t, "a recovery point on the replica", func() bool {
		first = scrape(t, sock)
		n, _ := metricValue(first, "vrep_replica_points", disk...)
		return n > 0
	})
	for _, name := range []string{"vrep_replica_last_point_age_seconds", "vrep_replica_history_bytes", "vrep_replica_applied_lsn",
		"vrep_replica_primary_connected", "vrep_replica_received_bytes_total", "vrep_replica_last_point_timestamp_seconds"} {
		if _, ok := metricValue(first, name, disk...); !ok {
			t.Fatalf("no %s for vm1/disk0:\n%s", name, first)
		}
	}
	if _, ok := metricValue(first, "go_goroutines"); !ok {
		t.Fatalf("no Go runtime metrics:\n%s", first)
	}
	if v, _ := metricValue(first, "vrep_replica_primary_connected", disk...); v != 1 {
		t.Fatalf("primary not connected in the metrics:\n%s", first)
	}
	var states float64
	for _, h := range []string{"Normal", "Warning", "Critical"} {
		v, ok := metricValue(first, "vrep_replica_health", append(disk, `health="`+h+`"`)...)
		if !ok {
			t.Fatalf("no health series %s:\n%s", h, first)
		}
		states += v
	}
	if states != 1 {
		t.Fatalf("health must be exactly one of three states:\n%s", first)
	}
	rx1, _ := metricValue(first, "vrep_replica_received_bytes_total", disk...)
	lsn1, _ := metricValue(first, "vrep_replica_applied_lsn", disk...)

	qemuIO(t, u, "write -P 0x22 2M 2M", "flush")
	waitReplicated(t, e)
	var second string
	waitfor.True(t, "the counters to move", func() bool {
		second = scrape(t, sock)
		rx2, _ := metricValue(second, "vrep_replica_received_bytes_total", disk...)
		lsn2, _ := metricValue(second, "vrep_replica_applied_lsn", disk...)
		return rx2 >= rx1+2<<20 && lsn2 > lsn1
	})
	// The primary's side of the same stream.
	pm := scrape(t, filepath.Join(e.state, "api.sock"))
	pd := `disk="vm1/disk0"`
	if w, _ := metricValue(pm, "vrep_replication_wire_bytes_total", pd); w <= 0 {
		t.Fatalf("primary: no wire bytes:\n%s", pm)
	}
	if v, _ := metricValue(pm, "vrep_replication_record_bytes_total", pd); v < 3<<20 {
		t.Fatalf("primary: record bytes below what was written:\n%s", pm)
	}
	if v, ok := metricValue(pm, "vrep_replication_health_state", pd, `health="Normal"`); !ok || v != 1 {
		t.Fatalf("primary: health state:\n%s", pm)
	}
	t.Logf("replica metrics:\n%s", grepLines(second, "vrep_replica_"))
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestOperationsMetrics: the metrics of operations, scraped before and
// after each: the initial copy and a resync are counted as jobs and the
// resync's progress reaches 1; a TLS handshake refused by the replica
// counts as an error of kind refused; a test failover and a failover
// show in the VM's state; the primary counts the interruption when its
// replica goes away.
func TestOperationsMetrics(t *testing.T) {
	need(t, "qemu-io", "curl")
	e := newEnv(t, 16<<20)
	pkiDir, addr := replicationSetup(t, e)
	repData := filepath.Join(e.dir, "replica")
	killReplica := startReplica(t, e.dir, pkiDir, addr)
	e.start(t, replicaFlags(addr, pkiDir, "--points-every", "300ms", "--retry-schedule", "100ms")...)
	u := e.uri("vm1/disk0")
	qemuIO(t, u, "write -P 0x11 0 4M", "flush")
	waitReplicated(t, e)
	priSock, repSock := filepath.Join(e.state, "api.sock"), filepath.Join(repData, "api.sock")
	disk, vm := `disk="vm1/disk0"`, []string{`root="primary1"`, `vm="vm1"`}
	value := func(text, name string, labels ...string) float64 {
		t.Helper()
		v, ok := metricValue(text, name, labels...)
		if !ok {
			t.Fatalf("no %s%v:\n%s", name, labels, text)
		}
		return v
	}

	p1, r1 := scrape(t, priSock), scrape(t, repSock)
	if v := value(p1, "vrep_jobs_ended_total", `kind="initial-copy"`, `state="ok"`); v != 1 {
		t.Fatalf("initial copies ended ok: %v", v)
	}
	if _, ok := metricValue(p1, "vrep_replication_resync_ratio", disk); ok {
		t.Fatalf("a resync ratio before any resync:\n%s", p1)
	}
	refused1 := value(r1, "vrep_replica_errors_total", `kind="refused"`)
	interrupted1 := value(p1, "vrep_replication_errors_total", `kind="interrupted"`)
	if value(r1, "vrep_replica_failover_state", append(vm, `state="Replicating"`)...) != 1 || value(r1, "vrep_replica_test_failover", vm...) != 0 {
		t.Fatalf("the VM's state before any failover:\n%s", grepLines(r1, "failover"))
	}

	// Under the workload, a resync.
	qemuIO(t, u, "write -P 0x22 4M 4M", "flush")
	if code, out := vrepRun(t, "resync", "vm1", "--now", "--state", e.state); code != 0 {
		t.Fatalf("vrep resync --now: exit %d\n%s", code, out)
	}
	var p2 string
	waitfor.True(t, "the resync to end in the metrics", func() bool {
		p2 = scrape(t, priSock)
		v, _ := metricValue(p2, "vrep_jobs_ended_total", `kind="resync"`, `state="ok"`)
		return v == 1
	})
	if value(p2, "vrep_replication_resync_ratio", disk) != 1 || value(p2, "vrep_replication_resync_state", disk, `state="done"`) != 1 {
		t.Fatalf("the resync's progress:\n%s", grepLines(p2, "resync"))
	}

	// A client without a certificate is refused by the replica.
	if c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}); err == nil {
		c.Read(make([]byte, 1)) // TLS 1.3: the refusal arrives after the handshake
		c.Close()
	}
	waitfor.True(t, "the refusal to be counted", func() bool {
		v, _ := metricValue(scrape(t, repSock), "vrep_replica_errors_total", `kind="refused"`)
		return v == refused1+1
	})

	// A test failover, then a failover, in the VM's state.
	if code, out := vrepRun(t, "failover", "test", "vm1", "--data", repData); code != 0 {
		t.Fatalf("failover test: exit %d\n%s", code, out)
	}
	if r := scrape(t, repSock); value(r, "vrep_replica_test_failover", vm...) != 1 {
		t.Fatalf("test failover not in the metrics:\n%s", grepLines(r, "failover"))
	}
	vrepRun(t, "failover", "test-stop", "vm1", "--data", repData)
	if code, out := vrepRun(t, "failover", "start", "vm1", "--data", repData); code != 0 {
		t.Fatalf("failover start: exit %d\n%s", code, out)
	}
	r3 := scrape(t, repSock)
	if value(r3, "vrep_replica_failover_state", append(vm, `state="FailedOver"`)...) != 1 ||
		value(r3, "vrep_replica_failover_state", append(vm, `state="Replicating"`)...) != 0 || value(r3, "vrep_replica_test_failover", vm...) != 0 {
		t.Fatalf("failed over, in the metrics:\n%s", grepLines(r3, "failover"))
	}
	for _, k := range []string{"test-failover", "test-failover-stop", "failover"} {
		if v := value(r3, "vrep_jobs_ended_total", `kind="`+k+`"`, `state="ok"`); v != 1 {
			t.Fatalf("%s jobs ended ok: %v", k, v)
		}
	}

	// The replica goes away: the primary counts the interruption.
	killReplica()
	waitfor.True(t, "the primary to count the interruption", func() bool {
		v, _ := metricValue(scrape(t, priSock), "vrep_replication_errors_total", `kind="interrupted"`)
		return v > interrupted1
	})
}
