package main

import (
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/replicad"
)

func TestFilterPoints(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	pts := []replicad.VMPoint{
		{ID: 1, Time: now.Add(-3 * time.Hour), Kind: "app-consistent"},
		{ID: 2, Time: now.Add(-2 * time.Hour), Kind: "crash-consistent"},
		{ID: 3, Time: now.Add(-30 * time.Minute), Kind: "app-consistent"},
		{ID: 4, Time: now.Add(-time.Minute), Kind: "crash-consistent"},
	}
	cases := []struct {
		kind  string
		since time.Duration
		last  int
		want  []uint64
	}{
		{"", 0, 0, []uint64{1, 2, 3, 4}},
		{"app", 0, 0, []uint64{1, 3}},
		{"crash", 0, 0, []uint64{2, 4}},
		{"", time.Hour, 0, []uint64{3, 4}},
		{"", 0, 2, []uint64{3, 4}},
		{"app", 0, 1, []uint64{3}},
		{"crash", 90 * time.Minute, 5, []uint64{4}},
		{"app", 10 * time.Minute, 0, nil},
	}
	for _, c := range cases {
		got := filterPoints(pts, c.kind, c.since, c.last, now)
		var ids []uint64
		for _, p := range got {
			ids = append(ids, p.ID)
		}
		if len(ids) != len(c.want) {
			t.Errorf("kind %q since %v last %d: %v, want %v", c.kind, c.since, c.last, ids, c.want)
			continue
		}
		for i := range ids {
			if ids[i] != c.want[i] {
				t.Errorf("kind %q since %v last %d: %v, want %v", c.kind, c.since, c.last, ids, c.want)
				break
			}
		}
	}
	if len(pts) != 4 || pts[0].ID != 1 {
		t.Fatal("filterPoints changed its input")
	}
}
