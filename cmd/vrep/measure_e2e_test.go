package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/waitfor"
)

func measure(t *testing.T, e *env) primary.Measure {
	t.Helper()
	var m primary.Measure
	code, out := vrepRun(t, "measure", "vm1", "--state", e.state, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &m) != nil {
		t.Fatalf("vrep measure: exit %d\n%s", code, out)
	}
	return m
}

// TestMeasure: vrep measure's figures match what was shipped: the bytes
// of the acknowledged batches add up to the primary's record-bytes
// counter and hold every byte written, sizes and latencies are
// consistent, nothing is pending once caught up; a replica that goes
// away counts as an error and the state says so.
func TestMeasure(t *testing.T) {
	need(t, "qemu-io", "curl")
	e := newEnv(t, 16<<20)
	pkiDir, addr := replicationSetup(t, e)
	killReplica := startReplica(t, e.dir, pkiDir, addr)
	// Points by hand only, so the log is still once the writes are in.
	e.start(t, replicaFlags(addr, pkiDir, "--points-every", "1h", "--retry-schedule", "100ms,200ms")...)
	waitReplicated(t, e)
	const writes = 4
	for i := range writes {
		qemuIO(t, e.uri("vm1/disk0"), fmt.Sprintf("write -P 0x%x %dM 1M", 0x31+i, 2*i), "flush")
		waitReplicated(t, e)
	}
	m := measure(t, e)
	shipped, _ := metricValue(scrape(t, filepath.Join(e.state, "api.sock")), "vrep_replication_record_bytes_total", `disk="vm1/disk0"`)
	if m.Bytes != int64(shipped) || m.Bytes < writes<<20 {
		t.Fatalf("measured %d bytes; the primary shipped %v, and %d MiB were written: %+v", m.Bytes, shipped, writes, m)
	}
	if m.Cycles < writes || m.AverageSize != m.Bytes/int64(m.Cycles) || m.MaximumSize < m.AverageSize || m.MaximumSize < 1<<20 ||
		m.AverageLatency <= 0 || m.MaximumLatency < m.AverageLatency || m.WireBytes <= 0 {
		t.Fatalf("measure: %+v", m)
	}
	if m.State != "Replicating" || m.Health != "Normal" || m.Mode != "Primary" || m.PendingBytes != 0 || m.Errors != 0 ||
		time.Since(m.LastReplication) > time.Minute {
		t.Fatalf("measure: %+v", m)
	}
	code, out := vrepRun(t, "measure", "vm1", "--state", e.state)
	if code != 0 || !strings.Contains(out, "Successful cycles:") || !strings.Contains(out, "State:             Replicating") {
		t.Fatalf("vrep measure: exit %d\n%s", code, out)
	}
	t.Logf("vrep measure:\n%s", out)

	killReplica()
	qemuIO(t, e.uri("vm1/disk0"), "write -P 0x55 12M 1M", "flush")
	// Pending counts the log's bytes past the acknowledged records (not
	// their share of the segment by count: the segment here also holds
	// the small marker of the point after the initial copy).
	waitfor.True(t, "measure to count the interruption", func() bool {
		m = measure(t, e)
		return m.Errors >= 1 && m.State == "Not connected" && m.PendingBytes >= 1<<20
	})

	for _, bad := range [][]string{{"measure", "vm1", "--state", e.state, "--window", "0s"}, {"measure", "vm1", "--state", e.state, "--window", "48h"},
		{"measure", "vm1", "--data", e.state}} {
		if code, out := vrepRun(t, bad...); code != 2 {
			t.Fatalf("%v: exit %d, want 2\n%s", bad, code, out)
		}
	}
	if code, out := vrepRun(t, "measure", "vm9", "--state", e.state); code != 1 || !strings.Contains(out, "vm9") {
		t.Fatalf("measure vm9: exit %d\n%s", code, out)
	}
	if got := run(t, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", filepath.Join(e.state, "api.sock"),
		"http://vrep/v1/measure?vm=vm1&window=banana"); got != "400" {
		t.Fatalf("window=banana answered %s", got)
	}
}
