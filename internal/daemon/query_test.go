package daemon

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestCheckQuery: a malformed query is refused with 400 and one sentence
// before the handler runs; a well-formed one, or a route not listed,
// reaches it.
func TestCheckQuery(t *testing.T) {
	routes := Routes{
		"GET /v1/status":  nil,
		"POST /v1/resync": {P("vm"), Flag("now")},
		"POST /v1/verify": {P("vm"), ID("point")},
		"GET /v1/events":  {Duration("since")},
		"GET /":           {P("window")},
	}
	reached := 0
	h := CheckQuery(routes, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { reached++ }))
	for _, c := range []struct {
		method, target string
		want           string // "" for reaching the handler
	}{
		{"GET", "/v1/status", ""},
		{"HEAD", "/v1/status", ""},
		{"GET", "/v1/status?x=1", `unknown parameter "x" for GET /v1/status (it takes none)`},
		{"POST", "/v1/resync?vm=vm1&now=1", ""},
		{"POST", "/v1/resync?vm=vm1&now=yes", `now "yes" must be 1 or 0`},
		{"POST", "/v1/resync?vm=a&vm=b", `parameter "vm" given 2 times`},
		{"POST", "/v1/resync?disk=d", `unknown parameter "disk" for POST /v1/resync (it takes vm, now)`},
		{"POST", "/v1/verify?point=0", `point "0" must be a point ID`},
		{"POST", "/v1/verify?point=12", ""},
		{"GET", "/v1/events?since=-1h", `since "-1h" must be a positive duration`},
		{"GET", "/v1/events?since=%zz", "not valid URL encoding"},
		{"GET", "/?window=1h&colour=red", `unknown parameter "colour"`},
		{"GET", "/elsewhere?anything=1", ""},
	} {
		before := reached
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(c.method, c.target, nil))
		body := strings.TrimSpace(w.Body.String())
		var e struct{ Error string }
		if json.Unmarshal(w.Body.Bytes(), &e) == nil {
			body = e.Error
		}
		switch {
		case c.want == "" && (w.Code != 200 || reached != before+1):
			t.Errorf("%s %s: %d %q, want the handler", c.method, c.target, w.Code, body)
		case c.want != "" && (w.Code != 400 || reached != before || !strings.Contains(body, c.want) || strings.Contains(body, "\n")):
			t.Errorf("%s %s: %d %q (handler ran: %v), want 400 with %q", c.method, c.target, w.Code, body, reached != before, c.want)
		}
	}
	if !errors.Is(checkQuery("GET /", "a=1", nil), ErrBadQuery) {
		t.Error("not ErrBadQuery")
	}
}
