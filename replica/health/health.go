// Package health judges a disk's replication health, on either side of
// a stream, as pure functions from state and time to a verdict and its
// reason (Hyper-V's Normal, Warning and Critical).
package health

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Health is a disk's replication health, as Hyper-V names it.
type Health string

// Health values.
const (
	Normal   Health = "Normal"
	Warning  Health = "Warning"  // retrying a recoverable error
	Critical Health = "Critical" // stopped: the operator must act
)

// Health judgement, on both sides of a stream: pure functions from what a
// side knows and the time to a health level and the reason for it, so the
// policy is read (and tested) in one place. Neither does I/O.

// FallbackExpected is the interval a health judgement expects when the
// copy frequency is not known: Hyper-V's longest copy frequency.
const FallbackExpected = 15 * time.Minute

// Bounds returns how old the newest replicated state may grow before it
// is a Warning and a Critical, for a copy (or point) interval: a missed
// interval is normal on a busy link, two are a Warning; six, plus time to
// notice, are Critical. For 15 minutes this is about Hyper-V's 30 minutes
// and 2 hours.
func Bounds(expected time.Duration) (warn, critical time.Duration) {
	if expected <= 0 {
		expected = FallbackExpected
	}
	return 2*expected + 30*time.Second, 6*expected + 5*time.Minute
}

// RPO is an operator's recovery point objective for a VM: past Warn the
// replica's lag (or, on the replica, the newest point's age) is a
// Warning, past Critical a Critical. Zero Warn: judge by the copy
// frequency (Bounds) instead.
type RPO struct {
	Warn, Critical time.Duration
}

// CriticalFactor is how many thresholds of lag are Critical when an RPO
// names no second bound.
const CriticalFactor = 3

// bounds returns the Warning and Critical bounds for an expected
// interval: the RPO's when it has one, else Bounds'.
func (r RPO) bounds(expected time.Duration) (warn, critical time.Duration) {
	if r.Warn <= 0 {
		return Bounds(expected)
	}
	critical = r.Critical
	if critical <= r.Warn {
		critical = CriticalFactor * r.Warn
	}
	return r.Warn, critical
}

// past says, for a reason, which bound a lag passed.
func (r RPO) past(lag, crit time.Duration) string {
	switch {
	case r.Warn <= 0:
		return ""
	case lag > crit:
		return fmt.Sprintf(", past the RPO's critical bound of %s", FrequencyName(crit))
	}
	return fmt.Sprintf(", past the RPO threshold of %s", FrequencyName(r.Warn))
}

// RPOPolicy is the RPO of every VM: Default, and by VM name.
type RPOPolicy struct {
	Default RPO
	VMs     map[string]RPO
}

// For returns the RPO of a VM.
func (p RPOPolicy) For(vm string) RPO {
	if r, ok := p.VMs[vm]; ok {
		return r
	}
	return p.Default
}

// ErrBadRPO is returned for an RPO threshold that is not WARN[,CRITICAL].
var ErrBadRPO = errors.New("health: bad RPO threshold")

// ParseRPO parses an --rpo-threshold: "[VM=]WARN[,CRITICAL]", durations
// such as 5m or 30s (CRITICAL, if given, past WARN). vm is "" for the
// daemon's default.
func ParseRPO(s string) (vm string, r RPO, err error) {
	spec := s
	if v, rest, ok := strings.Cut(s, "="); ok {
		vm, spec = v, rest
	}
	ws, cs, hasCrit := strings.Cut(spec, ",")
	bad := func() (string, RPO, error) {
		return "", RPO{}, fmt.Errorf("%w %q: give [VM=]WARN[,CRITICAL], durations such as 5m,15m, the second past the first", ErrBadRPO, s)
	}
	if r.Warn, err = time.ParseDuration(ws); err != nil || r.Warn <= 0 {
		return bad()
	}
	if hasCrit {
		if r.Critical, err = time.ParseDuration(cs); err != nil || r.Critical <= r.Warn {
			return bad()
		}
	}
	return vm, r, nil
}

// FrequencyName is how a copy frequency is shown: "continuous" or a
// duration.
func FrequencyName(interval time.Duration) string {
	if interval <= 0 {
		return "continuous"
	}
	// As an operator writes it: 5m, 15m, 1h30m, not 5m0s.
	s := interval.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// ShipState is what the primary knows about one disk's stream.
type ShipState struct {
	VM string // the VM, named in the commands the reason suggests
	// Stopped is the non-recoverable error that stopped shipping ("" if
	// none): the operator must act, then resume.
	Stopped string
	// Resync: the change log overflowed, noticed at OverflowAt (zero: not
	// yet, or before this daemon started), and the disk left log mode.
	Resync     bool
	OverflowAt time.Time
	// ResyncPlan says what the resync does (running, waiting for its
	// window), if one was asked for or is needed.
	ResyncPlan string
	// Connected says whether a stream is open; Since is when it opened,
	// or when it was lost (or the shipper started, if it never opened).
	Connected bool
	Since     time.Time
	LastErr   string    // why the last connection ended
	RetryAt   time.Time // the next attempt, while not connected
	// CopyDone: the replica is known to hold a complete initial copy.
	CopyDone bool
	Initial  int // initial copy progress, percent
	// Interval is the copy frequency (0: continuous); PointsEvery how
	// often points are taken (the interval of continuous mode).
	Interval, PointsEvery time.Duration
	// Behind: the log holds records the replica has not acknowledged,
	// since CaughtUp (the last time it had everything; zero: unknown).
	Behind   bool
	CaughtUp time.Time
	// RPO, when set, bounds the lag instead of the copy frequency.
	RPO RPO
}

// Expected is the interval at which the replica should get something new.
func (s ShipState) Expected() time.Duration {
	if s.Interval > 0 {
		return s.Interval
	}
	return s.PointsEvery
}

// Lag is how far behind the replica is: known is false before the first
// copy completes, or when the primary has not seen the replica hold
// everything since it started.
func (s ShipState) Lag(now time.Time) (lag time.Duration, known bool) {
	switch {
	case !s.Behind && s.CopyDone:
		return 0, true
	case !s.CopyDone || s.CaughtUp.IsZero():
		return 0, false
	}
	return max(0, now.Sub(s.CaughtUp)), true
}

func resyncPlan(p string) string {
	if p == "" {
		return "it runs automatically in the resync window"
	}
	return p
}

// JudgeShipping is the primary's health policy for one disk's stream.
func JudgeShipping(s ShipState, now time.Time) (Health, string) {
	resume := fmt.Sprintf("vrep replication resume %s", s.VM)
	switch {
	case s.Resync:
		at := "before this daemon started"
		if !s.OverflowAt.IsZero() {
			at = "(noticed at " + stamp(s.OverflowAt) + ")"
		}
		return Critical, fmt.Sprintf("resync required: the change log overflowed %s because the replica did not "+
			"acknowledge it in time, so the disk left log mode and only marks the regions written since. "+
			"A resync is needed (%s; vrep resync %s --now runs it at once); "+
			"the recovery points the replica took before stay readable (vrep points %s)", at, resyncPlan(s.ResyncPlan), s.VM, s.VM)
	case s.Stopped != "":
		return Critical, fmt.Sprintf("replication stopped: %s; fix the cause, then run %s", s.Stopped, resume)
	}
	lag, known := s.Lag(now)
	warn, crit := s.RPO.bounds(s.Expected())
	if !s.Connected {
		why := "not connected since " + stamp(s.Since)
		if s.LastErr != "" {
			why += ": " + s.LastErr
		}
		if !s.RetryAt.IsZero() {
			why += fmt.Sprintf("; retrying at %s (%s retries now)", stamp(s.RetryAt), resume)
		}
		if known && lag > warn && s.RPO.Warn > 0 {
			why += fmt.Sprintf("; the replica is %s behind%s", lag.Round(time.Second), s.RPO.past(lag, crit))
		}
		if known && lag > crit {
			return Critical, why
		}
		return Warning, why
	}
	if !known || lag <= warn {
		return Normal, ""
	}
	why := fmt.Sprintf("the replica is %s behind (copy frequency %s%s)", lag.Round(time.Second), FrequencyName(s.Interval), s.RPO.past(lag, crit))
	if lag > crit {
		return Critical, why
	}
	return Warning, why
}

// ReplicaState is what the replica knows about one disk.
type ReplicaState struct {
	Seeded    bool
	LastPoint time.Time // the newest point's time; zero: none
	// Connected says whether a primary's stream is open; Since is when it
	// opened or closed (or when the replica started, if none came since).
	Connected bool
	Since     time.Time
	// Interval and PointsEvery are the copy frequency and point interval
	// the primary last announced; zero PointsEvery: not known.
	Interval, PointsEvery time.Duration
	// RPO, when set, bounds the newest point's age instead of the point
	// interval.
	RPO RPO
}

// JudgeReplica is the replica's health policy for one disk: the newest
// point is judged against the primary's point interval, and a disk no
// primary streams to is at least a Warning.
func JudgeReplica(s ReplicaState, now time.Time) (Health, string) {
	var reasons []string
	h := Normal
	worse := func(to Health, why string) {
		if to == Critical || h == Normal {
			h = to
		}
		reasons = append(reasons, why)
	}
	expected := s.PointsEvery
	if expected <= 0 {
		expected = s.Interval
	}
	warn, crit := s.RPO.bounds(expected)
	switch {
	case !s.Seeded:
		worse(Warning, "initial replication not complete")
	case s.LastPoint.IsZero():
		worse(Warning, "no recovery point yet")
	default:
		age := max(0, now.Sub(s.LastPoint))
		every := "frequency not known yet"
		if expected > 0 {
			every = "points expected every " + expected.String()
		}
		why := fmt.Sprintf("the newest recovery point is %s old (%s%s)", age.Round(time.Second), every, s.RPO.past(age, crit))
		switch {
		case age > crit:
			worse(Critical, why)
		case age > warn:
			worse(Warning, why)
		}
	}
	if !s.Connected {
		worse(Warning, "no primary connected since "+stamp(s.Since))
	}
	return h, strings.Join(reasons, "; ")
}

// stamp is how a health reason shows a time.
func stamp(t time.Time) string {
	if t.IsZero() {
		return "an unknown time"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}
