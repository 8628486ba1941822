package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"

	vdaemon "github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/events"
	"github.com/vrep-io/vrep/internal/jobs"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/internal/pki"
	"github.com/vrep-io/vrep/replica/health"
)

// opsFlags are both daemons' operator settings: the RPO thresholds, the
// health-change hook, and how often health is sampled.
type opsFlags struct {
	rpo   []string
	hook  string
	every time.Duration
	http  string
	// tlsDir and name are the daemon's certificates (the ones replication
	// uses), set before policy: a --http address other hosts can reach is
	// served with them, with mutual TLS; httpTLS is what policy loaded.
	tlsDir, name string
	httpTLS      *tls.Config
}

func (o *opsFlags) register(f *pflag.FlagSet, what string) {
	f.StringArrayVar(&o.rpo, "rpo-threshold", nil, "[VM=]WARN[,CRITICAL]: "+what+" past WARN is a Warning, past CRITICAL (default 3×WARN) Critical (repeatable: one default, then per VM)")
	f.StringVar(&o.hook, "on-health-change", "", "run this command (sh -c) at each health change, with VREP_EVENT, VREP_VM, VREP_DISK, VREP_HEALTH, VREP_PREVIOUS and VREP_REASON set")
	f.StringVar(&o.http, "http", "", "also serve the status page and /metrics over TCP on HOST:PORT: plain HTTP on loopback (127.0.0.1:9847), mutual TLS with --tls-dir and --name anywhere else (clients need a certificate of the same CA)")
	f.DurationVar(&o.every, "health-every", 5*time.Second, "sample health (for events and the status page's chart) this often")
	f.MarkHidden("health-every")
}

// policy parses the RPO thresholds (and checks --http, loading its TLS
// settings when the address is not on loopback).
func (o *opsFlags) policy() (health.RPOPolicy, error) {
	p := health.RPOPolicy{VMs: map[string]health.RPO{}}
	if o.http != "" {
		if err := vdaemon.CheckLoopback(o.http); err != nil {
			if o.tlsDir == "" || o.name == "" || vdaemon.CheckHTTP(o.http, &tls.Config{}) != nil {
				return p, fmt.Errorf("%w: %v", errUsage, err)
			}
			tc, err := pki.ServerConfig(o.tlsDir, o.name)
			if err != nil {
				return p, fmt.Errorf("--http %s needs this host's certificate: %w", o.http, err)
			}
			o.httpTLS = tc
		}
	}
	for _, s := range o.rpo {
		vm, r, err := health.ParseRPO(s)
		if err != nil {
			return p, fmt.Errorf("%w: --rpo-threshold: %v", errUsage, err)
		}
		if vm == "" {
			p.Default = r
			continue
		}
		if err := names.Part(vm); err != nil {
			return p, err
		}
		p.VMs[vm] = r
	}
	return p, nil
}

// recorder opens the events log in dir, and returns it with a logger
// whose records the log also learns from (events.Tap).
func (o *opsFlags) recorder(dir string) (*events.Recorder, *slog.Logger, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	text := slog.NewTextHandler(os.Stderr, nil)
	rec, err := events.New(events.Config{Path: filepath.Join(dir, events.FileName), Hook: o.hook, Every: o.every,
		Log: slog.New(text)})
	if err != nil {
		return nil, nil, err
	}
	return rec, slog.New(events.Tap(text, rec)), nil
}

// jobs opens the daemon's jobs file in dir.
func (o *opsFlags) jobs(dir string, log *slog.Logger) (*jobs.Log, error) {
	return jobs.Open(filepath.Join(dir, jobs.FileName), log)
}

// serveHTTP serves the daemon's public handler over --http, if given;
// the returned close is never nil.
func (o *opsFlags) serveHTTP(h http.Handler, log *slog.Logger) (func(), error) {
	if o.http == "" {
		return func() {}, nil
	}
	a, err := vdaemon.ServeHTTP(o.http, h, o.httpTLS, log)
	if err != nil {
		return nil, err
	}
	scheme := "http://"
	if o.httpTLS != nil {
		scheme = "https://"
	}
	log.Info("status page", "url", scheme+o.http+"/", "mutual_tls", o.httpTLS != nil)
	return a.Close, nil
}
