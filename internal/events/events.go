// Package events keeps a daemon's history for its operator: an
// append-only log of what happened (health changes with their reason,
// resumes, refused connections, log overflows, failovers), a hook run at
// each health change, and a ring of recent health and lag samples that
// the status page charts.
//
// The log is a file of JSON lines, one Event each, under the daemon's
// state (primary) or data (replica) directory. It is bounded: past
// MaxBytes the file is renamed to NAME.1 (replacing the older one) and a
// new one begun, so at most two files' worth is kept. A line is written
// with one write(2) on an O_APPEND file and not fsynced: the log is for
// people, and a crash may cost its newest line, which Read then skips.
package events

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sync"
	"time"
)

// Kind says what an event is about.
type Kind string

// Event kinds.
const (
	Health       Kind = "health"        // a disk's replication health changed
	Overflow     Kind = "overflow"      // the change log overflowed; the disk needs a resync
	Resume       Kind = "resume"        // replication resumed (by the operator or after an interruption)
	Refused      Kind = "refused"       // a peer's connection was refused
	Interrupted  Kind = "interrupted"   // a replication stream failed (retried, or stopped until resumed)
	Failover     Kind = "failover"      // a failover step
	TestFailover Kind = "test-failover" // a test failover started or stopped
	Started      Kind = "started"       // the daemon started
	Seed         Kind = "seed"          // seed media: an import's findings, a seed verified or found different from the primary
)

// Event is one line of the log.
type Event struct {
	Time time.Time `json:"time"`
	Kind Kind      `json:"kind"`
	VM   string    `json:"vm,omitempty"`
	Disk string    `json:"disk,omitempty"` // VM/DISK
	// Health and Previous are a health change's new and old levels.
	Health   string `json:"health,omitempty"`
	Previous string `json:"previous,omitempty"`
	// Reason is why, in the operator's words.
	Reason string `json:"reason,omitempty"`
}

// DefaultMaxBytes bounds one events file.
const DefaultMaxBytes = 1 << 20

// FileName is the events log's name in a daemon's directory.
const FileName = "events.jsonl"

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("events: log closed")

// Log is an append-only, rotated events file. Safe for concurrent use.
type Log struct {
	path string
	max  int64
	mu   sync.Mutex
	f    *os.File
	size int64
}

// OpenLog opens (or creates) the events file at path, rotated past
// maxBytes (DefaultMaxBytes if 0).
func OpenLog(path string, maxBytes int64) (*Log, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	l := &Log{path: path, max: maxBytes}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Log) open() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("events: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("events: %w", err)
	}
	l.f, l.size = f, fi.Size()
	return nil
}

// Path is the file the log appends to.
func (l *Log) Path() string { return l.path }

// Append writes e as one line, rotating first if the line would take the
// file past its bound.
func (l *Log) Append(e Event) error {
	line, err := json.Marshal(e)
	if err != nil {
		return err
	}
	line = append(line, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return ErrClosed
	}
	if l.size > 0 && l.size+int64(len(line)) > l.max {
		l.f.Close()
		l.f = nil
		if err := os.Rename(l.path, l.path+".1"); err != nil {
			return fmt.Errorf("events: rotating: %w", err)
		}
		if err := l.open(); err != nil {
			return err
		}
	}
	n, err := l.f.Write(line)
	l.size += int64(n)
	return err
}

// Close closes the file. It is idempotent.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// Read returns the events of the log at path (its rotated file first) at
// or after since, oldest first. A line that does not decode (the torn
// tail of a crash) is skipped.
func Read(path string, since time.Time) ([]Event, error) {
	var out []Event
	for _, p := range []string{path + ".1", path} {
		f, err := os.Open(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("events: %w", err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var e Event
			if json.Unmarshal(sc.Bytes(), &e) != nil || e.Time.Before(since) {
				continue
			}
			out = append(out, e)
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("events: reading %s: %w", p, err)
		}
	}
	slices.SortStableFunc(out, func(a, b Event) int { return a.Time.Compare(b.Time) })
	return out, nil
}
