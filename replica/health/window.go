package health

import (
	"errors"
	"fmt"
	"time"
)

// ResyncWindow is when automatic resyncs may run: outside office hours by
// default, as Hyper-V schedules them. A resync asked for by hand with
// --now runs at once whatever the window.
type ResyncWindow struct {
	// Always: no window, an automatic resync runs at once.
	Always bool
	// From and To are minutes after midnight, local time; To before From
	// wraps past midnight (18:00-06:00).
	From, To int
}

// DefaultResyncWindow is 18:00-06:00.
var DefaultResyncWindow = ResyncWindow{From: 18 * 60, To: 6 * 60}

// ErrBadWindow is returned for a window that does not parse.
var ErrBadWindow = errors.New("health: bad resync window")

// ParseResyncWindow parses "HH:MM-HH:MM" or "always".
func ParseResyncWindow(s string) (ResyncWindow, error) {
	if s == "always" {
		return ResyncWindow{Always: true}, nil
	}
	var h1, m1, h2, m2 int
	if n, err := fmt.Sscanf(s, "%d:%d-%d:%d", &h1, &m1, &h2, &m2); err != nil || n != 4 ||
		h1 < 0 || h1 > 23 || h2 < 0 || h2 > 24 || m1 < 0 || m1 > 59 || m2 < 0 || m2 > 59 || h2 == 24 && m2 != 0 ||
		fmt.Sprintf("%02d:%02d-%02d:%02d", h1, m1, h2, m2) != s {
		return ResyncWindow{}, fmt.Errorf("%w %q: give HH:MM-HH:MM (such as 18:00-06:00) or always", ErrBadWindow, s)
	}
	w := ResyncWindow{From: h1*60 + m1, To: h2*60 + m2}
	if w.From == w.To {
		return ResyncWindow{}, fmt.Errorf("%w %q: it opens and closes at the same time; give always for no window", ErrBadWindow, s)
	}
	return w, nil
}

// String returns the window as ParseResyncWindow reads it.
func (w ResyncWindow) String() string {
	if w.Always {
		return "always"
	}
	return fmt.Sprintf("%02d:%02d-%02d:%02d", w.From/60, w.From%60, w.To/60, w.To%60)
}

// ResyncDecision is the resync policy's answer.
type ResyncDecision struct {
	Run    bool
	Next   time.Time // when the window next opens, if not Run
	Reason string
}

// DecideResync is the resync policy: whether a resync needed for why
// ("the change log overflowed", "asked for by hand", ...) runs at now.
// now overrides the window (vrep resync --now); a resync under way on the
// replica always continues (its image is no disk at any LSN until it
// completes).
func DecideResync(w ResyncWindow, needed bool, why string, byHandNow, underWay bool, now time.Time) ResyncDecision {
	switch {
	case !needed:
		return ResyncDecision{Reason: "no resync needed"}
	case underWay:
		return ResyncDecision{Run: true, Reason: "a resync is under way on the replica: it continues (" + why + ")"}
	case byHandNow:
		return ResyncDecision{Run: true, Reason: why + ": --now overrides the resync window"}
	case w.Always:
		return ResyncDecision{Run: true, Reason: why + ": the resync window is always"}
	}
	min := now.Hour()*60 + now.Minute()
	in := w.From < w.To && min >= w.From && min < w.To || w.From > w.To && (min >= w.From || min < w.To)
	if in {
		return ResyncDecision{Run: true, Reason: why + ": inside the resync window " + w.String()}
	}
	y, mo, d := now.Date()
	next := time.Date(y, mo, d, w.From/60, w.From%60, 0, 0, now.Location())
	if !next.After(now) {
		next = next.AddDate(0, 0, 1)
	}
	return ResyncDecision{Next: next, Reason: fmt.Sprintf("%s: waits for the resync window %s (opens %s); vrep resync VM --now runs it at once",
		why, w, next.Format("2006-01-02 15:04"))}
}
