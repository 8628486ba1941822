package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// apiFlags are how admin commands find a daemon's API socket.
type apiFlags struct {
	api, state, data string
	json             bool
}

func (a *apiFlags) register(f *pflag.FlagSet) {
	f.StringVar(&a.api, "api", "", "the daemon's API socket, [unix:]PATH")
	f.StringVar(&a.state, "state", "", "the primary's state directory (its API socket is STATE/api.sock)")
	f.StringVar(&a.data, "data", "", "the replica's data directory (its API socket is DATA/api.sock)")
	f.BoolVar(&a.json, "json", false, "print JSON, for scripts")
}

func (a *apiFlags) socket() (string, error) {
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
	sock, err := a.socket()
	if err != nil {
		return err
	}
	client := &http.Client{
		Timeout: 2 * time.Minute,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
	req, _ := http.NewRequest(method, "http://vrep"+path, nil)
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the daemon at %s (is the daemon running?): %w", sock, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return &daemonError{resp.StatusCode, e.Error}
		}
		return &daemonError{resp.StatusCode, "the daemon answered " + resp.Status}
	}
	return json.Unmarshal(body, out)
}

// printJSON writes v as indented JSON, for --json.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
