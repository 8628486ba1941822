package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vrep-io/vrep/internal/jobs"
	"github.com/vrep-io/vrep/internal/replicad"
	"github.com/vrep-io/vrep/internal/waitfor"
)

// apiDo makes one request on a daemon's API socket and returns the
// status and the body (the error's sentence for a JSON error).
func apiDo(t *testing.T, sock, method, target string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: waitfor.Patience, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	req, _ := http.NewRequest(method, "http://vrep"+target, nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e struct{ Error string }
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return resp.StatusCode, e.Error
	}
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// TestMalformedQueries: every API and page endpoint of both daemons
// answers a malformed query parameter (unknown, given twice, of the wrong
// form) with 400 and one sentence, and does nothing; a GET on a route
// that changes state is refused (405) and changes nothing.
func TestMalformedQueries(t *testing.T) {
	need(t, "qemu-io")
	e := newEnv(t, 16<<20)
	pkiDir, addr := replicationSetup(t, e)
	repData := filepath.Join(e.dir, "replica")
	startReplica(t, e.dir, pkiDir, addr)
	e.start(t, replicaFlags(addr, pkiDir, "--points-every", "1h")...)
	qemuIO(t, e.uri("vm1/disk0"), "write -P 0x11 0 1M", "flush")
	waitReplicated(t, e)
	if code, out := vrepRun(t, "point", "create", "vm1", "--state", e.state); code != 0 {
		t.Fatalf("point create: %d\n%s", code, out)
	}
	waitfor.True(t, "the point on the replica", func() bool {
		code, out := vrepRun(t, "points", "vm1", "--data", repData, "--json")
		return code == 0 && strings.Contains(out, `"id"`)
	})
	pri, rep := filepath.Join(e.state, "api.sock"), filepath.Join(repData, "api.sock")
	state := func() string { // what must not change: points, jobs, failovers, tests
		_, pp := apiDo(t, pri, "GET", "/v1/points")
		_, rp := apiDo(t, rep, "GET", "/v1/points?vm=vm1")
		var pj, rj []jobs.Job
		vrepJSON := func(sock string, out *[]jobs.Job) {
			_, b := apiDo(t, sock, "GET", "/v1/jobs")
			json.Unmarshal([]byte(b), out)
		}
		vrepJSON(pri, &pj)
		vrepJSON(rep, &rj)
		var st replicad.Status
		_, b := apiDo(t, rep, "GET", "/v1/status")
		json.Unmarshal([]byte(b), &st)
		return strings.Join([]string{pp, rp, string(must(json.Marshal(pj))), string(must(json.Marshal(rj))),
			string(must(json.Marshal(st.Failovers))), string(must(json.Marshal(st.Tests)))}, "\n")
	}
	before := state()

	for _, c := range []struct {
		sock, method, target, want string
	}{
		{pri, "GET", "/?window=banana", `window "banana" must be a duration`},
		{pri, "GET", "/?window=1h&window=2h", `parameter "window" given 2 times`},
		{pri, "GET", "/metrics?format=json", `unknown parameter "format"`},
		{pri, "GET", "/v1/events?since=soon", `"soon"`},
		{pri, "GET", "/v1/events?sinse=1h", `unknown parameter "sinse"`},
		{pri, "GET", "/v1/jobs?all=1", `unknown parameter "all"`},
		{pri, "GET", "/v1/measure?vm=vm1&window=forever", `"forever"`},
		{pri, "GET", "/v1/status?verbose=1", `unknown parameter "verbose"`},
		{pri, "GET", "/v1/points?vm=vm1", `unknown parameter "vm"`},
		{pri, "POST", "/v1/points?target=vm1&app=yes", `app "yes" must be 1 or 0`},
		{pri, "POST", "/v1/points?target=vm1&target=vm2", `parameter "target" given 2 times`},
		{pri, "POST", "/v1/seed/export?vm=vm1", `unknown parameter "vm"`},
		{pri, "POST", "/v1/replication/resume?vm=vm1&vm=vm2", `given 2 times`},
		{pri, "POST", "/v1/replication?vm=vm1&frequency=often", `"often"`},
		{pri, "POST", "/v1/resync?vm=vm1&now=true", `now "true" must be 1 or 0`},
		{pri, "POST", "/v1/verify?vm=vm1&point=abc", `point "abc" must be a point ID`},
		{pri, "GET", "/v1/status?%zz", "not valid URL encoding"},
		{rep, "GET", "/?window=0s", `window "0s"`},
		{rep, "GET", "/metrics?x", `unknown parameter "x"`},
		{rep, "GET", "/v1/events?since=0", `"0"`},
		{rep, "GET", "/v1/jobs?x=1", `unknown parameter "x"`},
		{rep, "GET", "/v1/status?x=1", `unknown parameter "x"`},
		{rep, "GET", "/v1/points?vm=vm1&kind=app", `unknown parameter "kind"`},
		{rep, "POST", "/v1/failover/test?vm=vm1&point=latest", `point "latest" must be a point ID`},
		{rep, "POST", "/v1/failover/test-stop?vm=vm1&force=yes", `force "yes" must be 1 or 0`},
		{rep, "POST", "/v1/failover/start?vm=vm1&pont=1", `unknown parameter "pont"`},
		{rep, "POST", "/v1/failover/start?vm=vm1&vm=vm2", `given 2 times`},
		{rep, "POST", "/v1/failover/cancel?vm=vm1&force=2", `force "2" must be 1 or 0`},
		{rep, "POST", "/v1/failover/commit?vm=vm1&now=1", `unknown parameter "now"`},
	} {
		code, body := apiDo(t, c.sock, c.method, c.target)
		if code != 400 || !strings.Contains(body, c.want) || strings.Contains(body, "\n") {
			t.Errorf("%s %s: %d %q, want 400 and one sentence with %q", c.method, c.target, code, body, c.want)
		}
	}
	// A plain GET on what changes state is refused: 405, or 400 where a
	// GET route of the same path does not take the POST's parameters.
	for _, c := range []struct{ sock, target string }{
		{pri, "/v1/points?target=vm1"}, {pri, "/v1/seed/export"}, {pri, "/v1/replication/resume?vm=vm1"},
		{pri, "/v1/replication?frequency=5m"}, {pri, "/v1/resync?vm=vm1&now=1"}, {pri, "/v1/verify?vm=vm1"},
		{rep, "/v1/failover/test?vm=vm1"}, {rep, "/v1/failover/test-stop?vm=vm1"}, {rep, "/v1/failover/start?vm=vm1"},
		{rep, "/v1/failover/cancel?vm=vm1"}, {rep, "/v1/failover/commit?vm=vm1"},
	} {
		if code, body := apiDo(t, c.sock, "GET", c.target); code != http.StatusMethodNotAllowed && code != http.StatusBadRequest {
			t.Errorf("GET %s: %d %q, want it refused", c.target, code, body)
		}
	}
	if after := state(); after != before {
		t.Fatalf("refused requests changed the daemons' state:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
