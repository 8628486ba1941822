package main

import (
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
	sock, err := a.socket()
	if err != nil {
		return err
	}
	timeout := a.timeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	client := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
	req, _ := http.NewRequest(method, "http://vrep"+path, body)
	req.Header.Set(host.WantRoleHeader, a.want)
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the daemon at %s (is the daemon running?): %w", sock, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if got := resp.Header.Get(roleHeader); a.want != "" && got != "" && got != a.want && got != "host" {
		return fmt.Errorf("%w: %s, and the daemon at %s is a %s", errUsage, a.why, sock, got)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(answer, &e) == nil && e.Error != "" {
			return &daemonError{resp.StatusCode, e.Error}
		}
		if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
			return fmt.Errorf("%w: the daemon at %s does not offer %s %s (is it the right daemon, and the same version as this vrep?)", errUsage, sock, method, path)
		}
		return &daemonError{resp.StatusCode, "the daemon answered " + resp.Status}
	}
	return json.Unmarshal(answer, out)
}

// printJSON writes v as indented JSON, for --json.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
