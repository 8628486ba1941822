package plan

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vrep-io/vrep/internal/faultpoint"
	"github.com/vrep-io/vrep/internal/statefile"
	"github.com/vrep-io/vrep/internal/vfs"
)

// Ops are the failover operations a plan runs, as the daemon offers
// them. A target is a VM or a consistency group's name, as the operator
// writes it in the plan.
type Ops interface {
	// Members returns the VMs of target (itself, for a VM) as the daemon
	// names them, or why it knows no such VM or group.
	Members(target string) ([]string, error)
	// Check says why target cannot fail over in mode (at point) now, or
	// nil.
	Check(target string, mode Mode, point string) error
	// StartTest starts a test failover of target; StopTest stops it
	// (nil if none runs), refusing while a client holds a disk unless
	// force.
	StartTest(ctx context.Context, target, point string) error
	StopTest(ctx context.Context, target string, force bool) error
	// Failover fails target over to point (unplanned).
	Failover(ctx context.Context, target, point string) error
	// FailedOver reports whether target is failed over: a failover step
	// a restart interrupted that took effect.
	FailedOver(target string) bool
	// PlannedFailover runs a planned failover of target, returning when
	// it runs on the other host; ErrNotAvailable in a build without it.
	PlannedFailover(ctx context.Context, target string) error
}

// Run states. Part of the format.
const (
	Running     = "Running"
	Waiting     = "Waiting"     // at a manual step, for vrep plan continue
	Failed      = "Failed"      // a step failed; continue --retry or --skip
	Interrupted = "Interrupted" // a step was under way at a restart
	Cancelled   = "Cancelled"
	Completed   = "Completed"
	CleanedUp   = "CleanedUp" // a test run whose test failovers were stopped
)

// Step kinds and states. Part of the format.
const (
	KindScript   = "script"
	KindManual   = "manual"
	KindTest     = "test"
	KindFailover = "failover"
	KindPlanned  = "planned"

	StepPending     = "pending"
	StepRunning     = "running"
	StepDone        = "done"
	StepFailed      = "failed"
	StepSkipped     = "skipped"
	StepWaiting     = "waiting"
	StepInterrupted = "interrupted"
	StepCancelled   = "cancelled"
)

// Run is a plan's run, as persisted and as vrep plan status shows it.
type Run struct {
	Plan    Plan      `json:"plan"`
	Mode    Mode      `json:"mode"`
	Point   string    `json:"point,omitempty"`
	State   string    `json:"state"`
	Reason  string    `json:"reason,omitempty"` // why it stopped, in one sentence
	Step    int       `json:"step"`             // the step under way, or next
	Steps   []Step    `json:"steps"`
	Tests   []string  `json:"tests,omitempty"` // targets whose test failovers this run started
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended,omitzero"`
	Log     []Entry   `json:"log"`
}

// Step is one step of a run.
type Step struct {
	Group   string    `json:"group"`
	Kind    string    `json:"kind"`
	Target  string    `json:"target,omitempty"` // VM or consistency group
	Action  *Action   `json:"action,omitempty"` // script and manual steps
	State   string    `json:"state"`
	Started time.Time `json:"started,omitzero"`
	Ended   time.Time `json:"ended,omitzero"`
	Result  string    `json:"result,omitempty"`
}

// What says what the step does, in the operator's words.
func (s Step) What() string {
	switch s.Kind {
	case KindScript:
		return "script " + s.Action.Script
	case KindManual:
		return "manual step: " + s.Action.Manual
	case KindTest:
		return "test failover of " + s.Target
	case KindPlanned:
		return "planned failover of " + s.Target
	}
	return "failover of " + s.Target
}

// Entry is a line of a run's log.
type Entry struct {
	Time time.Time `json:"time"`
	Msg  string    `json:"msg"`
}

const (
	runMagic = "VREPPLAN"
	runExt   = ".plan"
)

// Engine runs plans and keeps their state in a directory. Safe for
// concurrent use.
type Engine struct {
	dir string
	ops Ops
	log *slog.Logger

	mu     sync.Mutex
	runs   map[string]*run
	closed bool
	wg     sync.WaitGroup
}

type run struct {
	r      Run
	cancel context.CancelCauseFunc // nil when no goroutine drives it
	done   chan struct{}           // closed when that goroutine ends
	resume chan struct{}           // a manual step's continue
}

var errCancelled = errors.New("plan: cancelled by the operator")

// Open reads the runs in dir and resumes them as a restart must.
func Open(dir string, ops Ops, log *slog.Logger) (*Engine, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	e := &Engine{dir: dir, ops: ops, log: log, runs: map[string]*run{}}
	files, err := filepath.Glob(filepath.Join(dir, "*"+runExt))
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, f := range files {
		body, err := statefile.Read(vfs.OS{}, f, runMagic, -1)
		var r Run
		if err == nil {
			err = json.Unmarshal(body, &r)
		}
		if err != nil {
			os.Rename(f, f+".broken")
			log.Error("plan: a plan's state cannot be read; set aside", "file", f, "kept", f+".broken", "err", err)
			continue
		}
		ru := &run{r: r}
		e.runs[r.Plan.Name] = ru
		e.recoverLocked(ru)
	}
	return e, nil
}

func (e *Engine) note(ru *run, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	ru.r.Log = append(ru.r.Log, Entry{Time: time.Now(), Msg: msg})
	e.log.Info("plan: "+msg, "plan", ru.r.Plan.Name)
}

func (e *Engine) saveLocked(ru *run) error {
	body, err := json.Marshal(ru.r)
	if err != nil {
		return err
	}
	if err := statefile.Write(vfs.OS{}, filepath.Join(e.dir, ru.r.Plan.Name+runExt), runMagic, body); err != nil {
		return fmt.Errorf("plan: persisting plan %s: %w", ru.r.Plan.Name, err)
	}
	return nil
}

// save persists, logging a failure: the step has run whatever the disk
// says, and the log says so.
func (e *Engine) save(ru *run) {
	if err := e.saveLocked(ru); err != nil {
		e.log.Error("plan: state not persisted", "plan", ru.r.Plan.Name, "err", err)
	}
}

// recoverLocked decides, at start, what becomes of a run a restart found.
func (e *Engine) recoverLocked(ru *run) {
	r := &ru.r
	lost := r.Mode == Test && len(r.Tests) > 0
	if lost {
		r.Tests = nil
		e.note(ru, "the daemon restarted: the run's test failovers ended with it (they do not outlive the daemon)")
		if r.State == Completed || r.State == Failed || r.State == Cancelled || r.State == Interrupted {
			r.State = CleanedUp
		}
	}
	if r.State != Running && r.State != Waiting {
		e.save(ru)
		return
	}
	if r.Step >= len(r.Steps) { // every step done; the end not yet recorded
		e.startLocked(ru)
		e.save(ru)
		return
	}
	st := &r.Steps[r.Step]
	switch {
	case lost:
		if st.State == StepRunning || st.State == StepWaiting {
			st.State = StepInterrupted
		}
		r.State, r.Ended = Interrupted, time.Now()
		r.Reason = fmt.Sprintf("the daemon restarted during this test run at step %d (%s), and test failovers do not outlive it; nothing is left to clean up: run the plan again", r.Step+1, st.What())
		e.note(ru, "%s", r.Reason)
	case st.State == StepRunning && st.Kind == KindTest:
		st.State = StepPending
		e.note(ru, "resumed after a restart: step %d (%s) had not taken effect (test failovers do not outlive the daemon), it runs again", r.Step+1, st.What())
		e.startLocked(ru)
	case st.State == StepRunning && st.Kind == KindFailover:
		if e.ops.FailedOver(st.Target) {
			st.State, st.Ended, st.Result = StepDone, time.Now(), "had taken effect before the daemon restarted; not run again"
			r.Step++
			e.note(ru, "resumed after a restart: step %d (%s) had taken effect, it is not run again", r.Step, st.What())
		} else {
			st.State = StepPending
			e.note(ru, "resumed after a restart: step %d (%s) had not taken effect, it runs again", r.Step+1, st.What())
		}
		e.startLocked(ru)
	case st.State == StepRunning:
		st.State = StepInterrupted
		r.State = Interrupted
		r.Reason = fmt.Sprintf("step %d (%s, group %s) was under way when the daemon stopped and was not run again: check what it did, then vrep plan continue %s --retry (run it again) or --skip",
			r.Step+1, st.What(), st.Group, r.Plan.Name)
		e.note(ru, "%s", r.Reason)
	default:
		e.note(ru, "resumed after a restart at step %d (%s)", r.Step+1, st.What())
		e.startLocked(ru)
	}
	e.save(ru)
}

// Run validates a plan against the daemon's VMs and starts it. Every
// problem is listed at once (ErrInvalid), and then nothing is started.
func (e *Engine) Run(p *Plan, mode Mode, point string) (Run, error) {
	if mode != Test && mode != Planned && mode != Unplanned {
		return Run{}, fmt.Errorf("%w: the mode is test, planned or unplanned, not %q", ErrInvalid, mode)
	}
	switch point {
	case "", "latest", "latest-app":
	default:
		return Run{}, fmt.Errorf("%w: a plan's point is latest or latest-app, not %q", ErrInvalid, point)
	}
	if point != "" && mode == Planned {
		return Run{}, fmt.Errorf("%w: a planned failover takes a final point of its own; --point is for --test and --unplanned runs", ErrInvalid)
	}
	problems := p.problems()
	in := map[string]string{} // VM → where the plan lists it
	for i, g := range p.Groups {
		for _, target := range g.VMs {
			where := "group " + g.label(i)
			vms, err := e.ops.Members(target)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", where, err))
				continue
			}
			if target != vms[0] || len(vms) > 1 {
				where += " (through consistency group " + target + ")"
			}
			dup := false
			for _, vm := range vms {
				if prev, ok := in[vm]; ok {
					problems = append(problems, fmt.Sprintf("VM %s is listed twice: in %s and in %s", vm, prev, where))
					dup = true
				}
				in[vm] = where
			}
			if dup {
				continue
			}
			if err := e.ops.Check(target, mode, point); errors.Is(err, ErrNotAvailable) {
				return Run{}, err // not the plan's problem: this build's
			} else if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", "group "+g.label(i), err))
			}
		}
	}
	if len(problems) > 0 {
		return Run{}, invalid(p.Name, problems)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return Run{}, fmt.Errorf("%w: the daemon is stopping", ErrConflict)
	}
	if old := e.runs[p.Name]; old != nil {
		switch {
		case old.r.State == Running || old.r.State == Waiting || old.r.State == Failed || old.r.State == Interrupted:
			return Run{}, fmt.Errorf("%w: plan %s is %s (step %d); cancel it first: vrep plan cancel %s", ErrConflict, p.Name,
				strings.ToLower(old.r.State), old.r.Step+1, p.Name)
		case len(old.r.Tests) > 0:
			return Run{}, fmt.Errorf("%w: the test failovers of plan %s's last run still run; stop them first: vrep plan cleanup %s", ErrConflict, p.Name, p.Name)
		}
	}
	ru := &run{r: Run{Plan: *p, Mode: mode, Point: point, State: Running, Started: time.Now()}}
	kind := map[Mode]string{Test: KindTest, Planned: KindPlanned, Unplanned: KindFailover}[mode]
	for i, g := range p.Groups {
		add := func(acts []Action) {
			for _, a := range acts {
				s := Step{Group: g.label(i), Kind: KindScript, Action: &a, State: StepPending}
				if a.Manual != "" {
					s.Kind = KindManual
				}
				ru.r.Steps = append(ru.r.Steps, s)
			}
		}
		add(g.Before)
		for _, target := range g.VMs {
			ru.r.Steps = append(ru.r.Steps, Step{Group: g.label(i), Kind: kind, Target: target, State: StepPending})
		}
		add(g.After)
	}
	e.note(ru, "started: a %s run of %d steps over %d groups", mode, len(ru.r.Steps), len(p.Groups))
	if err := e.saveLocked(ru); err != nil {
		return Run{}, err
	}
	e.runs[p.Name] = ru
	e.startLocked(ru)
	return e.copyLocked(ru), nil
}

func (e *Engine) copyLocked(ru *run) Run {
	r := ru.r
	r.Steps = slices.Clone(r.Steps)
	r.Log = slices.Clone(r.Log)
	r.Tests = slices.Clone(r.Tests)
	return r
}

// startLocked starts the goroutine that drives a run.
func (e *Engine) startLocked(ru *run) {
	if e.closed {
		return
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	ru.cancel, ru.done, ru.resume = cancel, make(chan struct{}), make(chan struct{}, 1)
	e.wg.Add(1)
	go e.drive(ctx, ru)
}

// drive runs the steps of a run one at a time until it ends, stops at a
// failure, or its context ends (a cancel, or the daemon stopping).
func (e *Engine) drive(ctx context.Context, ru *run) {
	defer e.wg.Done()
	defer close(ru.done)
	for {
		e.mu.Lock()
		r := &ru.r
		if ctx.Err() != nil {
			st := &r.Steps[min(r.Step, len(r.Steps)-1)]
			e.mu.Unlock()
			e.stopped(ctx, ru, st)
			return
		}
		if r.Step >= len(r.Steps) {
			ru.cancel(nil)
			r.State, r.Ended, ru.cancel = Completed, time.Now(), nil
			if r.Mode == Test {
				e.note(ru, "completed: the test failovers run until vrep plan cleanup %s", r.Plan.Name)
			} else {
				e.note(ru, "completed")
			}
			e.save(ru)
			e.mu.Unlock()
			return
		}
		i := r.Step
		st := &r.Steps[i]
		if st.Kind == KindManual {
			if st.State != StepWaiting {
				st.State, st.Started, r.State = StepWaiting, time.Now(), Waiting
				e.note(ru, "waiting at step %d for the operator (%s): vrep plan continue %s", i+1, st.Action.Manual, r.Plan.Name)
				e.save(ru)
			}
			e.mu.Unlock()
			select {
			case <-ru.resume:
				e.mu.Lock()
				st.State, st.Ended, st.Result, r.State = StepDone, time.Now(), "continued by the operator", Running
				r.Step++
				e.note(ru, "step %d continued by the operator", i+1)
				e.save(ru)
				e.mu.Unlock()
				faultpoint.Hit(faultpoint.PlanStepDone)
				continue
			case <-ctx.Done():
				e.stopped(ctx, ru, st)
				return
			}
		}
		st.State, st.Started, st.Ended, st.Result = StepRunning, time.Now(), time.Time{}, ""
		e.note(ru, "step %d of group %s: %s", i+1, st.Group, st.What())
		e.save(ru)
		step := *st
		e.mu.Unlock()

		result, err := e.exec(ctx, r.Plan.Name, r.Mode, r.Point, step)

		e.mu.Lock()
		if err != nil && ctx.Err() != nil {
			e.mu.Unlock()
			e.stopped(ctx, ru, st)
			return
		}
		st.Ended = time.Now()
		if err == nil {
			st.State, st.Result = StepDone, result
			if st.Kind == KindTest {
				r.Tests = append(r.Tests, st.Target)
			}
			r.Step++
			e.note(ru, "step %d done in %s", i+1, st.Ended.Sub(st.Started).Round(time.Millisecond))
			e.save(ru)
			e.mu.Unlock()
			faultpoint.Hit(faultpoint.PlanStepDone)
			continue
		}
		st.State, st.Result = StepFailed, err.Error()
		if st.Action != nil && st.Action.ContinueOnError {
			st.Result += " (continue_on_error: the plan went on)"
			r.Step++
			e.note(ru, "step %d failed, and the plan goes on (continue_on_error): %v", i+1, err)
			e.save(ru)
			e.mu.Unlock()
			continue
		}
		ru.cancel(nil)
		r.State, r.Ended, ru.cancel = Failed, time.Now(), nil
		r.Reason = fmt.Sprintf("step %d of group %s (%s) failed: %v; the plan stopped there: vrep plan continue %s --retry (or --skip) goes on, vrep plan cancel %s ends it",
			i+1, st.Group, step.What(), err, r.Plan.Name, r.Plan.Name)
		e.note(ru, "%s", r.Reason)
		e.save(ru)
		e.mu.Unlock()
		return
	}
}

// stopped records why a run's goroutine ends early: a cancel ends the
// run; a daemon stop leaves the state as it is, for the restart.
func (e *Engine) stopped(ctx context.Context, ru *run, st *Step) {
	if !errors.Is(context.Cause(ctx), errCancelled) {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if st.State == StepRunning || st.State == StepWaiting {
		st.State, st.Ended = StepCancelled, time.Now()
	}
	ru.r.State, ru.r.Ended, ru.cancel = Cancelled, time.Now(), nil
	e.cancelledLocked(ru)
}

func (e *Engine) cancelledLocked(ru *run) {
	r := &ru.r
	r.Reason = fmt.Sprintf("cancelled by the operator at step %d", r.Step+1)
	switch {
	case r.Mode == Test && len(r.Tests) > 0:
		r.Reason += fmt.Sprintf("; its test failovers run until vrep plan cleanup %s", r.Plan.Name)
	case r.Mode == Unplanned && r.Step > 0:
		r.Reason += "; the VMs already failed over stay so (vrep failover cancel VM undoes one)"
	}
	e.note(ru, "%s", r.Reason)
	e.save(ru)
}

// exec runs one step.
func (e *Engine) exec(ctx context.Context, plan string, mode Mode, point string, st Step) (string, error) {
	switch st.Kind {
	case KindScript:
		return runScript(ctx, *st.Action, []string{"VREP_PLAN=" + plan, "VREP_PLAN_GROUP=" + st.Group, "VREP_PLAN_MODE=" + string(mode)})
	case KindTest:
		return "test failover started", e.ops.StartTest(ctx, st.Target, point)
	case KindFailover:
		return "failed over", e.ops.Failover(ctx, st.Target, point)
	case KindPlanned:
		return "failed over, nothing lost", e.ops.PlannedFailover(ctx, st.Target)
	}
	return "", fmt.Errorf("plan: unknown step kind %q", st.Kind)
}

func (e *Engine) find(name string) (*run, error) {
	ru := e.runs[name]
	if ru == nil {
		return nil, fmt.Errorf("%w: no plan %q has run here (vrep plan status lists them)", ErrNotFound, name)
	}
	return ru, nil
}

// Status returns a run.
func (e *Engine) Status(name string) (Run, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ru, err := e.find(name)
	if err != nil {
		return Run{}, err
	}
	return e.copyLocked(ru), nil
}

// List returns every run, by name.
func (e *Engine) List() []Run {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := []Run{}
	for _, ru := range e.runs {
		out = append(out, e.copyLocked(ru))
	}
	slices.SortFunc(out, func(a, b Run) int { return strings.Compare(a.Plan.Name, b.Plan.Name) })
	return out
}

// Continue goes on past a manual step (how ""), or past a step that
// failed or was interrupted: how "retry" runs it again, "skip" goes on
// to the next.
func (e *Engine) Continue(name, how string) (Run, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ru, err := e.find(name)
	if err != nil {
		return Run{}, err
	}
	r := &ru.r
	switch r.State {
	case Waiting:
		if how != "" {
			return Run{}, fmt.Errorf("%w: plan %s waits at a manual step; continue it without --%s", ErrInvalid, name, how)
		}
		select {
		case ru.resume <- struct{}{}:
		default:
		}
		return e.copyLocked(ru), nil
	case Failed, Interrupted:
		st := &r.Steps[r.Step]
		switch how {
		case "retry":
			st.State = StepPending
			e.note(ru, "step %d (%s) runs again: continued with --retry", r.Step+1, st.What())
		case "skip":
			st.State, st.Result = StepSkipped, "skipped by the operator"
			e.note(ru, "step %d (%s) skipped: continued with --skip", r.Step+1, st.What())
			r.Step++
		default:
			return Run{}, fmt.Errorf("%w: plan %s stopped at step %d (%s): say --retry to run it again or --skip to go on without it",
				ErrInvalid, name, r.Step+1, st.What())
		}
		r.State, r.Reason, r.Ended = Running, "", time.Time{}
		if err := e.saveLocked(ru); err != nil {
			return Run{}, err
		}
		e.startLocked(ru)
		return e.copyLocked(ru), nil
	case Running:
		return Run{}, fmt.Errorf("%w: plan %s is running (step %d); there is nothing to continue", ErrConflict, name, r.Step+1)
	}
	return Run{}, fmt.Errorf("%w: plan %s is %s; there is nothing to continue", ErrConflict, name, strings.ToLower(r.State))
}

// Cancel ends a run at its step: a script under way is killed; what the
// run failed over stays so.
func (e *Engine) Cancel(name string) (Run, error) {
	e.mu.Lock()
	ru, err := e.find(name)
	if err != nil {
		e.mu.Unlock()
		return Run{}, err
	}
	switch ru.r.State {
	case Running, Waiting:
		cancel, done := ru.cancel, ru.done
		e.mu.Unlock()
		cancel(errCancelled)
		<-done
		e.mu.Lock()
	case Failed, Interrupted:
		ru.r.State, ru.r.Ended = Cancelled, time.Now()
		e.cancelledLocked(ru)
	default:
		defer e.mu.Unlock()
		return Run{}, fmt.Errorf("%w: plan %s is %s; there is nothing to cancel", ErrConflict, name, strings.ToLower(ru.r.State))
	}
	defer e.mu.Unlock()
	return e.copyLocked(ru), nil
}

// Cleanup stops the test failovers a test run started (refusing while a
// client holds a disk, unless force).
func (e *Engine) Cleanup(ctx context.Context, name string, force bool) (Run, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ru, err := e.find(name)
	if err != nil {
		return Run{}, err
	}
	r := &ru.r
	switch {
	case r.Mode != Test:
		return Run{}, fmt.Errorf("%w: plan %s ran %s, not as a test: there are no test failovers to clean up", ErrConflict, name, r.Mode)
	case r.State == Running || r.State == Waiting:
		return Run{}, fmt.Errorf("%w: plan %s is %s; cancel it first: vrep plan cancel %s", ErrConflict, name, strings.ToLower(r.State), name)
	}
	for len(r.Tests) > 0 {
		if err := e.ops.StopTest(ctx, r.Tests[0], force); err != nil {
			e.save(ru)
			return Run{}, err
		}
		e.note(ru, "cleanup: the test failover of %s stopped; its writes are discarded", r.Tests[0])
		r.Tests = r.Tests[1:]
	}
	if r.State != CleanedUp {
		r.State = CleanedUp
		e.note(ru, "cleaned up: no test failover of this run is left")
	}
	if err := e.saveLocked(ru); err != nil {
		return Run{}, err
	}
	return e.copyLocked(ru), nil
}

// Close stops the runs' goroutines (a script under way is killed; its
// step stays under way in the state, for the restart to resolve) and
// waits for them.
func (e *Engine) Close() {
	e.mu.Lock()
	e.closed = true
	for _, ru := range e.runs {
		if ru.cancel != nil {
			ru.cancel(errors.New("plan: the daemon is stopping"))
		}
	}
	e.mu.Unlock()
	e.wg.Wait()
}
