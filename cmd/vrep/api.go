package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	vdaemon "github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/host"
)

// apiFlags are how admin commands find a daemon's API socket.
type apiFlags struct {
	api, state, data string
	json             bool
	// want is the role the command talks to ("primary", "replica", or ""
	// for either) and why, in the operator's words ("points are taken on
	// the primary"): a command sent to the wrong daemon says so.
	want, why string
	// timeout bounds a call (default two minutes).
	timeout time.Duration
}

// needs says which daemon the command talks to, and why.
func (a *apiFlags) needs(role, why string) { a.want, a.why = role, why }

// roleHeader names the role of the daemon that answered; both daemons set
// it on every API answer (daemon.WithRole).
const roleHeader = vdaemon.RoleHeader

func (a *apiFlags) register(f *pflag.FlagSet) {
	f.StringVar(&a.api, "api", "", "the daemon's API socket, [unix:]PATH")
	f.StringVar(&a.state, "state", "", "the primary's state directory (its API socket is STATE/api.sock)")
	f.StringVar(&a.data, "data", "", "the replica's data directory (its API socket is DATA/api.sock)")
	f.BoolVar(&a.json, "json", false, "print JSON, for scripts")
}

func (a *apiFlags) socket() (string, error) {
	hostData := false
	if a.data != "" {
		_, err := os.Stat(filepath.Join(a.data, "roles"))
		hostData = err == nil // a host daemon's data directory: both roles
	}
	switch {
	case a.want == "primary" && a.data != "" && a.api == "" && a.state == "" && !hostData:
		return "", fmt.Errorf("%w: %s; --data names a replica's data directory: give the primary's --state DIR", errUsage, a.why)
	case a.want == "replica" && a.state != "" && a.api == "" && a.data == "":
		return "", fmt.Errorf("%w: %s; --state names a primary's state directory: give the replica's --data DIR", errUsage, a.why)
	}
	switch {
	case a.api != "":
		return strings.TrimPrefix(a.api, "unix:"), nil
	case a.state != "":
		return filepath.Join(a.state, "api.sock"), nil
	case a.data != "":
		return filepath.Join(a.data, "api.sock"), nil
	}
	return "", fmt.Errorf("%w: give --api SOCKET, --state DIR (primary) or --data DIR (replica)", errUsage)
}

// daemonError is the one sentence a daemon answered with, and its HTTP
// status (which sets the exit code).
type daemonError struct {
	status int
	msg    string
}

func (e *daemonError) Error() string { return e.msg }

// call makes one API request and decodes the JSON answer into out.
func (a *apiFlags) call(method, path string, out any) error {
	return a.callBody(method, path, nil, out)
}

// callBody is call with a request body.
func (a *apiFlags) callBody(method, path string, body io.Reader, out any) error {
	timeout := a.timeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	resp, err := a.open(context.Background(), method, path, body, timeout)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	return json.Unmarshal(answer, out)
}

// open makes one API request and returns the answer once it is known to
// be a success (its body still to read; the caller closes it): the
// socket, the role asked for and checked, and an error answer turned into
// its sentence, for every command. timeout 0: none (an answer the daemon
// streams until it is done).
func (a *apiFlags) open(ctx context.Context, method, path string, body io.Reader, timeout time.Duration) (*http.Response, error) {
	sock, err := a.socket()
	if err != nil {
		return nil, err
	}
	client := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
	req, _ := http.NewRequestWithContext(ctx, method, "http://vrep"+path, body)
	req.Header.Set(host.WantRoleHeader, a.want)
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the daemon at %s (is the daemon running?): %w", sock, err)
	}
	if got := resp.Header.Get(roleHeader); a.want != "" && got != "" && got != a.want && got != "host" {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: %s, and the daemon at %s is a %s", errUsage, a.why, sock, got)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	var e struct{ Error string }
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case json.Unmarshal(answer, &e) == nil && e.Error != "":
		return nil, &daemonError{resp.StatusCode, e.Error}
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed:
		return nil, fmt.Errorf("%w: the daemon at %s does not offer %s %s (is it the right daemon, and the same version as this vrep?)", errUsage, sock, method, path)
	}
	return nil, &daemonError{resp.StatusCode, "the daemon answered " + resp.Status}
}

// lines calls fn with each NDJSON line of a streamed answer, and closes
// it.
func lines(resp *http.Response, fn func(line []byte) error) error {
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("the daemon's answer broke off: %w", err)
	}
	return nil
}

// printJSON writes v as indented JSON, for --json.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
