package health

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDecideResync(t *testing.T) {
	at := func(h, m int) time.Time { return time.Date(2026, 3, 2, h, m, 0, 0, time.Local) }
	night := DefaultResyncWindow
	day, _ := ParseResyncWindow("09:00-17:00")
	cases := []struct {
		name          string
		w             ResyncWindow
		needed        bool
		now, underWay bool
		at            time.Time
		run           bool
		next          time.Time
		reason        string
	}{
		{"not needed", night, false, true, true, at(20, 0), false, time.Time{}, "no resync needed"},
		{"office hours: wait for 18:00", night, true, false, false, at(10, 30), false, at(18, 0), "waits for the resync window 18:00-06:00"},
		{"evening: run", night, true, false, false, at(18, 0), true, time.Time{}, "inside"},
		{"after midnight: run", night, true, false, false, at(5, 59), true, time.Time{}, "inside"},
		{"06:00 closes", night, true, false, false, at(6, 0), false, at(18, 0), "opens 2026-03-02 18:00"},
		{"--now overrides", night, true, true, false, at(10, 0), true, time.Time{}, "--now"},
		{"under way continues", night, true, false, true, at(10, 0), true, time.Time{}, "under way"},
		{"always", ResyncWindow{Always: true}, true, false, false, at(12, 0), true, time.Time{}, "always"},
		{"day window, evening: next morning", day, true, false, false, at(20, 0), false, at(9, 0).AddDate(0, 0, 1), "09:00-17:00"},
		{"day window, noon", day, true, false, false, at(12, 0), true, time.Time{}, "inside"},
	}
	for _, c := range cases {
		d := DecideResync(c.w, c.needed, "the change log overflowed", c.now, c.underWay, c.at)
		if d.Run != c.run || !d.Next.Equal(c.next) || !strings.Contains(d.Reason, c.reason) {
			t.Errorf("%s: got %+v, want run %v next %v reason ~%q", c.name, d, c.run, c.next, c.reason)
		}
	}
}

func TestParseResyncWindow(t *testing.T) {
	for _, s := range []string{"18:00-06:00", "always", "00:00-24:00", "09:30-17:45"} {
		w, err := ParseResyncWindow(s)
		if err != nil || w.String() != s {
			t.Errorf("%q: %v %v", s, w, err)
		}
	}
	for _, s := range []string{"", "18-06", "25:00-06:00", "18:00-18:00", "6:00-18:00", "18:00-06:60", "never"} {
		if _, err := ParseResyncWindow(s); !errors.Is(err, ErrBadWindow) {
			t.Errorf("%q: want ErrBadWindow, got %v", s, err)
		}
	}
}
