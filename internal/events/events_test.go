package events

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLogRotatesAndReads(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	l, err := OpenLog(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	for i := range 50 {
		if err := l.Append(Event{Time: t0.Add(time.Duration(i) * time.Second), Kind: Health, Disk: "vm1/disk0", Reason: strings.Repeat("x", 40)}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	for _, p := range []string{path, path + ".1"} {
		fi, err := os.Stat(p)
		if err != nil || fi.Size() > 1000 {
			t.Fatalf("%s: %v, size %v: not bounded", p, err, fi)
		}
	}
	// A torn line at the tail (a crash mid-write) is skipped.
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"time":"2026-`)
	f.Close()
	all, err := Read(path, time.Time{})
	if err != nil || len(all) == 0 || len(all) >= 50 {
		t.Fatalf("read %d events, %v: want the newest that fit in two files", len(all), err)
	}
	if last := all[len(all)-1]; !last.Time.Equal(t0.Add(49 * time.Second)) {
		t.Fatalf("newest event lost: %+v", last)
	}
	since, _ := Read(path, t0.Add(45*time.Second))
	if len(since) != 5 {
		t.Fatalf("since: %d events, want 5", len(since))
	}
}

func TestHealthChangesRunTheHookOnce(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "hook.out")
	r, err := New(Config{Path: filepath.Join(dir, FileName), Hook: `echo "$VREP_EVENT $VREP_VM $VREP_DISK $VREP_HEALTH $VREP_PREVIOUS [$VREP_REASON]" >> ` + out,
		Log: slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	s := func(h, why string) []Sample {
		return []Sample{{Time: time.Now(), VM: "vm1", Disk: "vm1/disk0", Health: h, Reason: why}, {Time: time.Now(), VM: "vm2", Disk: "vm2/disk0", Health: "Normal"}}
	}
	r.Observe(s("Warning", "not connected yet")) // a first sight: the baseline
	r.Observe(s("Normal", ""))
	r.Observe(s("Normal", ""))
	r.Observe(s("Warning", "the replica is 20s behind"))
	r.Observe(s("Warning", "the replica is 21s behind")) // same health, new reason: no change
	r.Observe(s("Critical", "resync required: the change log overflowed"))
	r.Close()
	b, _ := os.ReadFile(out)
	want := "health vm1 vm1/disk0 Normal Warning []\n" +
		"health vm1 vm1/disk0 Warning Normal [the replica is 20s behind]\n" +
		"health vm1 vm1/disk0 Critical Warning [resync required: the change log overflowed]\n"
	if string(b) != want {
		t.Fatalf("hook ran:\n%s\nwant:\n%s", b, want)
	}
	evs, _ := r.Events(time.Time{})
	var kinds []string
	for _, e := range evs {
		kinds = append(kinds, string(e.Kind)+":"+e.Health)
	}
	if got := strings.Join(kinds, " "); got != "health:Normal health:Warning health:Critical overflow:" {
		t.Fatalf("events: %s", got)
	}
	if _, h := r.History(); len(h["vm1/disk0"]) != 6 {
		t.Fatalf("history: %d samples", len(h["vm1/disk0"]))
	}
}

func TestHistoryBounded(t *testing.T) {
	r, err := New(Config{Path: filepath.Join(t.TempDir(), FileName), HistoryLen: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for i := range 10 {
		r.Observe([]Sample{{Time: time.Unix(int64(i), 0), Disk: "a/b", Health: "Normal"}})
	}
	_, h := r.History()
	if len(h["a/b"]) != 3 || h["a/b"][0].Time.Unix() != 7 {
		t.Fatalf("history: %+v", h["a/b"])
	}
}

// TestTapRules: the messages the daemons log, as they log them, become
// the events the operator looks for; other records do not.
func TestTapRules(t *testing.T) {
	r, err := New(Config{Path: filepath.Join(t.TempDir(), FileName)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	log := slog.New(Tap(slog.NewTextHandler(&bytes.Buffer{}, nil), r))
	log.With("remote", "10.0.0.9:4000").Warn("replica: TLS handshake refused", "err", "bad certificate")
	log.Warn("status page: TLS handshake refused", "remote", "10.0.0.8:5000", "err", "tls: client didn't provide a certificate")
	log.With("primary", "intruder").Warn("replica: stream ended", "err", "replica: primary not authorized: \"intruder\" is not allowed on this replica")
	log.Warn("replica: stream ended", "err", "EOF")
	log.Info("vm1/disk0: replication resume asked for by the operator", "disk", "vm1/disk0", "was", "stopped")
	log.Info("vm1/disk0: replication resumed after 12s, 40 records behind", "disk", "vm1/disk0")
	log.Info("replica: test failover started", "vm", "vm1", "point", 7)
	log.Warn("replication interrupted", "disk", "vm1/disk0", "err", "EOF", "retry_in", "1m")
	log.Info("replica: stream open", "disk", "vm1/disk0")
	log.Warn("seed: vm1/disk0: the seed imported at LSN 4 differs from the primary in 1 of 256 chunks at LSN 4 (the first at byte 65536): resyncing them", "disk", "vm1/disk0")
	// The failover's own messages (internal/replicad/promote.go) and the
	// old primary's fencing (internal/primary/fence.go).
	log.Info("replica: failed over: the VM's disks are served writable at the point; commit or cancel", "vm", "vm1", "point", 7)
	log.Info("replica: failover committed: the VM runs here for good; its points and history are dropped", "vm", "vm1")
	log.Error("disk fenced: its VM failed over to the replica; writes are refused from now on", "disk", "vm1/disk0")
	evs, _ := r.Events(time.Time{})
	var got []string
	for _, e := range evs {
		got = append(got, string(e.Kind)+" "+e.VM+" "+e.Reason)
	}
	want := []string{
		"refused  TLS handshake refused (remote 10.0.0.9:4000, err bad certificate)",
		"refused  status page: TLS handshake refused (remote 10.0.0.8:5000, err tls: client didn't provide a certificate)",
		"refused  stream ended (primary intruder, err replica: primary not authorized: \"intruder\" is not allowed on this replica)",
		"resume vm1 vm1/disk0: replication resume asked for by the operator (was stopped)",
		"resume vm1 vm1/disk0: replication resumed after 12s, 40 records behind",
		"test-failover vm1 test failover started (point 7)",
		"interrupted vm1 replication interrupted (err EOF)",
		"seed vm1 seed: vm1/disk0: the seed imported at LSN 4 differs from the primary in 1 of 256 chunks at LSN 4 (the first at byte 65536): resyncing them",
		"failover vm1 failed over: the VM's disks are served writable at the point; commit or cancel (point 7)",
		"failover vm1 failover committed: the VM runs here for good; its points and history are dropped",
		"failover vm1 disk fenced: its VM failed over to the replica; writes are refused from now on",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
