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
	"github.com/vrep-io/vrep/internal/host"
	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/units"
	"github.com/vrep-io/vrep/replica/health"
	"github.com/vrep-io/vrep/replica/store"
	"github.com/vrep-io/vrep/replica/wire"
)

func hostCmd() *cobra.Command {
	var (
		cfg          host.Config
		disks        []string
		peer         string
		mergeAfter   = units.Size(1 << 30)
		codec        string
		frequency    string
		backoff      []time.Duration
		resyncWindow string
		retention    time.Duration
		keepApp      int
		configFile   string
		ops          opsFlags
		freeze       []string
		preFreeze    []string
		postThaw     []string
		agents       []string
	)
	cmd := &cobra.Command{
		Use:   "host --data DIR --name NAME --tls-dir DIR --listen ADDR --peer NAME=ADDR [--disk VM/DISK=PATH]... [--nbd unix:SOCK|tcp:ADDR]... [--fuse DIR]",
		Short: "Run both roles on this host: serve and replicate the VMs it runs, keep replicas of the peer's",
		Long: `One daemon per host, holding a role per VM: the VMs this host runs (--disk,
and those failed over to it) are served over --nbd and --fuse, tracked and
replicated to the peer host; the peer's VMs are kept here as replicas with
their recovery points, on --listen. vrep failover planned VM moves a VM to
the other host and back, nothing lost, replication reversing by itself.

Both hosts run vrep host, each naming the other as --peer NAME=ADDR (NAME
is the peer's certificate name, ADDR its --listen address). Each VM's role
is kept in DATA/roles: a VM this host failed over to the peer is not
served here even though a --disk names it; its image (the path --disk
gives) is the replica copy.

Admin commands talk to DATA/api.sock (--data DIR). vrep primary and vrep
replica remain for hosts with one role.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile != "" {
				if err := applyConfig(cmd.Flags(), configFile); err != nil {
					return err
				}
			}
			if cfg.Data == "" || cfg.Name == "" || cfg.TLSDir == "" || cfg.Listen == "" || peer == "" {
				return fmt.Errorf("%w: --data, --name, --tls-dir, --listen and --peer are required", errUsage)
			}
			if len(cfg.NBD) == 0 && cfg.FUSE == "" {
				return fmt.Errorf("%w: give --nbd or --fuse, or nothing is served", errUsage)
			}
			var ok bool
			if cfg.Peer, cfg.PeerAddr, ok = strings.Cut(peer, "="); !ok || cfg.PeerAddr == "" {
				return fmt.Errorf("%w: --peer %q must be NAME=HOST:PORT", errUsage, peer)
			}
			for _, s := range disks {
				spec, err := primary.ParseDisk(s)
				if err != nil {
					return err
				}
				cfg.Disks = append(cfg.Disks, spec)
			}
			if err := parseQuiescers(&cfg.Primary.Points, freeze, preFreeze, postThaw, agents); err != nil {
				return err
			}
			var err error
			rc := &primary.ReplicaConfig{}
			if frequency != "continuous" {
				iv, err := time.ParseDuration(frequency)
				if err != nil || iv <= 0 {
					return fmt.Errorf("%w: --frequency %q must be continuous or a duration such as 30s, 5m or 15m", errUsage, frequency)
				}
				rc.Interval = iv
			}
			if rc.Codec, err = wire.ParseCodec(codec); err != nil {
				return fmt.Errorf("%w: %v", errUsage, err)
			}
			rc.Backoff = backoff
			if rc.ResyncWindow, err = health.ParseResyncWindow(resyncWindow); err != nil {
				return fmt.Errorf("%w: --resync-window: %v", errUsage, err)
			}
			rpo, err := ops.policy()
			if err != nil {
				return err
			}
			rc.RPO = rpo
			cfg.Primary.Replica = rc
			cfg.Primary.MergeAfter = int64(mergeAfter)
			cfg.Replica.Retention = store.Retention{Window: retention, KeepApp: keepApp}
			cfg.Replica.RPO = rpo
			rec, log, err := ops.recorder(cfg.Data)
			if err != nil {
				return err
			}
			defer rec.Close()
			cfg.Events, cfg.Log = rec, log
			// One jobs log per component: each is also read where its
			// daemon would keep it when the host is down.
			if cfg.Primary.Jobs, err = ops.jobs(cfg.Data, log); err != nil {
				return err
			}
			cfg.Replica.Jobs = cfg.Primary.Jobs
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			h, err := host.Start(cfg)
			if err != nil {
				return err
			}
			rec.Record(events.Event{Kind: events.Started, Reason: "host " + cfg.Name + " started, listening on " + h.Addr()})
			apiSock := cfg.API
			if apiSock == "" {
				apiSock = filepath.Join(cfg.Data, "api.sock")
			}
			stopWatch := rec.Watch(h.HealthSamples)
			defer stopWatch()
			closeHTTP, err := ops.serveHTTP(h.PublicHandler(), log)
			if err != nil {
				h.Close()
				return err
			}
			defer closeHTTP()
			systemd := vdaemon.NotifyReady(log, vdaemon.ProbeAPI(apiSock, 30*time.Second))
			// SIGHUP (systemctl reload) must not kill the host: it rereads
			// no settings while running yet, and says so.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer func() { signal.Stop(hup); close(hup) }()
			go func() {
				for range hup {
					log.Warn("SIGHUP: the host rereads no settings while running; restart it (systemctl restart) to change them")
				}
			}()
			log.Info("host serving", "name", cfg.Name, "listen", h.Addr(), "peer", peer, "nbd", cfg.NBD, "fuse", cfg.FUSE)
			werr := h.Wait(ctx)
			systemd.Stop()
			log.Info("stopping: draining requests, merging and syncing")
			if err := h.Close(); err != nil {
				return err
			}
			return werr
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "read settings from this YAML file, named like the flags (flags override it)")
	f.StringVar(&cfg.Data, "data", "", "this host's data directory (roles, primary state, replicas, API socket)")
	f.StringVar(&cfg.Name, "name", "", "this host's certificate name")
	f.StringVar(&cfg.TLSDir, "tls-dir", "", "directory with ca.crt and this host's NAME.crt/NAME.key")
	f.StringVar(&cfg.Listen, "listen", "", "address the peer replicates to, host:port")
	f.StringVar(&peer, "peer", "", "the other host: its certificate name and --listen address, NAME=HOST:PORT")
	f.StringArrayVar(&disks, "disk", nil, "a disk this host runs at first: VM/DISK=PATH to a raw image (repeatable)")
	f.StringArrayVar(&cfg.NBD, "nbd", nil, "serve NBD on unix:PATH or tcp:HOST:PORT (repeatable)")
	f.StringVar(&cfg.FUSE, "fuse", "", "serve the disks as files under this directory")
	f.StringVar(&cfg.API, "api", "", "API socket, [unix:]PATH (default DATA/api.sock)")
	f.StringVar(&codec, "compression", "zstd", "zstd, s2 or none")
	f.StringVar(&frequency, "frequency", "continuous", "copy frequency: continuous, or ship at a point every 30s, 5m or 15m (any duration)")
	f.DurationSliceVar(&backoff, "retry-schedule", nil, "retry waits after recoverable errors (default Hyper-V's)")
	f.StringVar(&resyncWindow, "resync-window", "18:00-06:00", "when automatic resyncs run: HH:MM-HH:MM local time, or always")
	f.DurationVar(&cfg.Primary.Points.Every, "points-every", 0, "take a crash-consistent point of every VM this host runs this often (default: at each --frequency tick, every 5s when continuous)")
	f.DurationVar(&cfg.Primary.Points.AppEvery, "app-every", 0, "take an app-consistent point this often (0: by hand)")
	f.StringArrayVar(&freeze, "freeze", nil, "VM=MOUNTPOINT to fsfreeze for app-consistent points, and before a planned failover's final point (repeatable)")
	f.StringArrayVar(&preFreeze, "pre-freeze", nil, "VM=COMMAND run before freezing (sh -c)")
	f.StringArrayVar(&postThaw, "post-thaw", nil, "VM=COMMAND run after thawing (sh -c)")
	f.StringArrayVar(&agents, "guest-agent", nil, "VM=SOCKET of the VM's QEMU guest agent, to freeze inside the guest")
	f.DurationVar(&cfg.Primary.Points.FreezeTimeout, "freeze-timeout", 10*time.Second, "past this a freeze is thawed and the point is crash-consistent")
	f.DurationVar(&cfg.Primary.StopTimeout, "stop-timeout", 30*time.Second, "on SIGTERM, wait this long for the disks' holders to let go")
	f.DurationVar(&retention, "retention", 24*time.Hour, "keep the peer's VMs' recovery points this long")
	f.IntVar(&keepApp, "keep-app", 0, "also keep this many newest app-consistent points, however old")
	f.Var(&mergeAfter, "merge-after", "merge the log into the image once this much waits (e.g. 256M, 1G)")
	ops.register(f, "the lag")
	return cmd
}
