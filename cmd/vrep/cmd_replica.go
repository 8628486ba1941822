package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	vdaemon "github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/events"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/internal/pki"
	"github.com/vrep-io/vrep/internal/replicad"
	"github.com/vrep-io/vrep/replica/store"
)

// replicaConfig is vrep replica's configuration: the flags, which a
// YAML file (--config) may also set (applyConfig).
type replicaConfig struct {
	Data, Listen, TLSDir, Name, FUSE, API string
	Allow, NBD                            []string // Allow: PRIMARY[=ROOT]
	AllowAny                              bool
	KeepApp                               int
}

func replicaCmd() *cobra.Command {
	var (
		c          replicaConfig
		keep       []string
		configFile string
		retention  time.Duration
		pruneEvery time.Duration
		cpuprofile string
		ops        opsFlags
	)
	cmd := &cobra.Command{
		Use:   "replica --data DIR --listen ADDR --tls-dir DIR --name NAME (--allow PRIMARY[=ROOT]... | --allow-any) | --config FILE",
		Short: "Keep replicas of primaries' disks with their recovery points; serve test failovers",
		Long: `Receives initial copies and changes from primaries over mutual TLS, applies
them, and keeps a history of recovery points for --retention (the newest
point is always kept; --keep-app keeps that many app-consistent points
longer, by count). Test failovers (vrep failover test) are served over --nbd
as VM/DISK-test and under --fuse as VM/DISK-test.img.

--config FILE reads the same settings from YAML (data, listen, tls_dir,
name, allow, allow_any, nbd, fuse, api, retention, keep_app, and keep: a map
of VM or VM/DISK to a retention); flags override it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile != "" {
				if err := applyConfig(cmd.Flags(), configFile); err != nil {
					return err
				}
			}
			if c.Data == "" || c.Listen == "" || c.TLSDir == "" || c.Name == "" {
				return fmt.Errorf("%w: --data, --listen, --tls-dir and --name are required", errUsage)
			}
			if len(c.Allow) == 0 && !c.AllowAny {
				return fmt.Errorf("%w: give --allow PRIMARY[=ROOT] for each primary, or --allow-any", errUsage)
			}
			stopProfile, err := startCPUProfile(cpuprofile)
			if err != nil {
				return err
			}
			defer stopProfile()
			roots := map[string]string{}
			for _, a := range c.Allow {
				p, root, _ := strings.Cut(a, "=")
				if err := names.Part(p); err != nil {
					return err
				}
				if root != "" {
					if err := names.Part(root); err != nil {
						return err
					}
				}
				roots[p] = root
			}
			overrides := map[string]store.Retention{}
			for _, k := range keep {
				target, dur, ok := strings.Cut(k, "=")
				if !ok {
					return fmt.Errorf("%w: --keep %q must be VM[/DISK]=DURATION", errUsage, k)
				}
				if err := keepTarget(target); err != nil {
					return err
				}
				d, err := time.ParseDuration(dur)
				if err != nil || d < 0 {
					return fmt.Errorf("%w: retention %q of %s is not a duration like 24h", errUsage, dur, target)
				}
				overrides[target] = store.Retention{Window: d, KeepApp: c.KeepApp}
			}
			tc, err := pki.ServerConfig(c.TLSDir, c.Name)
			if err != nil {
				return err
			}
			ops.tlsDir, ops.name = c.TLSDir, c.Name
			rpo, err := ops.policy()
			if err != nil {
				return err
			}
			rec, log, err := ops.recorder(c.Data)
			if err != nil {
				return err
			}
			defer rec.Close()
			jl, err := ops.jobs(c.Data, log)
			if err != nil {
				return err
			}
			d, err := replicad.Start(replicad.Config{
				Data: c.Data, Name: c.Name, Listen: c.Listen, TLS: tc, Allow: roots, AllowAny: c.AllowAny,
				NBD: c.NBD, FUSE: c.FUSE, API: c.API,
				Retention: store.Retention{Window: retention, KeepApp: c.KeepApp}, Overrides: overrides,
				PruneEvery: pruneEvery, RPO: rpo, Events: rec, Jobs: jl, Log: log,
			})
			if err != nil {
				return err
			}
			rec.Record(events.Event{Kind: events.Started, Reason: "replica started, listening on " + d.Addr()})
			stopWatch := rec.Watch(d.HealthSamples)
			closeHTTP, err := ops.serveHTTP(d.PublicHandler(), log)
			if err != nil {
				stopWatch()
				d.Close()
				return err
			}
			apiSock := c.API
			if apiSock == "" {
				apiSock = filepath.Join(c.Data, "api.sock")
			}
			systemd := vdaemon.NotifyReady(log, vdaemon.ProbeAPI(apiSock, 30*time.Second))
			// SIGHUP (systemctl reload) must not kill the replica: it has
			// nothing it can reread while running yet, and says so.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer func() { signal.Stop(hup); close(hup) }()
			go func() {
				for range hup {
					log.Warn("SIGHUP: the replica rereads no settings while running; restart it (systemctl restart) to change them")
				}
			}()
			log.Info("replica serving", "listen", d.Addr(), "data", c.Data, "retention", retention)
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			err = d.Wait(ctx)
			systemd.Stop()
			closeHTTP()
			stopWatch()
			d.Close()
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "read settings from this YAML file (flags override it)")
	f.StringVar(&c.Data, "data", "", "storage directory (a root per primary under it, the point index)")
	f.StringVar(&c.Listen, "listen", "", "address to listen on for primaries, host:port")
	f.StringVar(&c.TLSDir, "tls-dir", "", "directory with ca.crt and this host's NAME.crt/NAME.key")
	f.StringVar(&c.Name, "name", "", "this replica's certificate name")
	f.StringArrayVar(&c.Allow, "allow", nil, "authorize a primary by certificate name, with its own root (default its name)")
	f.BoolVar(&c.AllowAny, "allow-any", false, "authorize any primary the CA vouches for, rooted at its name")
	f.StringArrayVar(&c.NBD, "nbd", nil, "serve test failovers over NBD on unix:PATH or tcp:HOST:PORT (repeatable)")
	f.StringVar(&c.FUSE, "fuse", "", "serve test failovers as files under this directory")
	f.StringVar(&c.API, "api", "", "API socket, [unix:]PATH, for vrep status, points and failover (default DATA/api.sock)")
	f.DurationVar(&retention, "retention", 24*time.Hour, "keep recovery points this long (0: the latest point only)")
	f.IntVar(&c.KeepApp, "keep-app", 0, "also keep this many newest app-consistent points, however old")
	f.StringArrayVar(&keep, "keep", nil, "VM[/DISK]=DURATION: another retention for a VM or disk (repeatable)")
	ops.register(f, "the newest point's age")
	f.DurationVar(&pruneEvery, "prune-every", time.Minute, "apply retention this often")
	f.MarkHidden("prune-every")
	f.StringVar(&cpuprofile, "cpuprofile", "", "write a CPU profile here until exit")
	f.MarkHidden("cpuprofile")
	return cmd
}

func keepTarget(s string) error {
	if strings.Contains(s, "/") {
		_, _, err := names.Disk(s)
		return err
	}
	return names.Part(s)
}
