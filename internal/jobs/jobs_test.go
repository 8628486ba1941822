package jobs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// TestJobsAcrossRestart: a job's start, progress and result are listed;
// reopened from the file, the finished jobs keep their result and a job
// that was running reads as interrupted.
func TestJobsAcrossRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	l, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := l.Start(InitialCopy, "vm1/disk0")
	a.Progress(25, 100)
	if j := l.List()[0]; j.State != Running || j.Percent != 25 || j.Result != "" || !j.Ended.IsZero() {
		t.Fatalf("running job: %+v", j)
	}
	a.End(nil)
	a.End(errors.New("too late")) // only the first End counts
	b := l.Start(TestStart, "vm1")
	b.End(errors.New("replica: no point of VM vm1"))
	c := l.Start(Resync, "vm1/disk0")
	c.Progress(3, 10)

	l2, err := Open(path, nil) // as after a kill: c never ended
	if err != nil {
		t.Fatal(err)
	}
	got := l2.List()
	if len(got) != 3 {
		t.Fatalf("after reopen: %+v", got)
	}
	if j := got[0]; j.Kind != InitialCopy || j.State != OK || j.Result != "ok" || j.Percent != 100 || j.Ended.IsZero() {
		t.Fatalf("the finished job: %+v", j)
	}
	if j := got[1]; j.State != Failed || j.Result != "replica: no point of VM vm1" {
		t.Fatalf("the failed job: %+v", j)
	}
	if j := got[2]; j.State != Interrupted || !strings.Contains(j.Result, "daemon stopped") {
		t.Fatalf("the interrupted job: %+v", j)
	}
	if d := l2.Start(Resync, "vm1/disk0"); d.job.ID != 4 {
		t.Fatalf("a new job's id after reopen: %d", d.job.ID)
	}
	if rd, err := Read(path); err != nil || len(rd) != 4 || rd[3].State != Interrupted {
		t.Fatalf("Read: %v %+v", err, rd)
	}
}

// TestJobsBounded: the file keeps the newest MaxJobs finished jobs and
// none older than MaxAge; a running job is never dropped.
func TestJobsBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	l, _ := Open(path, nil)
	old := l.Start(Resync, "vm0/disk0")
	old.End(nil)
	l.mu.Lock()
	old.job.Ended = time.Now().Add(-MaxAge - time.Hour)
	l.mu.Unlock()
	keep := l.Start(FailoverStart, "vm9")
	for range MaxJobs + 10 {
		l.Start(TestStart, "vm1").End(nil)
	}
	got := l.List()
	if len(got) != MaxJobs || got[0].ID != keep.job.ID || got[0].State != Running {
		t.Fatalf("%d jobs, first %+v", len(got), got[0])
	}
	for _, j := range got {
		if j.ID == old.job.ID {
			t.Fatal("a job older than MaxAge was kept")
		}
	}
	if rd, _ := Read(path); len(rd) != MaxJobs {
		t.Fatalf("file holds %d jobs", len(rd))
	}
}

// TestJobsDamagedFile: a damaged file is set aside and the history
// starts again; nothing fails.
func TestJobsDamagedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	l, _ := Open(path, nil)
	l.Start(Resync, "vm1/disk0").End(nil)
	b, _ := os.ReadFile(path)
	b[len(b)/2] ^= 0xff
	os.WriteFile(path, b, 0o600)
	l2, err := Open(path, nil)
	if err != nil || len(l2.List()) != 0 {
		t.Fatalf("damaged file: %v %+v", err, l2.List())
	}
	if _, err := os.Stat(path + ".broken"); err != nil {
		t.Fatal("the damaged file was not kept as .broken")
	}
	var nl *Log // nil records nothing, and does not fail
	nl.Start(Resync, "x").Progress(1, 2)
	nl.Start(Resync, "x").End(nil)
	if len(nl.List()) != 0 {
		t.Fatal("nil log lists jobs")
	}
}

// TestJobsCollector: a running job's progress is a ratio; ended jobs are
// counted by kind and state, every series present from the start.
func TestJobsCollector(t *testing.T) {
	l, _ := Open(filepath.Join(t.TempDir(), FileName), nil)
	text := func() string {
		reg := prometheus.NewRegistry()
		reg.MustRegister(l.Collector())
		var b strings.Builder
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			expfmt.MetricFamilyToText(&b, mf)
		}
		return b.String()
	}
	if s := text(); !strings.Contains(s, `vrep_jobs_ended_total{kind="resync",state="failed"} 0`) || strings.Contains(s, "vrep_job_progress_ratio{") {
		t.Fatalf("before any job:\n%s", s)
	}
	r := l.Start(SeedExport, "vm1")
	r.Progress(1, 4)
	if s := text(); !strings.Contains(s, `vrep_job_progress_ratio{kind="seed-export",target="vm1"} 0.25`) || !strings.Contains(s, `vrep_jobs_running{kind="seed-export"} 1`) {
		t.Fatalf("a running job:\n%s", s)
	}
	r.End(nil)
	l.Start(Resync, "vm1/disk0").End(errors.New("ship: boom"))
	s := text()
	for _, want := range []string{`vrep_jobs_ended_total{kind="seed-export",state="ok"} 1`, `vrep_jobs_ended_total{kind="resync",state="failed"} 1`, `vrep_jobs_running{kind="seed-export"} 0`} {
		if !strings.Contains(s, want) {
			t.Fatalf("after the jobs ended, no %s:\n%s", want, s)
		}
	}
	if strings.Contains(s, "vrep_job_progress_ratio{") {
		t.Fatalf("an ended job's progress is still exported:\n%s", s)
	}
}
