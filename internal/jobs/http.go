package jobs

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/vrep-io/vrep/internal/daemon"
)

// ErrBadQuery is returned for a query parameter GET /v1/jobs does not take.
var ErrBadQuery = errors.New("jobs: bad query")

// Handler serves GET /v1/jobs: the running and recent jobs, oldest
// first. It takes no parameters.
func Handler(l *Log) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for k := range r.URL.Query() {
			daemon.WriteErr(w, http.StatusBadRequest, fmt.Errorf("%w: unknown parameter %q (/v1/jobs takes none)", ErrBadQuery, k))
			return
		}
		daemon.WriteJSON(w, http.StatusOK, l.List())
	}
}
