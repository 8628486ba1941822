package events

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
)

// A daemon's log already says, in one place each, when it refused a
// connection, resumed a stream or moved through a failover; the tap turns
// those log records into events, so the code that logs them (shared with
// other work) needs no second call, and the two never disagree. The rules
// name the messages: change a message, change its rule (TestTapRules).
type rule struct {
	kind  Kind
	match func(msg string, attrs map[string]string) bool
}

var rules = []rule{
	{Refused, func(m string, a map[string]string) bool {
		return m == "replica: TLS handshake refused" || m == "replica: refused" || m == "status page: TLS handshake refused" ||
			(m == "replica: stream ended" && (strings.Contains(a["err"], "not authorized") || strings.Contains(a["err"], "not allowed")))
	}},
	{Resume, func(m string, _ map[string]string) bool {
		return strings.HasSuffix(m, ": replication resume asked for by the operator") || strings.Contains(m, ": replication resumed after ")
	}},
	{Interrupted, func(m string, _ map[string]string) bool {
		return m == "replication interrupted" || strings.HasPrefix(m, "replication stopped: ")
	}},
	{Seed, func(m string, _ map[string]string) bool { return strings.HasPrefix(m, "seed: ") }},
	{TestFailover, func(m string, _ map[string]string) bool { return strings.HasPrefix(m, "replica: test failover ") }},
	{Failover, func(m string, _ map[string]string) bool {
		for _, p := range []string{"replica: failover", "replica: failed over", "replica: failed-over VM", "replica: finishing a commit", "replica: planned failover", "replica: unplanned failover", "replica: promot", "replica: commit", "failover", "disk fenced: "} {
			if strings.HasPrefix(m, p) {
				return true
			}
		}
		return false
	}},
}

// Tap returns a slog.Handler that passes every record to next and
// records those the rules name as events in r.
func Tap(next slog.Handler, r *Recorder) slog.Handler { return &tap{next: next, r: r} }

type tap struct {
	next  slog.Handler
	r     *Recorder
	attrs []slog.Attr
}

func (t *tap) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || t.next.Enabled(ctx, l)
}

func (t *tap) Handle(ctx context.Context, rec slog.Record) error {
	if rec.Level >= slog.LevelInfo {
		t.observe(rec)
	}
	if !t.next.Enabled(ctx, rec.Level) {
		return nil
	}
	return t.next.Handle(ctx, rec)
}

func (t *tap) observe(rec slog.Record) {
	var attrs map[string]string
	get := func() map[string]string {
		if attrs == nil {
			attrs = map[string]string{}
			for _, a := range t.attrs {
				attrs[a.Key] = a.Value.String()
			}
			rec.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value.String(); return true })
		}
		return attrs
	}
	for _, ru := range rules {
		if !ru.match(rec.Message, get()) {
			continue
		}
		a := get()
		e := Event{Time: rec.Time, Kind: ru.kind, Disk: a["disk"], VM: a["vm"], Reason: strings.TrimPrefix(rec.Message, "replica: ")}
		if e.VM == "" && e.Disk != "" {
			e.VM, _, _ = strings.Cut(e.Disk, "/")
		}
		var more []string
		for _, k := range []string{"primary", "remote", "point", "err", "was", "stopped_by"} {
			if v := a[k]; v != "" {
				more = append(more, fmt.Sprintf("%s %s", k, v))
			}
		}
		if len(more) > 0 {
			e.Reason += " (" + strings.Join(more, ", ") + ")"
		}
		t.r.Record(e)
		return
	}
}

func (t *tap) WithAttrs(as []slog.Attr) slog.Handler {
	return &tap{next: t.next.WithAttrs(as), r: t.r, attrs: append(append([]slog.Attr(nil), t.attrs...), as...)}
}

func (t *tap) WithGroup(name string) slog.Handler {
	return &tap{next: t.next.WithGroup(name), r: t.r, attrs: t.attrs}
}
