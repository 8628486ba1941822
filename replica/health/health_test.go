package health

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestJudgeShipping(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.Local)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	up := ShipState{VM: "vm1", Connected: true, Since: ago(time.Hour), CopyDone: true, Initial: 100, PointsEvery: 5 * time.Second}
	with := func(fn func(*ShipState)) ShipState { s := up; fn(&s); return s }
	cases := []struct {
		name   string
		in     ShipState
		health Health
		reason []string // substrings the reason must hold
		lag    string   // "unknown" or a duration
	}{
		{"caught up", up, Normal, nil, "0s"},
		{"behind within two points", with(func(s *ShipState) { s.Behind, s.CaughtUp = true, ago(20*time.Second) }), Normal, nil, "20s"},
		{"behind past two points", with(func(s *ShipState) { s.Behind, s.CaughtUp = true, ago(time.Minute) }),
			Warning, []string{"1m0s behind", "continuous"}, "1m0s"},
		{"behind past six points", with(func(s *ShipState) { s.Behind, s.CaughtUp = true, ago(10*time.Minute) }),
			Critical, []string{"10m0s behind"}, "10m0s"},
		{"30s frequency, one interval behind", with(func(s *ShipState) {
			s.Interval, s.PointsEvery, s.Behind, s.CaughtUp = 30*time.Second, 30*time.Second, true, ago(45*time.Second)
		}), Normal, nil, "45s"},
		{"30s frequency, three intervals behind", with(func(s *ShipState) {
			s.Interval, s.PointsEvery, s.Behind, s.CaughtUp = 30*time.Second, 30*time.Second, true, ago(100*time.Second)
		}), Warning, []string{"copy frequency 30s"}, "1m40s"},
		{"never replicated, never connected", ShipState{VM: "vm1", Since: ago(time.Minute), LastErr: "connection refused",
			RetryAt: now.Add(time.Minute), Behind: true, PointsEvery: 5 * time.Second},
			Warning, []string{"not connected since", "connection refused", "retrying at", "vrep replication resume vm1"}, "unknown"},
		{"initial copy", ShipState{VM: "vm1", Connected: true, Since: ago(time.Minute), Initial: 40, Behind: true, PointsEvery: 5 * time.Second},
			Normal, nil, "unknown"},
		{"replica gone, lag growing", with(func(s *ShipState) {
			s.Connected, s.Since, s.LastErr, s.RetryAt, s.Behind, s.CaughtUp = false, ago(20*time.Second), "EOF", now.Add(time.Hour), true, ago(25*time.Second)
		}), Warning, []string{"not connected since", "EOF"}, "25s"},
		{"replica gone for long", with(func(s *ShipState) {
			s.Connected, s.Since, s.LastErr, s.Behind, s.CaughtUp = false, ago(time.Hour), "EOF", true, ago(time.Hour)
		}), Critical, []string{"not connected since"}, "1h0m0s"},
		{"stopped", with(func(s *ShipState) { s.Connected, s.Stopped = false, "replica says: not allowed" }),
			Critical, []string{"not allowed", "fix the cause", "vrep replication resume vm1"}, "0s"},
		{"log overflowed", with(func(s *ShipState) { s.Connected, s.Resync, s.OverflowAt = false, true, ago(time.Minute) }),
			Critical, []string{"resync required", "overflowed (noticed at", "resync window", "vrep resync vm1", "stay readable"}, "0s"},
		{"RPO 10s, 20s behind (the frequency alone says Normal)", with(func(s *ShipState) {
			s.RPO, s.Behind, s.CaughtUp = RPO{Warn: 10 * time.Second}, true, ago(20*time.Second)
		}), Warning, []string{"20s behind", "past the RPO threshold of 10s"}, "20s"},
		{"RPO 10s, 5s behind", with(func(s *ShipState) {
			s.RPO, s.Behind, s.CaughtUp = RPO{Warn: 10 * time.Second}, true, ago(5*time.Second)
		}), Normal, nil, "5s"},
		{"RPO 10s, no second bound: Critical at three thresholds", with(func(s *ShipState) {
			s.RPO, s.Behind, s.CaughtUp = RPO{Warn: 10 * time.Second}, true, ago(31*time.Second)
		}), Critical, []string{"31s behind", "past the RPO's critical bound of 30s"}, "31s"},
		{"RPO 10s,1m: 50s behind is a Warning", with(func(s *ShipState) {
			s.RPO, s.Behind, s.CaughtUp = RPO{Warn: 10 * time.Second, Critical: time.Minute}, true, ago(50*time.Second)
		}), Warning, []string{"past the RPO threshold of 10s"}, "50s"},
		{"RPO 1h: a lag the frequency calls Critical is Normal", with(func(s *ShipState) {
			s.RPO, s.Behind, s.CaughtUp = RPO{Warn: time.Hour}, true, ago(10*time.Minute)
		}), Normal, nil, "10m0s"},
		{"RPO 10s,1m, replica gone past the critical bound", with(func(s *ShipState) {
			s.RPO, s.Connected, s.Since, s.LastErr, s.Behind, s.CaughtUp = RPO{Warn: 10 * time.Second, Critical: time.Minute}, false, ago(2*time.Minute), "EOF", true, ago(2*time.Minute)
		}), Critical, []string{"not connected since", "2m0s behind", "past the RPO's critical bound of 1m"}, "2m0s"},
		{"RPO 10s,1m, replica gone past the threshold", with(func(s *ShipState) {
			s.RPO, s.Connected, s.Since, s.LastErr, s.Behind, s.CaughtUp = RPO{Warn: 10 * time.Second, Critical: time.Minute}, false, ago(20*time.Second), "EOF", true, ago(20*time.Second)
		}), Warning, []string{"not connected since", "20s behind", "past the RPO threshold of 10s"}, "20s"},
		{"log overflowed before the daemon started", with(func(s *ShipState) { s.Resync, s.Stopped = true, "broken chain" }),
			Critical, []string{"before this daemon started"}, "0s"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, why := JudgeShipping(c.in, now)
			if h != c.health {
				t.Errorf("health %s (%s), want %s", h, why, c.health)
			}
			if h == Normal && why != "" {
				t.Errorf("Normal with a reason: %s", why)
			}
			if h != Normal && why == "" {
				t.Errorf("%s without a reason", h)
			}
			for _, r := range c.reason {
				if !strings.Contains(why, r) {
					t.Errorf("reason %q lacks %q", why, r)
				}
			}
			lag, known := c.in.Lag(now)
			got := "unknown"
			if known {
				got = lag.String()
			}
			if got != c.lag {
				t.Errorf("lag %s, want %s", got, c.lag)
			}
		})
	}
}

func TestJudgeReplica(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.Local)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	up := ReplicaState{Seeded: true, LastPoint: ago(3 * time.Second), Connected: true, Since: ago(time.Hour), PointsEvery: 5 * time.Second}
	with := func(fn func(*ReplicaState)) ReplicaState { s := up; fn(&s); return s }
	cases := []struct {
		name   string
		in     ReplicaState
		health Health
		reason []string
	}{
		{"continuous, fresh", up, Normal, nil},
		{"continuous, 84 s old point, primary connected", with(func(s *ReplicaState) { s.LastPoint = ago(84 * time.Second) }),
			Warning, []string{"1m24s old", "points expected every 5s"}},
		{"continuous, 84 s old point, no primary", with(func(s *ReplicaState) {
			s.LastPoint, s.Connected, s.Since = ago(84*time.Second), false, ago(80*time.Second)
		}), Warning, []string{"1m24s old", "no primary connected since"}},
		{"continuous, 10 minutes old", with(func(s *ReplicaState) { s.LastPoint = ago(10 * time.Minute) }), Critical, []string{"10m0s old"}},
		{"no primary, fresh point", with(func(s *ReplicaState) { s.Connected, s.Since = false, ago(time.Second) }),
			Warning, []string{"no primary connected since"}},
		{"15 min frequency, 20 minutes old", with(func(s *ReplicaState) {
			s.Interval, s.PointsEvery, s.LastPoint = 15*time.Minute, 15*time.Minute, ago(20*time.Minute)
		}), Normal, nil},
		{"15 min frequency, 40 minutes old", with(func(s *ReplicaState) {
			s.Interval, s.PointsEvery, s.LastPoint = 15*time.Minute, 15*time.Minute, ago(40*time.Minute)
		}), Warning, []string{"40m0s old", "every 15m0s"}},
		{"15 min frequency, 3 hours old", with(func(s *ReplicaState) {
			s.Interval, s.PointsEvery, s.LastPoint = 15*time.Minute, 15*time.Minute, ago(3*time.Hour)
		}), Critical, []string{"3h0m0s old"}},
		{"frequency unknown, 20 minutes old", with(func(s *ReplicaState) { s.PointsEvery, s.LastPoint = 0, ago(20*time.Minute) }), Normal, nil},
		{"frequency unknown, 40 minutes old", with(func(s *ReplicaState) { s.PointsEvery, s.LastPoint = 0, ago(40*time.Minute) }),
			Warning, []string{"frequency not known yet"}},
		{"not seeded", with(func(s *ReplicaState) { s.Seeded, s.LastPoint = false, time.Time{} }), Warning, []string{"initial replication not complete"}},
		{"no point yet", with(func(s *ReplicaState) { s.LastPoint = time.Time{} }), Warning, []string{"no recovery point yet"}},
		{"RPO 1m, 84 s old point", with(func(s *ReplicaState) { s.RPO, s.LastPoint = RPO{Warn: time.Minute}, ago(84*time.Second) }),
			Warning, []string{"1m24s old", "past the RPO threshold of 1m"}},
		{"RPO 1m,2m, 3 minutes old", with(func(s *ReplicaState) {
			s.RPO, s.LastPoint = RPO{Warn: time.Minute, Critical: 2 * time.Minute}, ago(3*time.Minute)
		}), Critical, []string{"3m0s old", "past the RPO's critical bound of 2m"}},
		{"RPO 1h, 10 minutes old (the interval alone says Critical)", with(func(s *ReplicaState) {
			s.RPO, s.LastPoint = RPO{Warn: time.Hour}, ago(10*time.Minute)
		}), Normal, nil},
		{"Critical stays Critical without a primary", with(func(s *ReplicaState) {
			s.LastPoint, s.Connected = ago(time.Hour), false
		}), Critical, []string{"1h0m0s old", "no primary connected"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, why := JudgeReplica(c.in, now)
			if h != c.health {
				t.Errorf("health %s (%s), want %s", h, why, c.health)
			}
			if (h == Normal) != (why == "") {
				t.Errorf("health %s with reason %q", h, why)
			}
			for _, r := range c.reason {
				if !strings.Contains(why, r) {
					t.Errorf("reason %q lacks %q", why, r)
				}
			}
		})
	}
}

func TestFrequencyName(t *testing.T) {
	for in, want := range map[time.Duration]string{0: "continuous", 30 * time.Second: "30s", 5 * time.Minute: "5m",
		15 * time.Minute: "15m", time.Hour: "1h", 90 * time.Minute: "1h30m", 1500 * time.Millisecond: "1.5s", 61 * time.Second: "1m1s"} {
		if got := FrequencyName(in); got != want {
			t.Errorf("FrequencyName(%v) = %q, want %q", in, got, want)
		}
	}
}

func TestParseRPO(t *testing.T) {
	cases := []struct {
		in   string
		vm   string
		want RPO
		ok   bool
	}{
		{"5m", "", RPO{Warn: 5 * time.Minute}, true},
		{"5m,15m", "", RPO{Warn: 5 * time.Minute, Critical: 15 * time.Minute}, true},
		{"vm1=30s", "vm1", RPO{Warn: 30 * time.Second}, true},
		{"vm1=30s,2m", "vm1", RPO{Warn: 30 * time.Second, Critical: 2 * time.Minute}, true},
		{"", "", RPO{}, false},
		{"0s", "", RPO{}, false},
		{"-5m", "", RPO{}, false},
		{"5m,5m", "", RPO{}, false},
		{"5m,1m", "", RPO{}, false},
		{"vm1=", "", RPO{}, false},
		{"soon", "", RPO{}, false},
		{"5m,later", "", RPO{}, false},
	}
	for _, c := range cases {
		vm, r, err := ParseRPO(c.in)
		if (err == nil) != c.ok || vm != c.vm || r != c.want {
			t.Errorf("ParseRPO(%q) = %q, %+v, %v; want %q, %+v, ok %v", c.in, vm, r, err, c.vm, c.want, c.ok)
		}
		if err != nil && !errors.Is(err, ErrBadRPO) {
			t.Errorf("ParseRPO(%q): %v is not ErrBadRPO", c.in, err)
		}
	}
	p := RPOPolicy{Default: RPO{Warn: time.Minute}, VMs: map[string]RPO{"vm2": {Warn: time.Second}}}
	if p.For("vm1").Warn != time.Minute || p.For("vm2").Warn != time.Second {
		t.Errorf("RPOPolicy.For: %+v", p)
	}
}
