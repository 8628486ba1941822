package events

import (
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// Config configures a Recorder.
type Config struct {
	// Path is the events file (DIR/events.jsonl); MaxBytes bounds it.
	Path     string
	MaxBytes int64
	// Hook, if set, is run by sh -c at each health change, with the event
	// in its environment; HookTimeout bounds each run (default 1 minute).
	Hook        string
	HookTimeout time.Duration
	// Every is how often Watch samples health (default 5 s); History
	// keeps HistoryLen samples per disk (default six hours' worth).
	Every      time.Duration
	HistoryLen int
	Log        *slog.Logger
}

// Sample is one disk's health and lag at a moment.
type Sample struct {
	Time   time.Time
	VM     string
	Disk   string // VM/DISK (on a replica serving several primaries: ROOT/VM/DISK)
	Health string
	Reason string
	// Lag is how far behind the replica is, in seconds (the primary's
	// lag, or the newest point's age on a replica); LagKnown says
	// whether it is known.
	Lag      float64
	LagKnown bool
}

// Recorder records a daemon's events, runs the health hook, and keeps
// recent samples. Safe for concurrent use; Close stops what it started.
type Recorder struct {
	cfg  Config
	log  *Log
	hook *hook

	mu      sync.Mutex
	errs    map[Kind]uint64   // error events since the start, by kind
	last    map[string]string // health by disk
	history map[string][]Sample
	order   []string // disks in the order first seen

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New opens the events log and starts the hook's runner.
func New(cfg Config) (*Recorder, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Every <= 0 {
		cfg.Every = 5 * time.Second
	}
	if cfg.HistoryLen <= 0 {
		cfg.HistoryLen = int(6 * time.Hour / cfg.Every)
	}
	if cfg.HookTimeout <= 0 {
		cfg.HookTimeout = time.Minute
	}
	l, err := OpenLog(cfg.Path, cfg.MaxBytes)
	if err != nil {
		return nil, err
	}
	r := &Recorder{cfg: cfg, log: l, errs: map[Kind]uint64{}, last: map[string]string{}, history: map[string][]Sample{}, stop: make(chan struct{})}
	if cfg.Hook != "" {
		r.hook = newHook(cfg.Hook, cfg.HookTimeout, cfg.Log)
	}
	return r, nil
}

// Path is the events file.
func (r *Recorder) Path() string { return r.cfg.Path }

// Record appends e (stamped now if it has no time). A failure to write is
// logged, never returned: events must not stop the daemon.
func (r *Recorder) Record(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if slices.Contains(ErrorKinds, e.Kind) {
		r.mu.Lock()
		r.errs[e.Kind]++
		r.mu.Unlock()
	}
	if err := r.log.Append(e); err != nil {
		r.cfg.Log.Warn("events: not recorded", "kind", e.Kind, "err", err)
	}
}

// Observe takes one round of samples: it records a health event for
// each disk whose health changed since the last round (and runs the
// hook), and adds the samples to the history. A disk's first sample sets
// its baseline silently unless it is Critical, so that a restart does not
// page anyone for the Warning every stream starts in.
func (r *Recorder) Observe(samples []Sample) {
	var changes []Event
	r.mu.Lock()
	for _, s := range samples {
		prev, seen := r.last[s.Disk]
		if !seen {
			r.order = append(r.order, s.Disk)
		}
		r.last[s.Disk] = s.Health
		h := append(r.history[s.Disk], s)
		if len(h) > r.cfg.HistoryLen {
			h = h[len(h)-r.cfg.HistoryLen:]
		}
		r.history[s.Disk] = h
		if prev == s.Health || (!seen && s.Health != "Critical") {
			continue
		}
		changes = append(changes, Event{Time: s.Time, Kind: Health, VM: s.VM, Disk: s.Disk, Health: s.Health, Previous: prev, Reason: s.Reason})
	}
	r.mu.Unlock()
	for _, e := range changes {
		r.Record(e)
		if e.Health == "Critical" && strings.HasPrefix(e.Reason, "resync required") {
			r.Record(Event{Time: e.Time, Kind: Overflow, VM: e.VM, Disk: e.Disk, Reason: e.Reason})
		}
		r.cfg.Log.Info("health changed", "disk", e.Disk, "health", e.Health, "was", e.Previous, "reason", e.Reason)
		if r.hook != nil {
			r.hook.enqueue(e)
		}
	}
}

// Watch calls sample every Config.Every and observes what it returns,
// until the returned stop is called (or Close). Stop before closing what
// sample reads.
func (r *Recorder) Watch(sample func() []Sample) (stop func()) {
	done := make(chan struct{})
	var once sync.Once
	stop = func() { once.Do(func() { close(done) }) }
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(r.cfg.Every)
		defer t.Stop()
		for {
			r.Observe(sample())
			select {
			case <-r.stop:
				return
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return stop
}

// History returns each disk's recent samples, oldest first, with the
// disks in the order they were first seen.
func (r *Recorder) History() (disks []string, samples map[string][]Sample) {
	r.mu.Lock()
	defer r.mu.Unlock()
	samples = make(map[string][]Sample, len(r.history))
	for k, v := range r.history {
		samples[k] = append([]Sample(nil), v...)
	}
	return append([]string(nil), r.order...), samples
}

// Events returns the recorded events at or after since, oldest first.
func (r *Recorder) Events(since time.Time) ([]Event, error) { return Read(r.cfg.Path, since) }

// Close stops watching, lets queued hooks finish and closes the log. It
// is idempotent.
func (r *Recorder) Close() error {
	r.closeOnce.Do(func() {
		close(r.stop)
		r.wg.Wait()
		if r.hook != nil {
			r.hook.close()
		}
		r.log.Close()
	})
	return nil
}
