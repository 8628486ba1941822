// Package waitfor is how tests wait for an event nothing tells them of:
// they poll a condition until it holds, for as long as Patience. A test
// that waits for its event this way, rather than sleeping for a time it
// hopes is enough, is only made slower by a busy machine, never made to
// fail.
package waitfor

import (
	"testing"
	"time"
)

// Patience is how long a test waits for an event before it calls the
// event missing: far longer than any event takes on an idle machine.
const Patience = 2 * time.Minute

// True polls cond every few milliseconds until it holds; if Patience
// passes first, it fails t with what was awaited. Call it from the test's
// goroutine.
func True(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", Patience, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
