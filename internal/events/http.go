package events

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/vrep-io/vrep/internal/daemon"
)

// ErrBadSince is returned for a since parameter that is not a duration.
var ErrBadSince = errors.New("events: bad since")

// ParseSince turns a since parameter ("" for all) into a time.
func ParseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return time.Time{}, fmt.Errorf("%w %q: give a positive duration such as 30m or 24h", ErrBadSince, s)
	}
	return now.Add(-d), nil
}

// Handler serves GET /v1/events[?since=DUR]: the recorded events,
// oldest first (empty when the daemon records none).
func Handler(rec *Recorder) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		since, err := ParseSince(r.URL.Query().Get("since"), time.Now())
		if err != nil {
			daemon.WriteErr(w, http.StatusBadRequest, err)
			return
		}
		evs := []Event{}
		if rec != nil {
			got, err := rec.Events(since)
			if err != nil {
				daemon.WriteErr(w, http.StatusInternalServerError, err)
				return
			}
			evs = append(evs, got...)
		}
		daemon.WriteJSON(w, http.StatusOK, evs)
	}
}
