// Package jobs keeps a daemon's long operations as an operator sees them
// (Hyper-V's and ASR's "jobs"): initial replication, resync, seed export
// and import, failover and its commit and cancel, test failover: when each
// started and ended, its progress, and its result, ok or the error's one
// sentence.
//
// The daemons call Start at the beginning of an operation, Progress as it
// goes, and End with its error. A Log keeps the running jobs and the
// recent ones, and publishes them to a small state file in the daemon's
// directory (jobs.state; internal/statefile framing, its body a JSON
// array of jobs) at each start and end, so the history survives a
// restart. A job that was running when the daemon stopped reads back as
// interrupted. The file is bounded: the newest MaxJobs jobs, none older
// than MaxAge.
package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vrep-io/vrep/internal/statefile"
	"github.com/vrep-io/vrep/internal/vfs"
)

// FileName is the jobs file in a daemon's state or data directory.
const FileName = "jobs.state"

// magic names the jobs file; part of the format, do not change.
const magic = "VREPJOBS"

// Bounds of what the file keeps.
const (
	MaxJobs = 200
	MaxAge  = 7 * 24 * time.Hour
)

// Kind is what a job does, in the operator's words.
type Kind string

// The kinds of jobs.
const (
	InitialCopy    Kind = "initial-copy"
	Resync         Kind = "resync"
	SeedExport     Kind = "seed-export"
	SeedImport     Kind = "seed-import"
	FailoverStart  Kind = "failover"
	FailoverCommit Kind = "failover-commit"
	FailoverCancel Kind = "failover-cancel"
	TestStart      Kind = "test-failover"
	TestStop       Kind = "test-failover-stop"
)

// States of a job.
const (
	Running     = "running"
	OK          = "ok"
	Failed      = "failed"
	Interrupted = "interrupted"
)

// interruptedWhy is the result of a job the daemon stopped in.
const interruptedWhy = "the daemon stopped before the job ended"

// Job is one operation. Its JSON form is what vrep jobs --json prints.
type Job struct {
	ID     uint64 `json:"id"`
	Kind   Kind   `json:"kind"`
	Target string `json:"target"` // the VM, or VM/DISK
	// Started and Ended (zero while running) bound the job.
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended,omitzero"`
	State   string    `json:"state"`
	// Done of Total units (bytes, or chunks) and Percent, as far as the
	// operation reports them.
	Done    int64   `json:"done,omitempty"`
	Total   int64   `json:"total,omitempty"`
	Percent float64 `json:"percent"`
	// Result is "ok", the error's sentence, or empty while running.
	Result string `json:"result,omitempty"`
}

// Log is a daemon's jobs. Safe for concurrent use; a nil *Log records
// nothing (a daemon without a state directory, or a test).
type Log struct {
	path string
	fs   vfs.FS
	log  *slog.Logger

	mu     sync.Mutex
	nextID uint64
	jobs   []*Run // oldest first, running and recent
	// ends counts the jobs that ended since Open, by kind and state.
	ends map[[2]string]uint64
}

// Run is a job in progress. Its methods are safe for concurrent use, and
// do nothing on a nil *Run.
type Run struct {
	l           *Log
	job         Job // guarded by l.mu, except what the atomics hold
	done, total atomic.Int64
}

// Open reads the jobs file at path (none yet: an empty history). A job
// the file holds as running was interrupted by a stop. A damaged file is
// set aside as PATH.broken and the history starts again; that is logged,
// and is not an error: the jobs are a record, not state anything depends
// on.
func Open(path string, log *slog.Logger) (*Log, error) {
	if log == nil {
		log = slog.Default()
	}
	l := &Log{path: path, fs: vfs.OS{}, log: log, nextID: 1, ends: map[[2]string]uint64{}}
	jobs, err := read(l.fs, path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case errors.Is(err, statefile.ErrBad):
		log.Warn("jobs: the jobs file is damaged; set aside, the history starts again", "file", path, "broken", path+".broken")
		if err := os.Rename(path, path+".broken"); err != nil {
			return nil, fmt.Errorf("jobs: setting aside %s: %w", path, err)
		}
	case err != nil:
		return nil, err
	}
	for _, j := range jobs {
		if j.State == Running {
			j.State, j.Result = Interrupted, interruptedWhy
		}
		r := &Run{l: l, job: j}
		r.done.Store(j.Done)
		r.total.Store(j.Total)
		l.jobs = append(l.jobs, r)
		l.nextID = max(l.nextID, j.ID+1)
	}
	return l, nil
}

// Read returns the jobs in the file at path, oldest first, for a daemon
// that is not running (running ones read as interrupted).
func Read(path string) ([]Job, error) {
	jobs, err := read(vfs.OS{}, path)
	for i := range jobs {
		if jobs[i].State == Running {
			jobs[i].State, jobs[i].Result = Interrupted, interruptedWhy
		}
	}
	return jobs, err
}

func read(fsys vfs.FS, path string) ([]Job, error) {
	body, err := statefile.Read(fsys, path, magic, -1)
	if err != nil {
		return nil, err
	}
	var jobs []Job
	if err := json.Unmarshal(body, &jobs); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, statefile.ErrBad, err)
	}
	return jobs, nil
}

// Start records that a job of kind began on target (a VM or VM/DISK).
func (l *Log) Start(kind Kind, target string) *Run {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	r := &Run{l: l, job: Job{ID: l.nextID, Kind: kind, Target: target, Started: time.Now(), State: Running}}
	l.nextID++
	l.jobs = append(l.jobs, r)
	l.saveLocked()
	return r
}

// Progress says that done of total units are through. It costs two
// atomic stores: call it as often as the operation moves.
func (r *Run) Progress(done, total int64) {
	if r == nil {
		return
	}
	r.total.Store(total)
	r.done.Store(done)
}

// End records the job's result: ok when err is nil, else its sentence.
// Only the first End counts.
func (r *Run) End(err error) {
	if r == nil {
		return
	}
	l := r.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if r.job.State != Running {
		return
	}
	r.job.Ended = time.Now()
	switch {
	case errors.Is(err, context.Canceled):
		r.job.State, r.job.Result = Interrupted, interruptedWhy
	case err != nil:
		r.job.State, r.job.Result = Failed, err.Error()
	default:
		r.job.State, r.job.Result = OK, OK
		if t := r.total.Load(); t > 0 {
			r.done.Store(t)
		}
	}
	l.ends[[2]string{string(r.job.Kind), r.job.State}]++
	l.saveLocked()
}

// snapshotLocked is r's job with its progress.
func (r *Run) snapshotLocked() Job {
	j := r.job
	j.Done, j.Total = r.done.Load(), r.total.Load()
	switch {
	case j.State == OK:
		j.Percent = 100
	case j.Total > 0:
		j.Percent = float64(int(1000*float64(j.Done)/float64(j.Total))) / 10
	}
	return j
}

// ended returns how many jobs ended since Open, by kind and state.
func (l *Log) ended() map[[2]string]uint64 {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.ends)
}

// List returns the running and recent jobs, oldest first.
func (l *Log) List() []Job {
	if l == nil {
		return []Job{}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Job, 0, len(l.jobs))
	for _, r := range l.jobs {
		out = append(out, r.snapshotLocked())
	}
	return out
}

// saveLocked drops what is past the bounds (never a running job) and
// publishes the rest. A failed write is logged: the operation it records
// goes on.
func (l *Log) saveLocked() {
	cut := time.Now().Add(-MaxAge)
	over := len(l.jobs) - MaxJobs
	l.jobs = slices.DeleteFunc(l.jobs, func(r *Run) bool {
		if r.job.State == Running {
			return false
		}
		ended := r.job.Ended
		if ended.IsZero() { // interrupted: it ended at a stop, some time after it started
			ended = r.job.Started
		}
		if over > 0 || ended.Before(cut) {
			over--
			return true
		}
		return false
	})
	jobs := make([]Job, 0, len(l.jobs))
	for _, r := range l.jobs {
		jobs = append(jobs, r.snapshotLocked())
	}
	body, _ := json.Marshal(jobs)
	if err := statefile.Write(l.fs, l.path, magic, body); err != nil {
		l.log.Warn("jobs: the jobs file was not written; the history shown may lack this job after a restart", "file", l.path, "err", err)
	}
}
