package daemon

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrBadQuery is returned for a malformed query: not URL-encoded, a
// parameter the route does not take or given twice, or a value of the
// wrong form.
var ErrBadQuery = errors.New("daemon: bad query")

// Param is a query parameter a route takes, and how its value is checked
// (nil: the handler checks it, such as a name).
type Param struct {
	Name  string
	Check func(string) error
}

// Routes maps "METHOD /path" to the parameters the route takes. HEAD is
// checked as GET.
type Routes map[string][]Param

// CheckQuery answers a request to a route of routes whose query is
// malformed with 400 and one sentence (JSON {"error"} under /v1/, plain
// text elsewhere), before h sees it; other requests go to h. So a
// handler never acts on a query it half understood: a misspelt
// parameter is refused, not ignored.
func CheckQuery(routes Routes, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		method := r.Method
		if method == http.MethodHead {
			method = http.MethodGet
		}
		params, ok := routes[method+" "+r.URL.Path]
		if !ok {
			h.ServeHTTP(w, r)
			return
		}
		if err := checkQuery(method+" "+r.URL.Path, r.URL.RawQuery, params); err != nil {
			if strings.HasPrefix(r.URL.Path, "/v1/") {
				WriteErr(w, http.StatusBadRequest, err)
			} else {
				http.Error(w, err.Error()+".", http.StatusBadRequest)
			}
			return
		}
		h.ServeHTTP(w, r)
	})
}

func checkQuery(route, raw string, params []Param) error {
	q, err := url.ParseQuery(raw)
	if err != nil {
		return fmt.Errorf("%w: the query of %s is not valid URL encoding: %v", ErrBadQuery, route, err)
	}
	var names []string
	for _, p := range params {
		names = append(names, p.Name)
	}
	takes := "it takes none"
	if len(names) > 0 {
		takes = "it takes " + strings.Join(names, ", ")
	}
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range q {
			if !yield(k) {
				return
			}
		}
	}) {
		i := slices.IndexFunc(params, func(p Param) bool { return p.Name == k })
		switch {
		case i < 0:
			return fmt.Errorf("%w: unknown parameter %q for %s (%s)", ErrBadQuery, k, route, takes)
		case len(q[k]) > 1:
			return fmt.Errorf("%w: parameter %q given %d times for %s; give it once", ErrBadQuery, k, len(q[k]), route)
		case params[i].Check != nil:
			if err := params[i].Check(q[k][0]); err != nil {
				return fmt.Errorf("%w: %s %q %v", ErrBadQuery, k, q[k][0], err)
			}
		}
	}
	return nil
}

// P is a parameter whose value the handler checks.
func P(name string) Param { return Param{Name: name} }

// Flag is a yes-or-no parameter: 1 or 0.
func Flag(name string) Param {
	return Param{name, func(s string) error {
		if s != "1" && s != "0" {
			return errors.New("must be 1 or 0")
		}
		return nil
	}}
}

// ID is a point ID: a positive integer.
func ID(name string) Param {
	return Param{name, func(s string) error {
		if n, err := strconv.ParseUint(s, 10, 64); err != nil || n == 0 {
			return errors.New("must be a point ID, as vrep points shows")
		}
		return nil
	}}
}

// Duration is a positive duration such as 30m or 24h.
func Duration(name string) Param {
	return Param{name, func(s string) error {
		if d, err := time.ParseDuration(s); err != nil || d <= 0 {
			return errors.New("must be a positive duration such as 30m or 24h")
		}
		return nil
	}}
}
